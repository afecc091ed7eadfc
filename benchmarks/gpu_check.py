"""The GPU check: decloud against raw PyTorch on one GPU, in one short run.

On a GPU machine, from the repository root (``scripts/gpu-check.sh`` runs it there,
after installing the carried wheels)::

    python -m benchmarks.gpu_check --golden ../shared/reference/golden --out gpu_check.json

On a CPU, a smoke test of every part but the CUDA calls (small networks, tiny scenes;
the tests run it)::

    python -m benchmarks.gpu_check --device cpu --quick

Progress lines go to stderr; one JSON object is printed last, and written to ``--out``
after each part, so that a run cut short keeps what it measured. A time budget
(``--budget-s``) shortens the later parts or skips them (``skipped`` says which); a part
that fails records its error and the others still run. Where a decloud / raw ratio falls
short, ``benchmarks/gpu_threads.py`` tells where the time goes.

Parts, in order
---------------
``machine``
    Versions, the device, its memory and compute capability, torch's TF32 switches.
``golden``
    The networks with the reference parameters (:mod:`benchmarks.reference`) on the
    golden inputs, through decloud's own tile path (:func:`m3rcr_xr.runner.run_tiles`):
    fp32 on the device against the golden CPU output, bf16 against fp32. Relative errors
    ``||a - b|| / ||b||`` of the output, and of the residual (output - cloudy input): the
    network's own part, a stricter measure. The tile is one full batch, so on a GPU it
    runs as a replay of a CUDA graph (:mod:`m3rcr_xr.cuda_graphs`); ``*_graph_vs_eager``
    compares it with the same tile run eagerly.
``throughput``
    Each network at its default size and tile, in fp32 and bf16: tiles per second of
    ``m3rcr_xr.decloud`` (a scene in memory, the threaded scheduler, to NumPy) and of a
    raw PyTorch loop over the same tiles (normalised in host memory already; batch,
    copy, forward, copy back), same device, same ``--batch-size``; ``ratio`` = decloud /
    raw. The forward batches each ran, counted (``decloud_batches``: size -> passes,
    from a hook on decloud's forward call; ``raw_batches``), say whether the two ran
    equal batches (``same_batches``): they do where the scene is whole groups of tiles
    and a group's tiles divide the batch or the batch divides them (the default sizes),
    since decloud's tasks join groups into full batches (:func:`m3rcr_xr.tiling.runs`).
    Where decloud runs the network in ``channels_last`` (DSen2-CR on CUDA), the raw loop
    runs in that layout too: ``ratio_same_layout``, the part of the ratio not due to it.
    ``cuda_graphs`` lists the graphs decloud captured for the network (its batches
    replay one: :mod:`m3rcr_xr.cuda_graphs`), or why a capture failed; the raw loop
    launches every kernel, as a plain PyTorch user's does.
    The scene is sized from a first timing of the raw loop, so that a run takes about
    ``--target-s`` seconds, in whole groups of tiles; both are warmed up, and the best
    of ``--repeats`` runs of each is kept.
``cluster``
    ``m3rcr_xr.local_cluster()`` (one worker per GPU, its threads sharing the GPU, no
    ``resources``: the default path); each worker's tiles per device
    (:func:`m3rcr_xr.runner.tile_counts`), its peak device memory, and the GPU it
    used against the GPU its ``CUDA_VISIBLE_DEVICES`` names.
``demo``
    ``make demo``'s job (:func:`m3rcr_xr.demo.run_demo`: ingest, decloud with
    test-time augmentation and semantic evaluation with the demo weights, on
    ``m3rcr_xr.local_cluster()``, hence on the GPU) on a ``--demo-size`` scene: its
    seconds, and, given ``--demo-reference`` (a folder with the ``metrics.csv`` and
    ``semantic.csv`` of a demo of that size run on a CPU), the largest difference of
    each column of its tables from the CPU's.
``train``
    A short training run of each network (:func:`m3rcr_xr.train.train`, the published
    recipe, ``amp="auto"``: bf16 on GPUs that compute it natively) on a synthetic
    scene store: its steps per second (over its wall time, its start included), first
    and last losses; and the same run stopped halfway and resumed (on the straight
    run's learning-rate schedule), which must give the same losses and weights
    (``resume_exact``; the README says a resumed run goes on exactly as if it had not
    stopped). Its first half is the straight run's first half again: ``repeat_exact``
    says whether the device computed it alike, without which a resume cannot be exact
    (atomic additions in some backward passes on a GPU).
``memory``
    Peak device memory (reserved: :func:`batch_peak`) of one batch through the tile
    path, its CUDA graph's pool included, per network and batch size
    (1, 2, 4 ... until the device runs out of memory, ``--max-batch`` or the budget), the
    largest batch that ran, and the largest that should fit (a line through the peaks).
``goals``
    The issue's goals, each true or false (null where not measured): decloud / raw >=
    0.9 for every network and precision, bf16 against fp32 <= 1e-2, fp32 against the
    golden CPU output <= 1e-3.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import math
import operator
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import torch

import m3rcr_xr
from benchmarks.reference import NAMES, fill_reference_parameters_, golden_inputs, golden_output
from m3rcr_xr import blending, cuda_graphs, inference, models, normalize, runner, tiling

#: decloud / raw throughput at least; relative errors at most
GOALS = {"ratio": 0.9, "bf16_vs_fp32": 1e-2, "fp32_vs_golden": 1e-3}
#: chunk edge of the scenes: groups of about GROUP_PIXELS, as decloud makes on real stores
CHUNK = 1024
MIB = 2**20
#: seconds kept for the later parts while the throughput part runs
RESERVE_S = {"cluster": 20.0, "demo": 25.0, "train": 40.0, "memory": 30.0}
#: training steps of each network's run (its resumed copy stops halfway)
TRAIN_STEPS = 40
#: the demo's tables that ``--demo-reference`` holds too
DEMO_TABLES = ("metrics.csv", "semantic.csv")


# ------------------------------------------------------------------------ the run
class Check:
    """The run's settings, clock, report and output file."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = args.device
        self.cuda = args.device.startswith("cuda")
        self.start = time.perf_counter()
        self.report: dict[str, Any] = {
            "device": args.device,
            "quick": args.quick,
            "skipped": [],
            "part_seconds": {},
        }
        # a CPU runs float32 whatever the precision asked: bf16 is measured on GPUs only
        self.precisions = ("fp32", "bf16") if self.cuda else ("fp32",)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def log(self, message: str) -> None:
        print(f"[gpu_check {self.elapsed():6.1f}s] {message}", file=sys.stderr, flush=True)

    def skip(self, what: str, reason: str) -> None:
        self.report["skipped"].append(f"{what}: {reason}")
        self.log(f"skipped {what}: {reason}")

    def short_of(self, what: str, seconds: float) -> bool:
        """Whether less than ``seconds`` is left for ``what`` (never in quick mode):
        then it is skipped, and the report says so."""
        if self.args.quick or self.left() >= seconds:
            return False
        self.skip(what, f"{self.left():.0f} s left")
        return True

    def save(self) -> None:
        self.report["elapsed_s"] = round(self.elapsed(), 1)
        if self.args.out is None:
            return
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(self.report, indent=1) + "\n")
        partial.replace(out)

    def attempt(self, what: str, measure: Callable[[], Any]) -> Any:
        """``measure()``, or ``{"error": ...}`` if it raises: the rest must still run."""
        try:
            result = measure()
        except Exception as error:
            traceback.print_exc()
            result = {"error": f"{type(error).__name__}: {error}"}
        self.log(f"{what}: {result}")
        free_device_memory(self.device)
        return result

    def run_part(self, name: str, part: Callable[[Check], Any]) -> None:
        """Run one part into the report (its errors recorded, not raised), then save."""
        self.log(f"{name} ...")
        start = time.perf_counter()
        try:
            self.report[name] = part(self)
        except Exception as error:
            traceback.print_exc()
            self.report[name] = {"error": f"{type(error).__name__}: {error}"}
        free_device_memory(self.device)
        self.report["part_seconds"][name] = round(time.perf_counter() - start, 1)
        self.save()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def free_device_memory(device: str) -> None:
    """Drop this process's models and cached device memory (before another part)."""
    runner.clear_model_cache()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@functools.cache
def setups(quick: bool) -> dict[str, tuple[dict[str, Any], int]]:
    """The networks as measured: (configuration, tile). Default sizes and tiles; the
    small presets on small tiles in quick mode."""
    if quick:
        return {
            "dsen2_cr": ({"preset": "small"}, 64),
            **{n: ({"preset": "small"}, 32) for n in NAMES[1:]},
        }
    return {name: ({}, models.build(name).tile_size or inference.DEFAULT_TILE) for name in NAMES}


# ------------------------------------------------------------------------ machine
def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _setting(read: Callable[[], Any]) -> Any:
    """A torch setting, or why it could not be read (some are deprecated)."""
    try:
        return read()
    except Exception as error:
        return f"{type(error).__name__}: {error}"


def part_machine(check: Check) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        **{name: _version(name) for name in ("torch", "numpy", "xarray", "dask", "distributed")},
        **{name: _version(name) for name in ("zarr", "pandas", "dask-cuda")},
    }
    if check.cuda:
        props = torch.cuda.get_device_properties(check.device)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=_setting(lambda: torch.backends.cuda.matmul.allow_tf32),
            tf32_cudnn=_setting(lambda: torch.backends.cudnn.allow_tf32),
            gpus_visible=torch.cuda.device_count(),
        )
    return info


# ------------------------------------------------------------------------- golden
def golden_errors(
    folder: Path, name: str, config: dict[str, Any], device: str, precisions: tuple[str, ...]
) -> dict[str, float]:
    """Relative errors of the reference-filled network ``name`` on the golden inputs,
    through decloud's tile path on ``device``, in each of ``precisions``."""
    inputs = golden_inputs(folder)
    cloudy = inputs[:, : blending.OPTICAL_CHANNELS]
    expected = golden_output(folder, name)
    outputs, graphs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pt"
        torch.save(fill_reference_parameters_(models.build(name, **config)).state_dict(), path)
        for precision in precisions:
            ref = runner.ModelRef.create(name, path, config, device, precision)
            model, resolved = runner.cached_model(ref)
            outputs[precision] = runner.run_tiles(model, resolved, inputs, 1, precision)
            with m3rcr_xr.set_options(cuda_graphs=False):
                eager = runner.run_tiles(model, resolved, inputs, 1, precision)
            graphs[f"{precision}_graph_vs_eager"] = relative_error(outputs[precision], eager)
    errors = {
        "fp32_vs_golden": relative_error(outputs["fp32"], expected),
        "fp32_vs_golden_residual": relative_error(outputs["fp32"] - cloudy, expected - cloudy),
    }
    if "bf16" in outputs:
        errors["bf16_vs_fp32"] = relative_error(outputs["bf16"], outputs["fp32"])
        errors["bf16_vs_fp32_residual"] = relative_error(
            outputs["bf16"] - cloudy, outputs["fp32"] - cloudy
        )
        errors["bf16_vs_golden"] = relative_error(outputs["bf16"], expected)
    return errors | graphs


def part_golden(check: Check) -> dict[str, Any]:
    folder = Path(check.args.golden)
    if not check.args.golden_models:
        check.skip("golden", "no --golden-models")
        return {}
    if not (folder / "input_cloudy.npy").is_file():
        raise FileNotFoundError(f"{folder}: no golden inputs (input_cloudy.npy)")
    return {
        name: check.attempt(
            f"golden {name}",
            functools.partial(golden_errors, folder, name, {}, check.device, check.precisions),
        )
        for name in check.args.golden_models
    }


# --------------------------------------------------------------------- throughput
def raw_loop(
    model, tiles: np.ndarray, batch: int, device: str, precision: str, channels_last: bool = False
) -> np.ndarray:
    """What a plain PyTorch user writes: batches of tiles, copy, forward, copy back;
    with ``channels_last`` each batch in that layout (the model must be in it too)."""
    dtype = runner.autocast_dtype(precision, device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    outputs = np.empty((len(tiles), blending.OPTICAL_CHANNELS, *tiles.shape[2:]), np.float32)
    with (
        torch.inference_mode(),
        torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None),
    ):
        for start in range(0, len(tiles), batch):
            x = torch.from_numpy(tiles[start : start + batch]).to(device)
            x = x.contiguous(memory_format=layout)
            out = model(x[:, : blending.OPTICAL_CHANNELS], x[:, blending.OPTICAL_CHANNELS :])
            outputs[start : start + batch] = out.float().cpu().numpy()
    return outputs


def timed(run: Callable[[], Any], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def grid_side(seconds_per_tile: float, target_s: float, group: int, cap: int) -> int:
    """Tiles per side of a square scene that takes about ``target_s``, at most ``cap``:
    whole groups of ``group`` tiles a side (rounded down, one at least) where they fit,
    so that decloud's forward batches are the raw loop's where the group's tiles divide
    the batch or the batch divides them (``same_batches`` in the report says whether)."""
    side = max(1, math.floor(math.sqrt(target_s / max(seconds_per_tile, 1e-9))))
    whole = max(group, side // group * group)
    return min(whole if whole <= cap else side, cap)


def crop_tiles(inputs: np.ndarray, plan: tiling.TilePlan) -> np.ndarray:
    """Every tile of ``plan`` from the (6, y, x) normalised scene, (N, 6, T, T)."""
    padded = tiling.pad(inputs, plan)
    rows, cols = plan.shape
    corners = [(r * plan.stride, c * plan.stride) for r in range(rows) for c in range(cols)]
    return np.stack([padded[:, y : y + plan.tile, x : x + plan.tile] for y, x in corners])


def batch_sizes(tiles: int, batch: int) -> dict[int, int]:
    """The forward batches of the raw loop over ``tiles`` tiles: size -> passes.

    >>> batch_sizes(20, 8)
    {8: 2, 4: 1}
    """
    sizes = {batch: tiles // batch} if tiles >= batch else {}
    return {**sizes, tiles % batch: 1} if tiles % batch else sizes


@contextlib.contextmanager
def counted_batches() -> Iterator[collections.Counter]:
    """The forward batches of decloud's tile path while in the block, by size, whatever
    thread runs them: each call of :func:`m3rcr_xr.runner.run_tiles` splits its tiles
    into batches as :func:`batch_sizes` does (a replayed graph calls no forward)."""
    seen: collections.Counter = collections.Counter()
    lock, run_tiles = threading.Lock(), blending.run_tiles

    def counting(model, device, tiles, batch_size, *args):
        with lock:
            seen.update(batch_sizes(len(tiles), batch_size))
        return run_tiles(model, device, tiles, batch_size, *args)

    blending.run_tiles = counting
    try:
        yield seen
    finally:
        blending.run_tiles = run_tiles


def measure_pair(
    check: Check, scene, name: str, config: dict, tile: int, precision: str, target_s: float
) -> dict:
    """decloud and the raw loop on the same tiles of one scene, same device and batch."""
    args, device = check.args, check.device
    torch.manual_seed(0)
    raw_model = models.build(name, **config).to(device).eval()
    plan0 = tiling.make_plan(tile, tile // 8, tile, tile)
    probe = np.random.default_rng(0).random((2 * args.batch_size, 6, tile, tile), np.float32)
    # warm-up, the whole probe twice: a process's first network loads its kernels lazily
    # and picks its algorithms over more than one batch, and a slow probe makes a small scene
    for _ in range(2):
        raw_loop(raw_model, probe, args.batch_size, device, precision)
    per_tile = timed(
        lambda: raw_loop(raw_model, probe, args.batch_size, device, precision), device
    ) / len(probe)
    group = tiling.group_size(CHUNK, plan0.stride)
    cap = (min(scene.sizes["y"], scene.sizes["x"]) - tile) // plan0.stride + 1
    side = grid_side(per_tile, target_s, group, cap)
    size = (side - 1) * plan0.stride + tile  # the grid ends where the scene does
    part = scene.isel(y=slice(0, size), x=slice(0, size))
    plan = tiling.make_plan(tile, tile // 8, size, size)
    assert plan.shape == (side, side) and plan.padded_shape == (size, size)
    tiles = crop_tiles(normalize.model_inputs(part).values, plan)
    result = m3rcr_xr.decloud(
        part,
        name,
        "untrained",
        config=config,
        tile=tile,
        batch_size=args.batch_size,
        device=device,
        precision=precision,
    )

    def run_decloud():
        return dask.compute(result.data, scheduler="threads", num_workers=os.cpu_count())[0]

    with counted_batches() as batches:  # the warm-up: untimed
        out = run_decloud()  # the model built and cached, page-locked memory allocated
    raw_s, decloud_s = [], []
    for _ in range(args.repeats):
        raw_s.append(
            timed(lambda: raw_loop(raw_model, tiles, args.batch_size, device, precision), device)
        )
        decloud_s.append(timed(run_decloud, device))
    n, raw_batches = len(tiles), batch_sizes(len(tiles), args.batch_size)
    same = same_layout(check, raw_model, tiles, precision, min(decloud_s))
    entry = {
        "tile": tile,
        "batch_size": args.batch_size,
        "decloud_batches": {str(k): v for k, v in sorted(batches.items(), reverse=True)},
        "raw_batches": {str(k): v for k, v in raw_batches.items()},
        "same_batches": dict(batches) == raw_batches,
        "scene": f"{size}x{size}",
        "tiles": n,
        "raw_tiles_per_s": round(n / min(raw_s), 2),
        "decloud_tiles_per_s": round(n / min(decloud_s), 2),
        "ratio": round(min(raw_s) / min(decloud_s), 3),
        "raw_s": [round(s, 3) for s in raw_s],
        "decloud_s": [round(s, 3) for s in decloud_s],
        "decloud_finite": bool(np.isfinite(out).all()),
        **same,
        "cuda_graphs": graphs_of(raw_model, runner.autocast_dtype(precision, device)),
    }
    return entry


def graphs_of(model, dtype) -> list[dict[str, Any]]:
    """The CUDA graphs of networks of ``model``'s class in ``dtype`` (none on a CPU)."""
    return [
        {key: entry[key] for key in ("shape", "captured", "error")}
        for entry in cuda_graphs.cuda_graph_report()
        if entry["model"] == type(model).__name__ and entry["dtype"] == str(dtype)
    ]


def same_layout(check: Check, raw_model, tiles: np.ndarray, precision: str, decloud_s: float):
    """Where decloud runs the network in ``channels_last`` (its spec says it is faster
    there), the raw loop in that layout too: how much of the ratio the layout gives."""
    args, device = check.args, check.device
    if not (device.startswith("cuda") and raw_model.spec.channels_last):
        return {}
    model = raw_model.to(memory_format=torch.channels_last)

    def run():
        return raw_loop(model, tiles, args.batch_size, device, precision, channels_last=True)

    run()  # warm-up: the layout's kernels chosen
    seconds = min(timed(run, device) for _ in range(args.repeats))
    return {
        "raw_channels_last_tiles_per_s": round(len(tiles) / seconds, 2),
        "ratio_same_layout": round(seconds / decloud_s, 3),
    }


def part_throughput(check: Check) -> dict[str, Any]:
    args = check.args
    todo = [(name, precision) for name in args.models for precision in check.precisions]
    chosen = setups(args.quick)
    largest = max(chosen[name][1] for name in args.models)
    scene = m3rcr_xr.synthetic_scene((args.scene_max, args.scene_max), seed=1, chunks=CHUNK)
    scene = scene[["cloudy", "sar"]].persist(scheduler="threads")
    check.log(f"scene {args.scene_max}x{args.scene_max} in memory (largest tile {largest})")
    results: dict[str, Any] = {}
    for index, (name, precision) in enumerate(todo):
        reserve = 0.0 if args.quick else sum(RESERVE_S.get(part, 0.0) for part in args.parts)
        share = (check.left() - reserve) / (len(todo) - index)
        # a pair costs about 2 * (repeats + 1) target runs, plus building and warming up
        target_s = min(args.target_s, share / (2 * (args.repeats + 1) + 2))
        if target_s < args.target_s / 10:
            check.skip(f"throughput {name} {precision}", f"{check.left():.0f} s left")
            continue
        config, tile = chosen[name]
        measure = functools.partial(
            measure_pair, check, scene, name, config, tile, precision, target_s
        )
        results[f"{name} {precision}"] = check.attempt(f"throughput {name} {precision}", measure)
        check.report["throughput"] = results
        check.save()
    return results


# ------------------------------------------------------------------------ cluster
def gpu_identity(index: int) -> str:
    """The GPU's UUID (its name and bus where torch has no UUID)."""
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    return (
        str(uuid) if uuid is not None else f"{props.name} bus {getattr(props, 'pci_bus_id', '?')}"
    )


def worker_report(dask_worker) -> dict[str, Any]:
    """What a worker ran: its tiles per device, and the GPU it saw as ``cuda:0``."""
    report: dict[str, Any] = {
        "name": str(dask_worker.name),
        "nthreads": dask_worker.state.nthreads,
        "resources": dict(dask_worker.state.total_resources),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "tiles": runner.tile_counts(),
    }
    if torch.cuda.is_available():
        report["gpu"] = gpu_identity(0)
        report["peak_mib"] = round(torch.cuda.max_memory_allocated(0) / MIB)
    return report


def part_cluster(check: Check) -> dict[str, Any]:
    from distributed import Client

    from m3rcr_xr import cluster as m3rcr_cluster

    if check.short_of("cluster", RESERVE_S["cluster"]):
        return {}
    name = check.args.models[0]
    config, tile = setups(check.args.quick)[name]
    stride = tile - tile // 8
    side = 3 if check.args.quick else 2 * tiling.group_size(CHUNK, stride)
    size = (side - 1) * stride + tile
    scene = m3rcr_xr.synthetic_scene((size, size), seed=2, chunks=CHUNK)
    layout = {} if check.cuda else {"gpus": 0, "n_workers": 1, "threads_per_worker": 2}
    expected = {}
    if check.cuda:
        expected = {gpu: gpu_identity(i) for i, gpu in enumerate(m3rcr_cluster.gpu_devices())}
    with (
        m3rcr_xr.local_cluster(dashboard_address=None, **layout) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(len(cluster.worker_spec))
        client.run(runner.tile_counts, reset=True)
        result = m3rcr_xr.decloud(
            scene, name, "untrained", config=config, tile=tile, batch_size=check.args.batch_size
        )
        start = time.perf_counter()
        out = client.compute(result.data, optimize_graph=False).result()
        seconds = time.perf_counter() - start
        workers = list(client.run(worker_report).values())
    tiles = side * side
    own = {"cuda:0"} if check.cuda else {"cpu"}
    on_own_device = all(set(w["tiles"]) <= own for w in workers)
    for w in workers:  # a worker's own GPU is the first it sees (dask-cuda lists others after)
        w["expected_gpu"] = expected.get((w["visible"] or "").split(",")[0])
    on_own_gpu = all(w.get("gpu") == w["expected_gpu"] for w in workers) if check.cuda else None
    ran = sum(sum(w["tiles"].values()) for w in workers)
    return {
        "cluster": type(cluster).__name__,
        "model": name,
        "scene": f"{size}x{size}",
        "tiles": tiles,
        "tiles_run": ran,
        "seconds": round(seconds, 2),
        "finite": bool(np.isfinite(out).all()),
        "workers": workers,
        "every_tile_on_its_worker_device": on_own_device and ran == tiles,
        "every_worker_on_its_own_gpu": on_own_gpu,
    }


# ------------------------------------------------------------------------- memory
def memory_sweep(run: Callable[[int], float | None], max_batch: int, deadline: float) -> dict:
    """Run batches of 1, 2, 4 ... tiles through ``run`` (which returns the peak MiB, or
    None where it cannot tell) until one runs out of device memory, ``max_batch`` or
    the time before ``deadline`` (the next batch would take twice the last)."""
    peaks: dict[int, float | None] = {}
    stopped, batch = "max_batch", 1
    while batch <= max_batch:
        start = time.perf_counter()
        try:
            peaks[batch] = run(batch)
        except torch.cuda.OutOfMemoryError:
            stopped = "out of memory"
            break
        except RuntimeError as error:  # cuDNN or cuBLAS short of workspace, say
            stopped = f"{type(error).__name__} at batch {batch}: {str(error)[:200]}"
            break
        took = time.perf_counter() - start
        if 2 * batch <= max_batch and time.perf_counter() + 2.5 * took > deadline:
            stopped = "time"
            break
        batch *= 2
    return {
        "peak_mib": {str(b): None if p is None else round(p, 1) for b, p in peaks.items()},
        "largest_batch_run": max(peaks, default=0),
        "stopped_by": stopped,
    }


def fitted_largest_batch(peaks: dict[str, float | None], free_mib: float) -> int | None:
    """The largest batch whose peak, on the line through the two largest measured,
    stays under ``free_mib``."""
    points = sorted((int(b), p) for b, p in peaks.items() if p is not None)
    if len(points) < 2:
        return None
    (b1, p1), (b2, p2) = points[-2:]
    per_tile = (p2 - p1) / (b2 - b1)
    if per_tile <= 0:
        return None
    return int((free_mib - (p2 - per_tile * b2)) // per_tile)


def batch_peak(model, device: str, tile: int, batch: int) -> float | None:
    """Peak device memory (MiB above the model) of one batch through the tile path: the
    most the caching allocator held (reserved), which counts a CUDA graph's own pool
    (the memory of its intermediate tensors, which it keeps once captured; tensors
    allocated count it only while they live)."""
    one = np.random.default_rng(batch).random((1, 6, tile, tile), np.float32)
    tiles = np.repeat(one, batch, axis=0)
    if not device.startswith("cuda"):
        runner.run_tiles(model, device, tiles, batch)
        return None
    cuda_graphs.clear()  # the smaller batches' graphs: each batch's own memory only
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_reserved(device)
    try:
        runner.run_tiles(model, device, tiles, batch)
    finally:
        torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_reserved(device) - base) / MIB


def memory_of(check: Check, name: str, seconds: float) -> dict[str, Any]:
    """:func:`memory_sweep` of one network (fp32, decloud's model and tile path)."""
    config, tile = setups(check.args.quick)[name]
    ref = runner.ModelRef.create(name, "untrained", config=config, device=check.device)
    model, device = runner.cached_model(ref)
    free_mib = None
    if check.cuda:
        torch.cuda.empty_cache()
        free_mib = torch.cuda.mem_get_info(device)[0] / MIB
    run = functools.partial(batch_peak, model, device, tile)
    entry = memory_sweep(run, check.args.max_batch, time.perf_counter() + seconds)
    entry["tile"] = tile
    if free_mib is not None:
        entry["free_mib_with_model"] = round(free_mib)
        entry["fitted_largest_batch"] = fitted_largest_batch(entry["peak_mib"], free_mib)
    return entry


def table_differences(ours: pd.DataFrame, reference: pd.DataFrame) -> dict[str, float] | str:
    """The largest absolute difference of each numeric column of two tables with the same
    rows (matched on their text columns): NaN in both is no difference, NaN in one is
    infinite. A string where their columns or rows differ."""
    keys = list(ours.select_dtypes(exclude="number").columns)
    if set(ours.columns) != set(reference.columns) or not keys:
        return f"columns differ: {sorted(ours.columns)} and {sorted(reference.columns)}"
    ours, reference = ours.set_index(keys).sort_index(), reference.set_index(keys).sort_index()
    if not ours.index.equals(reference.index):
        return "rows differ"
    reference = reference[ours.columns].astype(float)
    difference = (ours.astype(float) - reference).abs()
    difference = difference.mask(ours.isna() != reference.isna(), np.inf).fillna(0.0)
    return {column: float(difference[column].max()) for column in difference.columns}


def demo_differences(out: Path, reference: Path) -> dict[str, Any] | str:
    """:func:`table_differences` of each of :data:`DEMO_TABLES` in ``out`` and
    ``reference``; a string where the reference is a demo of another size."""
    tables = {
        name: (pd.read_csv(out / name), pd.read_csv(reference / name)) for name in DEMO_TABLES
    }
    pixels = [scene_pixels(table) for table in tables["metrics.csv"]]
    if pixels[0] != pixels[1]:
        return f"not compared: the reference demo has {pixels[1]} pixels, this one {pixels[0]}"
    return {name: table_differences(*pair) for name, pair in tables.items()}


def whole_scene(metrics: pd.DataFrame) -> pd.Series:
    """The row of a demo's ``metrics.csv`` that scores its whole scene."""
    return metrics.set_index(["stratum", "landcover_class"]).loc[("all", "all")]


def scene_pixels(metrics: pd.DataFrame) -> int:
    """The pixels of a demo's scene, from its ``metrics.csv``."""
    whole = whole_scene(metrics)
    return int(whole["n_pixels"] + whole["n_nodata"])


def part_demo(check: Check) -> dict[str, Any]:
    from m3rcr_xr.demo import run_demo

    if check.short_of("demo", RESERVE_S["demo"]):
        return {}
    size = 128 if check.args.quick else check.args.demo_size
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the JSON object is the whole of stdout
            run_demo(out, size=size)
        entry: dict[str, Any] = {"size": size, "seconds": round(time.perf_counter() - start, 1)}
        entry["psnr_all"] = float(whole_scene(pd.read_csv(out / "metrics.csv"))["PSNR"])
        if check.args.demo_reference:
            entry["cpu_reference"] = demo_differences(out, Path(check.args.demo_reference))
    return entry


def train_once(store: Path, out: Path, settings, resume: Path | None = None):
    """:func:`m3rcr_xr.train.train` on ``store`` into ``out``, quietly."""
    from m3rcr_xr.train import train

    with contextlib.redirect_stdout(sys.stderr):
        return train(store, out, settings, resume=resume, progress=False)


def train_entry(check: Check, store: Path, folder: Path, name: str) -> dict[str, Any]:
    """One network's straight run, and the same run stopped halfway and resumed: the
    first half must give the straight run's losses (``repeat_exact``: the device computes
    the same run twice alike), and then the resumed run its losses and weights too."""
    from m3rcr_xr.train import TrainSettings, autocast_dtype, read_training_checkpoint

    config, tile = setups(check.args.quick)[name]
    steps, crop = (12, tile) if check.args.quick else (TRAIN_STEPS, None)  # None: published
    settings = TrainSettings(name, steps, config=config, crop=crop, device=check.device, amp="auto")
    straight = train_once(store, folder / f"{name}.pth", settings)
    half = folder / f"{name}-resumed.pth"
    schedule = {k: getattr(straight.settings, k) for k in ("lr_step", "lr_decay_start")}
    # the straight run's schedule: by default it follows the steps, and half as many
    # would halve the rate at other steps
    halfway = dataclasses.replace(settings, steps=steps // 2, **schedule)
    first = train_once(store, half, halfway)
    second = train_once(store, half, settings, resume=half)
    ours = read_training_checkpoint(second.checkpoint)["network"]
    reference = read_training_checkpoint(straight.checkpoint)["network"]
    largest = max(float((ours[k].float() - v.float()).abs().max()) for k, v in reference.items())
    stopped = {**first.losses, **second.losses}
    losses = list(straight.losses.values())
    return {
        "steps": steps,
        "crop": straight.settings.crop,
        "batch_size": straight.settings.batch_size,
        "autocast": str(autocast_dtype(check.device, straight.settings.amp)),
        "steps_per_s": round(steps / straight.wall_s, 2),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "finite": bool(np.isfinite(losses).all()),
        "repeat_exact": all(straight.losses[k] == v for k, v in first.losses.items()),
        "resume_exact": stopped == straight.losses and largest == 0,
        "resume_largest_loss_difference": max(
            abs(stopped[k] - v) for k, v in straight.losses.items()
        ),
        "resume_largest_weight_difference": largest,
    }


def part_train(check: Check) -> dict[str, Any]:
    if check.short_of("train", RESERVE_S["train"]):
        return {}
    size = 96 if check.args.quick else 512
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "train.zarr"
        m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((size, size), seed=3), store)
        last_s = 0.0  # the previous network's seconds: about what the next one takes
        for name in check.args.models:
            if check.short_of(f"train {name}", RESERVE_S["memory"] + last_s):
                continue
            start = time.perf_counter()
            measure = functools.partial(train_entry, check, store, Path(tmp), name)
            results[name] = check.attempt(f"train {name}", measure)
            last_s = time.perf_counter() - start
    return results


def part_memory(check: Check) -> dict[str, Any]:
    results: dict[str, Any] = {"precision": "fp32"}
    for index, name in enumerate(check.args.models):
        share = check.left() / (len(check.args.models) - index)
        if share < 5 and not check.args.quick:
            check.skip(f"memory {name}", f"{check.left():.0f} s left")
            continue
        results[name] = check.attempt(
            f"memory {name}", functools.partial(memory_of, check, name, share)
        )
    return results


# -------------------------------------------------------------------------- goals
def goals(report: dict[str, Any], expected: dict[str, int]) -> dict[str, Any]:
    """The issue's goals from what was measured: each met (true or false) over the
    measurements made, with how many were made of how many planned (``expected``)."""

    def measured(part: str, key: str) -> list[float]:
        values = report.get(part) or {}
        return [v[key] for v in values.values() if isinstance(v, dict) and key in v]

    rules = {  # goal: (its measurements, the worst of them, how the worst must compare)
        "ratio": (measured("throughput", "ratio"), min, operator.ge),
        "bf16_vs_fp32": (measured("golden", "bf16_vs_fp32"), max, operator.le),
        "fp32_vs_golden": (measured("golden", "fp32_vs_golden"), max, operator.le),
    }
    summary = {}
    for key, (values, pick, within) in rules.items():
        worst = pick(values) if values else None
        summary[key] = {
            "goal": GOALS[key],
            "worst": worst,
            "met": None if worst is None else bool(within(worst, GOALS[key])),
            "measured": f"{len(values)} of {expected[key]}",
        }
    return summary


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1 ... or cpu")
    parser.add_argument("--golden", default="../shared/reference/golden", help="golden files")
    parser.add_argument("--out", help="write the JSON here too, after each part")
    parser.add_argument("--budget-s", type=float, default=285.0, help="time for the whole run")
    parser.add_argument("--quick", action="store_true", help="small networks, tiny scenes")
    parser.add_argument("--models", nargs="+", default=list(NAMES), choices=NAMES)
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    parser.add_argument("--target-s", type=float, default=3.5, help="seconds per timed run")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each way")
    parser.add_argument("--max-batch", type=int, default=1024, help="largest batch tried")
    parser.add_argument("--scene-max", type=int, default=4096, help="largest scene side")
    parser.add_argument(
        "--golden-models", nargs="*", choices=NAMES, help="default: --models (quick: none)"
    )
    parser.add_argument("--demo-size", type=int, default=1024, help="the demo's scene edge")
    parser.add_argument(
        "--demo-reference", help="a folder with the CSV tables of a CPU demo of that size"
    )
    parser.add_argument(
        "--parts", nargs="+", default=list(PARTS), choices=PARTS, help="default: every part"
    )
    args = parser.parse_args(argv)
    if args.quick:  # a smoke test on a CPU: every code path, in seconds
        args.target_s, args.repeats, args.max_batch = 0.05, 1, 2
        args.batch_size, args.scene_max = 2, 160
    if args.golden_models is None:  # quick: none, the published networks are slow on a CPU
        args.golden_models = [] if args.quick else args.models
    return args


PARTS: dict[str, Callable[[Check], Any]] = {
    "machine": part_machine,
    "golden": part_golden,
    "throughput": part_throughput,
    "cluster": part_cluster,
    "demo": part_demo,
    "train": part_train,
    "memory": part_memory,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: --device {args.device}, but torch sees no CUDA GPU")
    check = Check(args)
    with m3rcr_xr.set_options(progress=False):
        for name, part in PARTS.items():
            if name in args.parts:
                check.run_part(name, part)
    throughput, golden = "throughput" in args.parts, "golden" in args.parts
    expected = {
        "ratio": len(args.models) * len(check.precisions) * throughput,
        "bf16_vs_fp32": len(args.golden_models) * ("bf16" in check.precisions) * golden,
        "fp32_vs_golden": len(args.golden_models) * golden,
    }
    check.report["goals"] = goals(check.report, expected)
    check.save()
    print(json.dumps(check.report, indent=1))
    return check.report


def failures(report: dict[str, Any]) -> list[str]:
    """The parts, and the measurements within them, that failed."""
    failed = []
    for name in PARTS:
        part = report.get(name) or {}
        failed += [name] if "error" in part else []
        failed += [f"{name} {k}" for k, v in part.items() if isinstance(v, dict) and "error" in v]
    return failed


if __name__ == "__main__":
    sys.exit(1 if failures(main()) else 0)
