"""Decloud benchmarks: throughput against a plain PyTorch loop, overlap cost, memory.

Run ``python -m benchmarks.bench_decloud [--quick]``; prints one JSON object. Ratios are
measured in one process on one device, so they travel between machines better than
seconds do.

- ``throughput_ratio``: plain-loop time / decloud time for the same model on the same
  tiles of the same in-memory scene (>= 0.95 is the goal on CPU). The plain loop is
  what the published code does: crop, stack into batches, forward, keep the output; it
  does no blending and writes nothing.
- ``tiles_computed_per_needed``: tiles decloud runs / tiles of that grid (1.0: no tile
  is computed twice, whatever the chunking); ``overlap_cost``: tiles of that grid /
  tiles of a grid without overlap.
- ``store``: decloud of an in-memory scene written to Zarr (``to_zarr``: steps of
  :data:`m3rcr_xr.store.CHUNKS_PER_STEP` chunk rows here, one compute each, so that a killed
  write resumes) against the same decloud computed into memory; ``speed_ratio`` is
  memory s / Zarr s, and ``tiles_run_per_needed_*`` the tiles each way runs over the
  tiles of the grid (above 1 for Zarr: the tiles next to a step's edge run in both).
- ``memory``: decloud of a lazy synthetic scene to Zarr on a one-worker LocalCluster
  whose memory limit is several times smaller than the scene; peak worker memory (the
  threaded scheduler's, in one process, against the same decloud computed into memory:
  ``python -m benchmarks.quick --parts store``).
- ``tiny``: decloud (graph and compute) of scenes smaller than a tile, 1x1, 5x3 and
  64x64, over the decloud of a scene of exactly one tile with the same model; each is
  padded to one tile, so the goal is a ratio of about 1 (at most 2).
- ``cluster_threads``: decloud on a plain ``LocalCluster()`` (the layout ``distributed``
  picks: on few cores, one worker process per core), torch's threads shared among the
  threads of every worker on the host (``m3rcr_xr.threads``) against each worker
  taking the cores / its own threads (the rule before, which oversubscribes the cores
  by the number of workers); ``speed_ratio`` is before / now, alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import torch

import m3rcr_xr
from m3rcr_xr import inference, models, normalize, runner, tiling
from m3rcr_xr.store import CHUNKS_PER_STEP

CONFIG = {"n_resblocks": 4, "n_feats": 32}
PARTS = ("throughput", "store", "memory", "tiny", "cluster_threads")
#: scenes smaller than the default tile (256) of the ``tiny`` part
TINY_SHAPES = [(1, 1), (5, 3), (64, 64)]


def _checkpoint(folder: Path, config: dict) -> Path:
    torch.manual_seed(0)
    path = folder / "bench.pt"
    torch.save(models.build("dsen2_cr", **config).state_dict(), path)
    return path


def plain_loop(inputs: np.ndarray, plan: tiling.TilePlan, model, batch: int) -> float:
    """The published way: crop each tile, run batches, keep outputs; seconds."""
    padded = tiling.pad(inputs, plan)
    corners = [
        (r * plan.stride, c * plan.stride)
        for r in range(plan.shape[0])
        for c in range(plan.shape[1])
    ]
    start = time.perf_counter()
    outputs = []
    with torch.inference_mode():
        for first in range(0, len(corners), batch):
            crops = np.stack(
                [
                    padded[:, y : y + plan.tile, x : x + plan.tile]
                    for y, x in corners[first : first + batch]
                ]
            )
            tensor = torch.from_numpy(crops)
            outputs.append(model(tensor[:, :4], tensor[:, 4:]).numpy())
    return time.perf_counter() - start


def throughput(size: int, tile: int, chunk: int, batch: int, folder: Path) -> dict:
    checkpoint = _checkpoint(folder, CONFIG)
    scene = m3rcr_xr.synthetic_scene((size, size), chunks=chunk).persist()
    inputs = normalize.model_inputs(scene).values
    model = models.load("dsen2_cr", checkpoint, **CONFIG)
    torch.set_num_threads(torch.get_num_threads())
    result = m3rcr_xr.decloud(
        scene, "dsen2_cr", checkpoint, config=CONFIG, tile=tile, batch_size=batch
    )
    plan = tiling.make_plan(tile, tile // 8, size, size)
    result.compute(scheduler="threads")  # warm-up: model built and cached
    loop_s, decloud_s = [], []
    runner.tile_counts(reset=True)
    for _ in range(2):
        loop_s.append(plain_loop(inputs, plan, model, batch))
        start = time.perf_counter()
        result.compute(scheduler="threads")
        decloud_s.append(time.perf_counter() - start)
    tiles_run = sum(runner.tile_counts(reset=True).values()) / 2
    no_overlap = math.ceil(size / tile) ** 2
    return {
        "scene": f"{size}x{size}",
        "tile": tile,
        "overlap": plan.overlap,
        "chunk": chunk,
        "model": f"dsen2_cr {CONFIG}",
        "plain_loop_s": round(min(loop_s), 2),
        "decloud_s": round(min(decloud_s), 2),
        "throughput_ratio": round(min(loop_s) / min(decloud_s), 3),
        "tiles_computed_per_needed": round(tiles_run / (plan.shape[0] * plan.shape[1]), 3),
        "overlap_cost": round(plan.shape[0] * plan.shape[1] / no_overlap, 3),
    }


def memory(size: int, limit: str, folder: Path) -> dict:
    from distributed import Client, LocalCluster
    from distributed.diagnostics import MemorySampler

    tiny = {"n_resblocks": 1, "n_feats": 8}
    checkpoint = _checkpoint(folder, tiny)
    scene = m3rcr_xr.synthetic_scene((size, size), chunks=1024)
    out = m3rcr_xr.decloud(scene, "dsen2_cr", checkpoint, config=tiny, tile=256)
    sampler = MemorySampler()
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, memory_limit=limit, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        start = time.perf_counter()
        with sampler.sample("decloud", interval=0.1):
            m3rcr_xr.to_zarr(out.to_dataset(), folder / "decloud.zarr", progress=False)
        seconds = time.perf_counter() - start
        limit_bytes = cluster.workers[0].memory_manager.memory_limit
    peak = float(sampler.to_pandas()["decloud"].max())
    scene_bytes = scene.nbytes + out.nbytes
    return {
        "scene": f"{size}x{size}",
        "scene_and_output_GB": round(scene_bytes / 1e9, 2),
        "worker_limit_GB": round(limit_bytes / 1e9, 2),
        "peak_worker_GB": round(peak / 1e9, 2),
        "peak_over_limit": round(peak / limit_bytes, 2),
        "seconds": round(seconds, 1),
    }


def store(size: int, chunk: int, folder: Path) -> dict:
    """Decloud written to Zarr over several steps against decloud computed into memory,
    the same graph, in this process; and the tiles each runs over the tiles of the grid."""
    checkpoint = _checkpoint(folder, CONFIG)
    tile = 128
    scene = m3rcr_xr.synthetic_scene((size, size), chunks=chunk).persist()
    result = m3rcr_xr.decloud(scene, "dsen2_cr", checkpoint, config=CONFIG, tile=tile)
    tiles = math.prod(tiling.make_plan(tile, tile // 8, size, size).shape)
    result.compute(scheduler="threads")  # warm-up: model built and cached
    seconds: dict[str, list[float]] = {"memory": [], "zarr": []}
    runs = {"memory": 0.0, "zarr": 0.0}
    with m3rcr_xr.set_options(scene_chunk=chunk):
        for attempt in range(2):
            for way in seconds:
                runner.tile_counts(reset=True)
                start = time.perf_counter()
                if way == "memory":
                    result.compute(scheduler="threads")
                else:
                    target = folder / f"store-{attempt}.zarr"
                    m3rcr_xr.to_zarr(result.to_dataset(), target, progress=False)
                seconds[way].append(time.perf_counter() - start)
                runs[way] = sum(runner.tile_counts(reset=True).values())
    best = {way: min(times) for way, times in seconds.items()}
    return {
        "scene": f"{size}x{size}",
        "chunk": chunk,
        "steps": math.ceil(math.ceil(size / chunk) / CHUNKS_PER_STEP),
        "tile": tile,
        "memory_s": round(best["memory"], 2),
        "zarr_s": round(best["zarr"], 2),
        "speed_ratio": round(best["memory"] / best["zarr"], 3),
        "tiles_run_per_needed_memory": round(runs["memory"] / tiles, 3),
        "tiles_run_per_needed_zarr": round(runs["zarr"] / tiles, 3),
    }


def _decloud_seconds(shape: tuple[int, int], checkpoint: Path, repeats: int) -> float:
    """Best time to build the graph of a scene of ``shape`` and compute it."""
    scene = m3rcr_xr.synthetic_scene(shape, seed=1).persist()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        m3rcr_xr.decloud(scene, "dsen2_cr", checkpoint, config=CONFIG).compute(scheduler="threads")
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def tiny(folder: Path, repeats: int, shapes: list[tuple[int, int]] = TINY_SHAPES) -> dict:
    """Scenes smaller than a tile against one tile: each should cost about one tile."""
    checkpoint = _checkpoint(folder, CONFIG)
    tile = inference.DEFAULT_TILE
    _decloud_seconds((tile, tile), checkpoint, 1)  # warm-up: model built and cached
    one_tile = _decloud_seconds((tile, tile), checkpoint, repeats)
    report = {"model": f"dsen2_cr {CONFIG}", "tile": tile, "one_tile_s": round(one_tile, 3)}
    for shape in shapes:
        seconds = _decloud_seconds(shape, checkpoint, repeats)
        name = "x".join(map(str, shape))
        report[f"{name}_s"] = round(seconds, 3)
        report[f"{name}_over_one_tile"] = round(seconds / one_tile, 2)
    return report


def _set_torch_threads(count: int | None) -> None:
    m3rcr_xr.set_options(torch_threads=count)


def cluster_threads(size: int, rounds: int, folder: Path) -> dict:
    """Decloud on a plain LocalCluster: torch threads shared by the host, and before."""
    import dask.system
    from distributed import Client, LocalCluster

    checkpoint = _checkpoint(folder, CONFIG)
    scene = m3rcr_xr.synthetic_scene((size, size), chunks=512)
    seconds: dict[str, list[float]] = {"before": [], "now": []}
    with LocalCluster(dashboard_address=None) as cluster, Client(cluster) as client:
        scene = client.persist(scene)
        out = m3rcr_xr.decloud(scene, "dsen2_cr", checkpoint, config=CONFIG)
        nthreads = client.nthreads()
        # before: each worker took the cores over its own threads; now: the option unset
        own_share = {"before": dask.system.CPU_COUNT // max(nthreads.values()), "now": None}
        client.compute(out).result()  # warm-up: each worker builds the model
        for _ in range(rounds):
            for way, times in seconds.items():
                client.run(_set_torch_threads, own_share[way])
                start = time.perf_counter()
                client.compute(out).result()
                times.append(time.perf_counter() - start)
    best = {way: min(times) for way, times in seconds.items()}
    return {
        "scene": f"{size}x{size}",
        "cores": dask.system.CPU_COUNT,
        "workers_x_threads": f"{len(nthreads)} x {max(nthreads.values())}",
        "torch_threads_before": own_share["before"],
        "before_s": round(best["before"], 2),
        "now_s": round(best["now"], 2),
        "speed_ratio": round(best["before"] / best["now"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller scenes")
    parser.add_argument(
        "--part", choices=PARTS, action="append", help="run only this part (repeatable)"
    )
    parser.add_argument(
        "--tiny-shape",
        action="append",
        metavar="HxW",
        help=f"scene shapes of the tiny part (default {', '.join(map(str, TINY_SHAPES))})",
    )
    args = parser.parse_args()
    shapes = [tuple(map(int, s.split("x"))) for s in args.tiny_shape or []] or TINY_SHAPES
    dask.config.set({"distributed.worker.daemon": False})
    with tempfile.TemporaryDirectory() as tmp, m3rcr_xr.set_options(progress=False):
        folder = Path(tmp)
        runs = {
            "throughput": lambda: throughput(1024 if args.quick else 2048, 256, 1024, 8, folder),
            "store": lambda: store(1024 if args.quick else 2048, 64 if args.quick else 128, folder),
            "memory": lambda: memory(4096 if args.quick else 8192, "1GB", folder),
            "tiny": lambda: tiny(folder, 2 if args.quick else 3, shapes),
            "cluster_threads": lambda: cluster_threads(1024 if args.quick else 2048, 3, folder),
        }
        report = {"machine": {"cores": torch.get_num_threads(), "torch": torch.__version__}}
        report.update({part: runs[part]() for part in args.part or PARTS})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
