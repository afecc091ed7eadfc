"""Benchmark of :func:`m3rcr_xr.metrics.evaluate`.

Run from the repository root::

    python -m benchmarks.bench_metrics [--size 4096] [--scene 20000] [--chunk 1024]
        [--patches 128]

Prints one JSON object with four parts (``--part`` picks; each runs in its own Python
process so that peak memory is its own):

``compare``
    The same in-memory scene (``size`` x ``size``, 4 bands) evaluated two ways:
    ``numpy_seconds``, a straightforward NumPy implementation (whole arrays, a Python
    loop over strata and classes with boolean masks, SSIM by shifted slices), and
    ``dask_seconds``, ``evaluate`` on the same arrays cut into ``chunk`` chunks (threaded
    scheduler). ``ratio = numpy_seconds / dask_seconds``; ``numpy_scipy_seconds`` is the
    NumPy loop with SSIM through ``scipy.ndimage`` (the filter ``evaluate`` uses), to
    tell the two sources of speed apart. ``max_rel_diff`` checks both give the same
    numbers.
``flox``
    The design choice. First flox on dask arrays, as the alternative design would use
    it: the grouped sums alone of per-pixel quantities from a halo exchange (persisted
    first) on the same chunked scene, per method and engine: seconds, "WRONG sums" when
    the totals differ from map-reduce's, or flox's message when it refuses. Then
    ``evaluate`` (flox inside each chunk's task) with each engine.
``scene``
    ``evaluate`` of a lazy ``scene`` x ``scene`` synthetic scene built from
    ``dask.array`` random chunks: seconds, peak resident memory above the process's
    baseline (psutil sampling every 20 ms) and, for scale, the bytes the scene's inputs
    would take in memory.
``patches``
    The graph ``evaluate(protocol="per_patch", compute=False)`` builds for a
    :func:`m3rcr_xr.synthetic_collection` of ``patches`` and of 4 x ``patches`` patches
    of 64 x 64 pixels, one patch a chunk (as ``open_m3rcr`` gives a split): seconds, peak
    resident memory above the baseline and tasks at each size, and their ratios, large
    / small: about 4 when building is linear in the patches, 16 when it is quadratic.
``scene_halo`` (only on request)
    The same lazy scene through the alternative design (halo exchange + flox
    map-reduce on dask arrays): seconds and peak memory, to compare with ``scene``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

CODES = np.array([10, 20, 30, 40, 50, 60, 80, 90, 0], dtype=np.uint8)
STRATA = ("all", "cloudy", "clear")
#: edge of the patches of the collections of part ``patches``
PATCH_SIZE = 64


# --------------------------------------------------------------------- NumPy baseline
def _window() -> np.ndarray:
    taps = np.exp(-((np.arange(11) - 5.5) ** 2) / 4.5).astype(np.float32)
    return taps / taps.sum()


def _blur_numpy(image: np.ndarray) -> np.ndarray:
    """Separable correlation with zero padding, by shifted slices (plain NumPy)."""
    w = _window()
    h, width = image.shape[-2:]
    padded = np.pad(image, [(0, 0)] * (image.ndim - 2) + [(5, 5), (5, 5)])
    rows = sum(w[k] * padded[..., k : k + h, :] for k in range(11))
    return sum(w[k] * rows[..., k : k + width] for k in range(11))


def _blur_scipy(image: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    w = _window().astype(np.float64)
    rows = ndimage.correlate1d(image, w, axis=-2, mode="constant", output=np.float32)
    return ndimage.correlate1d(rows, w, axis=-1, mode="constant", output=np.float32)


def numpy_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    landcover: np.ndarray,
    cloudmask: np.ndarray,
    blur: Callable[[np.ndarray], np.ndarray],
    level: int = 1,
) -> dict[tuple[str, str], dict[str, float]]:
    """Every metric per (stratum, class), the straightforward way."""
    from m3rcr_xr.landcover import class_codes, class_names

    p = np.clip(pred.astype(np.float32), 0, 10000) / np.float32(10000)
    t = np.clip(target.astype(np.float32), 0, 10000) / np.float32(10000)
    valid = (target != 0).all(axis=0)
    p[:, ~valid] = 0
    t[:, ~valid] = 0
    mu1, mu2 = blur(p), blur(t)
    var1, var2, cov = blur(p * p) - mu1**2, blur(t * t) - mu2**2, blur(p * t) - mu1 * mu2
    ssim = ((2 * mu1 * mu2 + 1e-4) * (2 * cov + 9e-4)) / (
        (mu1**2 + mu2**2 + 1e-4) * (var1 + var2 + 9e-4)
    )
    eps = np.float32(np.finfo(np.float16).eps)
    cosine = (p * t).sum(0) / np.sqrt(
        np.maximum((p * p).sum(0), eps) * np.maximum((t * t).sum(0), eps)
    )
    sam = np.degrees(np.arccos(np.clip(cosine, -1, 1)))
    error = p - t
    classes = [*zip(class_names(level), class_codes(level), strict=True), ("all", None)]
    out = {}
    for stratum in STRATA:
        in_stratum = valid & {"all": True, "cloudy": cloudmask, "clear": ~cloudmask}[stratum]
        for name, codes in classes:
            mask = in_stratum if codes is None else in_stratum & np.isin(landcover, codes)
            if not mask.any():
                continue
            mse = float((error[:, mask].astype(np.float64) ** 2).mean())
            out[stratum, name] = {
                "PSNR": 20 * np.log10(1 / np.sqrt(mse)),
                "SSIM": float(ssim[:, mask].astype(np.float64).mean()),
                "SAM": float(sam[mask].astype(np.float64).mean()),
                "MAE": float(np.abs(error[:, mask]).astype(np.float64).mean()),
            }
    return out


# ---------------------------------------------------------------------------- inputs
def in_memory_scene(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.integers(1, 10001, (4, size, size), dtype=np.uint16)
    target[:, rng.random((size, size)) < 0.001] = 0
    noise = rng.standard_normal((4, size, size), dtype=np.float32)
    pred = target * (1 + np.float32(0.05) * noise)
    return {
        "decloud": pred,
        "cloudfree": target,
        "landcover": rng.choice(CODES, (size, size)),
        "cloudmask": rng.random((size, size), dtype=np.float32) < 0.3,
    }


def as_dataset(arrays: dict[str, Any]) -> Any:
    import xarray as xr

    dims = {
        "decloud": ("band", "y", "x"),
        "cloudfree": ("band", "y", "x"),
        "landcover": ("y", "x"),
        "cloudmask": ("y", "x"),
    }
    return xr.Dataset(
        {k: (dims[k], v) for k, v in arrays.items()},
        coords={"band": ["blue", "green", "red", "nir"]},
    )


def lazy_scene(size: int, chunk: int, seed: int = 0) -> dict[str, Any]:
    """A lazy synthetic scene from dask.array random chunks (nothing in memory yet)."""
    import dask.array as da

    rng = da.random.default_rng(seed)
    bands, plane = (4, chunk, chunk), (chunk, chunk)
    target = rng.integers(1, 10001, (4, size, size), chunks=bands, dtype=np.uint16)
    target = da.where(rng.random((size, size), chunks=plane) < 0.001, 0, target)
    noise = rng.standard_normal((4, size, size), chunks=bands, dtype=np.float32)
    return {
        "decloud": (target * (1 + np.float32(0.05) * noise)).astype(np.float32),
        "cloudfree": target.astype(np.uint16),
        "landcover": rng.choice(CODES, (size, size), chunks=plane),
        "cloudmask": rng.random((size, size), chunks=plane, dtype=np.float32) < 0.3,
    }


# ------------------------------------------------------------------------------ parts
def _timed(func: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = func()
    return time.perf_counter() - start, value


def _max_rel_diff(reference: dict, result: Any) -> float:
    worst = 0.0
    for (stratum, name), values in reference.items():
        cell = result.sel(stratum=stratum, landcover_class=name)
        for metric, expected in values.items():
            worst = max(worst, abs(float(cell[metric]) - expected) / abs(expected))
    return worst


def part_compare(args: argparse.Namespace) -> dict[str, Any]:
    from m3rcr_xr import metrics

    arrays = in_memory_scene(args.size)
    inputs = (arrays["decloud"], arrays["cloudfree"], arrays["landcover"], arrays["cloudmask"])
    numpy_s, reference = _timed(lambda: numpy_metrics(*inputs, blur=_blur_numpy))
    numpy_scipy_s, _ = _timed(lambda: numpy_metrics(*inputs, blur=_blur_scipy))
    ds = as_dataset(arrays).chunk(y=args.chunk, x=args.chunk)
    dask_s, result = _timed(lambda: metrics.evaluate(ds))
    return {
        "size": args.size,
        "chunk": args.chunk,
        "numpy_seconds": round(numpy_s, 2),
        "numpy_scipy_seconds": round(numpy_scipy_s, 2),
        "dask_seconds": round(dask_s, 2),
        "ratio": round(numpy_s / dask_s, 2),
        "ratio_vs_numpy_scipy": round(numpy_scipy_s / dask_s, 2),
        "ratio_means": "numpy_seconds / dask_seconds (higher: evaluate is faster)",
        "max_rel_diff": _max_rel_diff(reference, result),
    }


def _lazy_stage(ds: Any) -> tuple[Any, Any]:
    """Per-pixel quantities (halo exchange) and labels as dask arrays, for flox on dask."""
    from m3rcr_xr import metrics

    quantities = metrics.pixel_quantities(ds.decloud, ds.cloudfree)
    labels = metrics.group_labels(ds.landcover, ds.cloudmask, like=ds.cloudfree)
    return quantities.data, labels.data


def _flox_on_dask(
    quantities: Any, labels: Any, method: str = "map-reduce", engine: str = "numpy"
) -> Any:
    import flox

    from m3rcr_xr import metrics

    sums, _ = flox.groupby_reduce(
        quantities,
        labels,
        func="sum",
        expected_groups=np.arange(metrics.N_LABELS),
        axis=(1, 2),
        fill_value=0.0,
        dtype=np.float64,
        method=method,
        engine=engine,
    )
    return sums


def _flox_sums(quantities: Any, labels: Any, method: str, engine: str) -> np.ndarray:
    return np.asarray(_flox_on_dask(quantities, labels, method, engine).compute())


def part_flox(args: argparse.Namespace) -> dict[str, Any]:
    """Time flox's grouped sums alone (inputs persisted) per method and engine."""
    from m3rcr_xr import metrics

    ds = as_dataset(in_memory_scene(args.size)).chunk(y=args.chunk, x=args.chunk)
    quantities, labels = (a.persist() for a in _lazy_stage(ds))
    expected = _flox_sums(quantities, labels, "map-reduce", "numpy")
    out: dict[str, Any] = {"stage": "grouped sums of persisted per-pixel quantities"}
    for method in ("map-reduce", "cohorts", "blockwise"):
        for engine in ("numpy", "flox"):
            key = f"{method}/{engine}"
            try:
                seconds, sums = _timed(
                    lambda m=method, e=engine: _flox_sums(quantities, labels, m, e)
                )
            except (ValueError, NotImplementedError) as error:
                out[key] = f"refused by flox: {error}"
                continue
            same = np.allclose(sums, expected, rtol=1e-12)
            out[key] = f"{seconds:.2f} s" + ("" if same else " (WRONG sums)")
    for engine in ("numpy", "flox"):
        seconds = min(_timed(lambda e=engine: metrics.evaluate(ds, engine=e))[0] for _ in range(2))
        out[f"evaluate_with_engine_{engine}_seconds"] = round(seconds, 2)
    return out


class PeakRSS:
    """Peak resident memory of this process, sampled in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._process = psutil.Process()
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def part_scene(args: argparse.Namespace) -> dict[str, Any]:
    from m3rcr_xr import metrics

    ds = as_dataset(lazy_scene(args.scene, args.chunk))
    nbytes = sum(v.nbytes for v in ds.data_vars.values())
    with PeakRSS() as rss:
        seconds, result = _timed(lambda: metrics.evaluate(ds))
    mib = 2**20
    return {
        "size": args.scene,
        "chunk": args.chunk,
        "seconds": round(seconds, 1),
        "workers": os.cpu_count(),
        "input_bytes_in_memory_mib": round(nbytes / mib),
        "peak_rss_above_baseline_mib": round((rss.peak - rss.baseline) / mib),
        "peak_rss_mib": round(rss.peak / mib),
        "n_valid_pixels": result.attrs["n_valid_pixels"],
        "PSNR_all": round(float(result.PSNR.sel(stratum="all", landcover_class="all")), 4),
    }


def part_scene_halo(args: argparse.Namespace) -> dict[str, Any]:
    """The alternative design, for comparison: per-pixel quantities from a halo exchange
    (``map_overlap``) as a dask array, grouped sums by flox map-reduce on dask arrays."""
    import dask

    ds = as_dataset(lazy_scene(args.scene, args.chunk))
    quantities, labels = _lazy_stage(ds)
    with PeakRSS() as rss:
        seconds, _ = _timed(lambda: dask.compute(_flox_on_dask(quantities, labels)))
    mib = 2**20
    return {
        "size": args.scene,
        "chunk": args.chunk,
        "seconds": round(seconds, 1),
        "peak_rss_above_baseline_mib": round((rss.peak - rss.baseline) / mib),
    }


def _per_patch_graph(n_patches: int, patch_size: int = PATCH_SIZE) -> dict[str, float]:
    """Seconds, peak memory (MiB) and tasks of the per-patch graph of a collection."""
    import m3rcr_xr
    from m3rcr_xr import metrics

    ds = m3rcr_xr.synthetic_collection(n_patches, patch_size)
    ds = ds.assign(decloud=ds.cloudy.astype("float32"))
    with PeakRSS() as rss:
        seconds, lazy = _timed(lambda: metrics.evaluate(ds, protocol="per_patch", compute=False))
    return {
        "seconds": seconds,
        "peak_mib": (rss.peak - rss.baseline) / 2**20,
        "tasks": len(lazy.PSNR.data.__dask_graph__()),
    }


def part_patches(args: argparse.Namespace) -> dict[str, Any]:
    """Graph build of the per-patch protocol at ``patches`` and 4 x ``patches``."""
    _per_patch_graph(2)  # first-call costs (imports, caches) out of the timing
    sizes = (args.patches, 4 * args.patches)
    small, large = (_per_patch_graph(n) for n in sizes)
    return {
        "patches": list(sizes),
        "patch_size": PATCH_SIZE,
        **{
            f"build_{key}": [round(small[key], 2), round(large[key], 2)]
            for key in ("seconds", "peak_mib", "tasks")
        },
        **{
            f"{key}_ratio": round(large[key] / max(small[key], 0.01), 2)
            for key in ("seconds", "peak_mib", "tasks")
        },
        "ratio_means": "at 4 x patches / at patches: about 4 if linear, 16 if quadratic",
    }


PARTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "compare": part_compare,
    "flox": part_flox,
    "scene": part_scene,
    "patches": part_patches,
    "scene_halo": part_scene_halo,
}
#: run by default (scene_halo takes as long as scene, and is only for comparison)
DEFAULT_PARTS = ("compare", "flox", "scene", "patches")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="in-memory scene edge")
    parser.add_argument("--scene", type=int, default=20000, help="lazy scene edge")
    parser.add_argument("--chunk", type=int, default=1024, help="chunk edge")
    parser.add_argument("--patches", type=int, default=128, help="patches of the small collection")
    parser.add_argument(
        "--part",
        choices=sorted(PARTS),
        action="append",
        help="run only these parts (default: all, each in its own process)",
    )
    args = parser.parse_args(argv)
    import m3rcr_xr

    m3rcr_xr.set_options(progress=False)
    if args.part and len(args.part) == 1:
        print(json.dumps(PARTS[args.part[0]](args)))
        return
    report = {}
    for part in args.part or DEFAULT_PARTS:
        command = [
            sys.executable,
            "-m",
            "benchmarks.bench_metrics",
            "--part",
            part,
            "--size",
            str(args.size),
            "--scene",
            str(args.scene),
            "--chunk",
            str(args.chunk),
            "--patches",
            str(args.patches),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        report[part] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
