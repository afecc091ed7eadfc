"""Where decloud's time goes against a raw PyTorch loop on one device: the tile path
alone, and decloud under the threaded scheduler with more or fewer threads.

``benchmarks/gpu_check.py`` measures decloud / raw; this tells why a ratio falls short.
The same tiles of one synthetic scene run, interleaved, repeat after repeat:

``raw``
    :func:`benchmarks.gpu_check.raw_loop` with its own model (seed 0).
``raw_decloud_model``
    The raw loop with the model decloud builds (its untrained weights).
``run_tiles_1_call`` / ``run_tiles_9_calls``
    decloud's tile path (:func:`m3rcr_xr.runner.run_tiles`) on all the tiles at once,
    and in nine calls, as decloud's nine tile tasks make them (batches replayed from a
    CUDA graph on a GPU).
``decloud_N_threads``
    ``decloud`` computed with the threaded scheduler: as many threads as cores, and 4.
``decloud_eager``
    As many threads as cores, without CUDA graphs (every kernel launched, as before
    :mod:`m3rcr_xr.cuda_graphs`; the same as ``decloud_N_threads`` on a CPU).
``decloud_short_switch``
    As many threads as cores, with the interpreter's switch interval at 0.2 ms
    (5 ms by default): how much the threads that crop and blend hold up the one that
    launches the forward passes.
``raw_batch_N``
    The raw loop with four times the batch: how much of a forward pass is the host's
    kernel launches, which a larger batch shares among more tiles.
``raw_cuda_graph`` (CUDA only)
    The raw loop replaying one CUDA graph of a full batch's forward pass (captured
    before the timing, as decloud's tile path captures it; a partial last batch in its
    first rows): what the launches cost. Where capture fails, its error is reported
    instead.

Each entry gives the seconds of each repeat and ``ratio``: the best raw time over the
variant's best. ``profile`` then runs ``raw`` and ``decloud_N_threads`` once more each
under torch's profiler (:func:`profiled`): the device's busy time against the wall time,
and the kernel launches and their host time, which tell whether the device waited for
the host (the profiler slows the host, so its wall times are longer than the timings').

On a GPU machine (after ``scripts/gpu-check.sh`` installed the wheels):
``PYTHONPATH=$PWD:/tmp/site python3 -m benchmarks.gpu_threads``; on a CPU,
``python -m benchmarks.gpu_threads --device cpu --quick`` is its smoke test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import dask
import numpy as np
import torch

import m3rcr_xr
from benchmarks.gpu_check import CHUNK, crop_tiles, raw_loop, setups, timed
from m3rcr_xr import blending, cuda_graphs, models, normalize, runner, tiling

#: (network, precision) measured by default on a GPU; a CPU runs float32 only
DEFAULT_CASES = ("glf_cr:bf16", "align_cr:bf16", "glf_cr:fp32")
#: decloud's tile tasks on the scene measured (3 x 3 groups of tiles)
TASKS = 9


def decloud_runner(
    result, workers: int, interval: float | None = None, **options: Any
) -> Callable[[], Any]:
    """Compute ``result`` with ``workers`` threads (and that switch interval, and those
    :func:`m3rcr_xr.set_options`)."""

    def run() -> None:
        before = sys.getswitchinterval()
        if interval is not None:
            sys.setswitchinterval(interval)
        try:
            with m3rcr_xr.set_options(**options):
                dask.compute(result.data, scheduler="threads", num_workers=workers)
        finally:
            sys.setswitchinterval(before)

    return run


def graphed_raw_loop(
    model, tiles: np.ndarray, batch: int, device: str, precision: str
) -> Callable[[], np.ndarray]:
    """The raw loop over ``tiles`` replaying a CUDA graph of one full batch's forward
    pass, captured here by the library's :func:`m3rcr_xr.cuda_graphs.capture` (a shorter
    last batch in its first rows, as decloud's tile path runs it)."""
    channels = blending.OPTICAL_CHANNELS
    dtype = runner.autocast_dtype(precision, device)
    key = cuda_graphs.GraphKey(device, (batch, *tiles.shape[1:]), dtype)
    with torch.inference_mode():
        graphed = cuda_graphs.capture(
            model, key, lambda net, x: net(x[:, :channels], x[:, channels:]).float()
        )
    if isinstance(graphed, str):
        raise RuntimeError(graphed)

    def run() -> np.ndarray:
        outputs = np.empty((len(tiles), channels, *tiles.shape[2:]), np.float32)
        with torch.inference_mode():
            for start in range(0, len(tiles), batch):
                out = graphed(torch.from_numpy(tiles[start : start + batch]).to(device))
                outputs[start : start + len(out)] = out.cpu().numpy()
        return outputs

    return run


def variants(
    name: str, precision: str, args: argparse.Namespace
) -> tuple[dict[str, Callable], dict[str, dict]]:
    """The ways to run the same tiles of one scene (see the module's docstring), and
    those that could not be set up, with their errors."""
    config, tile = setups(args.quick)[name]
    stride = tile - tile // 8
    chunk = stride if args.quick else CHUNK  # quick: one tile a task
    side = tiling.group_size(chunk, stride) * 3
    size = (side - 1) * stride + tile
    scene = m3rcr_xr.synthetic_scene((size, size), seed=1, chunks=chunk)[["cloudy", "sar"]]
    scene = scene.persist(scheduler="threads")
    plan = tiling.make_plan(tile, tile // 8, size, size)
    tiles = crop_tiles(normalize.model_inputs(scene).values, plan)
    torch.manual_seed(0)
    raw_model = models.build(name, **config).to(args.device).eval()
    ref = runner.ModelRef.create(name, "untrained", config, args.device, precision)
    model, device = runner.cached_model(ref)
    result = m3rcr_xr.decloud(
        scene, name, "untrained", config=config, tile=tile, batch_size=args.batch_size,
        device=args.device, precision=precision,
    )  # fmt: skip
    batch, cores, calls = args.batch_size, os.cpu_count() or 1, len(tiles) // TASKS
    graphed, errors = graphed_variant(raw_model, tiles, batch, device, precision)
    ways = {
        "raw": lambda: raw_loop(raw_model, tiles, batch, device, precision),
        "raw_decloud_model": lambda: raw_loop(model, tiles, batch, device, precision),
        "run_tiles_1_call": lambda: runner.run_tiles(model, device, tiles, batch, precision),
        f"run_tiles_{TASKS}_calls": lambda: [
            runner.run_tiles(model, device, tiles[i : i + calls], batch, precision)
            for i in range(0, len(tiles), calls)
        ],
        f"decloud_{cores}_threads": decloud_runner(result, cores),
        "decloud_eager": decloud_runner(result, cores, cuda_graphs=False),
        "decloud_4_threads": decloud_runner(result, 4),
        "decloud_short_switch": decloud_runner(result, cores, interval=2e-4),
        f"raw_batch_{4 * batch}": lambda: raw_loop(raw_model, tiles, 4 * batch, device, precision),
        **graphed,
    }
    return ways, errors


def graphed_variant(
    model, tiles: np.ndarray, batch: int, device: str, precision: str
) -> tuple[dict[str, Callable], dict[str, dict]]:
    """``raw_cuda_graph`` on a CUDA device, or its capture error (reported, not raised:
    capture fails on an op that waits for the host); nothing elsewhere."""
    if not device.startswith("cuda"):
        return {}, {}
    try:
        return {"raw_cuda_graph": graphed_raw_loop(model, tiles, batch, device, precision)}, {}
    except Exception as error:
        return {}, {"raw_cuda_graph": {"error": f"{type(error).__name__}: {error}"}}


def measure(name: str, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every variant once to warm up, then ``args.repeats`` rounds of all of them."""
    ways, failed = variants(name, precision, args)
    for run in ways.values():
        run()
    seconds: dict[str, list[float]] = {key: [] for key in ways}
    for _ in range(args.repeats):
        for key, run in ways.items():
            seconds[key].append(round(timed(run, args.device), 3))
    raw = min(seconds["raw"])
    threaded = f"decloud_{os.cpu_count() or 1}_threads"
    profiles = {key: profiled(ways[key], args.device) for key in ("raw", threaded)}
    runner.clear_model_cache()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    timings = {key: {"s": s, "ratio": round(raw / min(s), 3)} for key, s in seconds.items()}
    return timings | failed | {"profile": profiles}


def profiled(run: Callable[[], Any], device: str) -> dict[str, Any]:
    """``run()`` once under torch's profiler: its wall seconds, the seconds the device was
    busy (:func:`busy_seconds`) and their share of the wall time, and the kernel launches
    with the host seconds they took (none on a CPU); ``{"error": ...}`` where the profiler
    fails, so that the timings already made are kept."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    try:
        with profile(activities=activities) as profiler:
            wall = timed(run, device)
        events = profiler.events()
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"}
    busy = busy_seconds(events)
    # launches are recorded from every thread (CUPTI), unlike the aten ops of other threads
    launches = [e for e in events if e.name.startswith(("cudaLaunch", "cuLaunch"))]
    return {
        "wall_s": round(wall, 3),
        "device_busy_s": round(busy, 3),
        "busy": round(busy / wall, 3),
        "launches": len(launches),
        "launch_host_s": round(sum(e.self_cpu_time_total for e in launches) / 1e6, 3),
    }


def busy_seconds(events) -> float:
    """The seconds in which the device ran something: the union of the spans of its
    kernels and copies (an upload on the side stream overlaps a forward pass), without
    the profiler's user annotations, which span them."""
    from torch.autograd import DeviceType

    spans = sorted(
        (e.time_range.start, e.time_range.end)
        for e in events
        if e.device_type == DeviceType.CUDA and not e.is_user_annotation
    )
    busy, reached = 0.0, -math.inf
    for start, end in spans:
        if end > reached:
            busy += end - max(start, reached)
            reached = end
    return busy / 1e6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1 ... or cpu")
    parser.add_argument("--quick", action="store_true", help="small networks, tiny scenes")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    parser.add_argument(
        "--cases", nargs="+", help=f"network:precision (default {' '.join(DEFAULT_CASES)})"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cases = args.cases or (DEFAULT_CASES if args.device.startswith("cuda") else ("glf_cr:fp32",))
    report: dict[str, Any] = {"device": args.device, "quick": args.quick}
    for case in cases:
        name, precision = case.split(":")
        report[case] = measure(name, precision, args)
        print(f"[gpu_threads] {case}: {json.dumps(report[case])}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
