"""Forward time of the three networks on one tile, printed as JSON.

Run from the repository root::

    python -m benchmarks.bench_models                # CPU, 160x160 tiles, fp32
    python -m benchmarks.bench_models --device cuda --channels-last --autocast bf16

Each model is timed in its default (published) configuration and in its ``small`` preset,
both on a 160x160 tile (for the windowed models the small preset is rebuilt with
``input_size=160``), and the small preset on its own 32x32 tile. Weights are the fresh
initialisation (timing does not depend on their values). Each entry reports the median
and the minimum over ``--repeats`` timed runs after one warm-up run, under
``torch.inference_mode()``.

Recorded on the development machine (2 vCPU AMD EPYC, torch 2.13.0+cpu, 2 threads, fp32,
batch 1, pure-PyTorch deformable conv; median wall seconds per forward over 3 runs for the
defaults and 10 for the small presets). The host was shared: under concurrent load the
figures were 2 to 40 times larger, the tiny models suffering most (thread contention).

=========  ==========  ===========  =========  ========
model      params      default@160  small@160  small@32
=========  ==========  ===========  =========  ========
dsen2_cr   18,905,860  5.08         0.0075     0.0022
glf_cr     14,735,780  2.46         0.038      0.0097
align_cr   45,528,532  3.29         0.082      0.019
=========  ==========  ===========  =========  ========

Small presets: 10,740 (dsen2_cr), 97,252 (glf_cr) and 396,244 (align_cr) parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import torch

from m3rcr_xr.models import PRESETS, available, build


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(
    name: str,
    config: dict[str, Any],
    tile: int,
    *,
    repeats: int,
    device: torch.device,
    batch: int = 1,
    channels_last: bool = False,
    autocast: str | None = None,
) -> dict[str, Any]:
    """Time ``repeats`` forwards of one model on a (batch, *, tile, tile) input."""
    model = build(name, **config).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    gen = torch.Generator().manual_seed(0)
    cloudy = torch.rand(batch, 4, tile, tile, generator=gen).to(device, memory_format=fmt)
    sar = torch.rand(batch, 2, tile, tile, generator=gen).to(device, memory_format=fmt)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast or "")
    times, cpu_times = [], []
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
    ):
        for i in range(repeats + 1):
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            model(cloudy, sar)
            _sync(device)
            if i:  # the first run warms up allocators and kernels
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    return {
        "model": name,
        "config": config,
        "tile": tile,
        "batch": batch,
        "params": sum(p.numel() for p in model.parameters()),
        "median_s": statistics.median(times),
        "min_s": min(times),
        # CPU time of this process (all threads): less sensitive to other load on the host.
        "cpu_median_s": statistics.median(cpu_times),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(available("cloud_removal")))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of default models")
    parser.add_argument("--small-repeats", type=int, default=10, help="timed runs of small ones")
    parser.add_argument("--tile", type=int, default=160)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--autocast", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--skip-default", action="store_true", help="time small presets only")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    common = {
        "device": device,
        "batch": args.batch,
        "channels_last": args.channels_last,
        "autocast": args.autocast,
    }
    results = []
    for name in args.models:
        windowed = name != "dsen2_cr"
        sized = {"input_size": args.tile} if windowed else {}
        small = dict(PRESETS[name]["small"])
        runs: list[tuple[str, dict[str, Any], int, int]] = []
        if not args.skip_default:
            runs.append(("default", sized, args.tile, args.repeats))
        runs.append(("small", {**small, **sized}, args.tile, args.small_repeats))
        native = small.get("input_size", 32)
        runs.append(("small", small, native, args.small_repeats))
        for label, config, tile, repeats in runs:
            entry = time_forward(name, config, tile, repeats=repeats, **common)
            entry["preset"] = label
            results.append(entry)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {
        "torch": torch.__version__,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "channels_last": args.channels_last,
        "autocast": args.autocast,
        "load_average_after": load,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
