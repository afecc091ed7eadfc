"""Quick benchmark: m3rcr_xr against the plain way, time and peak memory, in one run.

Run ``python -m benchmarks.quick`` from the repository root; it prints one JSON object.
Each way of each part runs in fresh interpreters on the same data (written once by this
one), ``--rounds`` times, the two ways alternating, with glibc's malloc thresholds fixed
so that freed memory goes back to the system. Each process makes a warm-up run, then
``--repeats`` timed runs; the best time of a way is kept, and its largest peak resident
memory above the size before the first run (psutil every 20 ms):

``decloud``
    ``m3rcr_xr.decloud`` (threaded scheduler, blended overlapping tiles) against the
    published way on the same tiles of the same in-memory scene: crop, batch, forward,
    keep the outputs (:func:`benchmarks.bench_decloud.plain_loop`; no blending, no
    output array). Untrained DSen2-CR of :data:`benchmarks.bench_decloud.CONFIG`.
``ingest``
    ``m3rcr ingest`` of a quartet of GeoTIFFs (``open_quartet`` + ``to_zarr``: the 10 m
    layers aligned to the 3 m grid by coordinates, chunked Zarr v3, resumable steps)
    against a raw rasterio read of the same files, nearest upsampling of the 10 m layers
    by index and a zarr-python write of the same five arrays, same chunks and codec,
    with zarr's defaults (each chunk is compared with the fill value, and skipped if
    equal; ``to_zarr`` writes every chunk).
``stac``
    ``m3rcr_xr.open_stac`` + ``m3rcr_xr.to_zarr`` of a PlanetScope, a Sentinel-1 RTC
    (linear power) and a WorldCover item (STAC item collections on disk) against bare
    ``odc.stac.load`` of the same bands onto the same grid + ``xarray.Dataset.to_zarr``.
``metrics``
    ``m3rcr_xr.evaluate`` (chunked, one dask pass) against the straightforward NumPy
    evaluation of :func:`benchmarks.bench_metrics.numpy_metrics` on the same arrays.

``semantic``
    ``m3rcr_xr.evaluate_semantic`` of a scene (the target, a prediction and the cloudy
    input each classified on the tiling engine, blended probabilities, confusion counts
    by ``np.bincount`` per chunk, one dask pass) against a plain PyTorch loop over the
    same tiles of the same three images (crop, batch, forward, argmax; each tile's
    stride-sized corner kept) followed by one NumPy confusion matrix (``np.bincount``)
    per image. Untrained classifier of the demo classifier's configuration.

``cog``
    ``m3rcr_xr.to_cog`` of a lazy float32 scene (4 bands, 512-pixel chunks) against
    rioxarray's ``to_raster(driver="COG")`` of the same scene (GDAL's COG driver, which
    copies a whole image); ``to_cog`` is also run on a scene half as wide and half as
    tall, and ``peak_ratio_vs_half`` is its peak at the full size / at that size (its
    memory grows with the width only: about two rows of blocks; 1 would be flat).

``store``
    ``m3rcr_xr.decloud`` of a lazy synthetic scene (1024-pixel chunks, the tiny
    DSen2-CR of :data:`TINY`, threaded scheduler) written by ``m3rcr_xr.to_zarr``
    against the same decloud computed into memory, which holds the whole output; also
    run on a scene half as wide and half as tall, and ``peak_ratio_vs_half`` is its
    peak at the full size / at that size (4 would be memory that grows with the area,
    1 flat).

``speed_ratio`` is baseline seconds / m3rcr_xr seconds (above 1: m3rcr_xr is faster);
``memory_ratio`` is m3rcr_xr peak / baseline peak (below 1: m3rcr_xr needs less).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bench_decloud, bench_metrics

MIB = 2**20
OPTICAL_RES, COARSE_RES = 3.0, 10.0
ORIGIN = (400000.0, 5000000.0)
CRS = "EPSG:32632"


# ------------------------------------------------------------------------- measuring
#: glibc keeps freed memory for reuse, and grows its mmap threshold as big arrays come
#: and go, so a second run in a process shows no peak; fixed thresholds give memory back
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}


def measure(func: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Run ``func`` once to warm up, then ``repeats`` times: the best warm time, and the
    peak resident memory above the start, over every run (warm-up included)."""
    gc.collect()
    with bench_metrics.PeakRSS() as rss:
        func()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            func()
            seconds.append(time.perf_counter() - start)
    return {"seconds": min(seconds), "peak_mib": (rss.peak - rss.baseline) / MIB}


def run_child(part: str, way: str, folder: Path, size: int, repeats: int) -> dict[str, float]:
    """One way of one part in a fresh interpreter, so that memory peaks do not mix."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.quick",
        "--child",
        part,
        way,
        "--folder",
        str(folder),
        f"--{part}-size",
        str(size),
        "--repeats",
        str(repeats),
    ]
    env = {**os.environ, **MALLOC_ENV}
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1]
    )
    if done.returncode != 0:
        raise RuntimeError(f"{part}/{way} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(part: str, folder: Path, size: int, repeats: int, rounds: int) -> dict:
    """Both ways of ``part`` in ``rounds`` alternating rounds (baseline first): the best
    time and the largest peak of each way, and the two ratios. Alternating rounds keep
    a load that comes and goes on a shared machine from favouring one way."""
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "m3rcr_xr": []}
    for _ in range(rounds):
        for way, results in runs.items():
            results.append(run_child(part, way, folder, size, repeats))
    seconds = {way: min(r["seconds"] for r in results) for way, results in runs.items()}
    peaks = {way: max(r["peak_mib"] for r in results) for way, results in runs.items()}
    return {
        "m3rcr_xr_s": round(seconds["m3rcr_xr"], 3),
        "baseline_s": round(seconds["baseline"], 3),
        "speed_ratio": round(seconds["baseline"] / seconds["m3rcr_xr"], 3),
        "m3rcr_xr_peak_mib": round(peaks["m3rcr_xr"]),
        "baseline_peak_mib": round(peaks["baseline"]),
        "memory_ratio": round(peaks["m3rcr_xr"] / max(peaks["baseline"], 1.0), 3),
    }


# --------------------------------------------------------------------------- decloud
TILE, BATCH = 256, 8


def setup_decloud(folder: Path, size: int) -> dict[str, Callable[[], Any]]:
    """The two ways on the same in-memory scene and checkpoint (written by the parent)."""
    import m3rcr_xr
    from m3rcr_xr import models, normalize, tiling

    config = bench_decloud.CONFIG
    checkpoint = folder / "bench.pt"
    scene = m3rcr_xr.synthetic_scene((size, size), chunks=size).persist()
    inputs = normalize.model_inputs(scene).values
    plan = tiling.make_plan(TILE, TILE // 8, size, size)
    result = m3rcr_xr.decloud(
        scene, "dsen2_cr", checkpoint, config=config, tile=TILE, batch_size=BATCH
    )
    model = models.load("dsen2_cr", checkpoint, **config)
    return {
        "m3rcr_xr": lambda: result.compute(scheduler="threads"),
        "baseline": lambda: bench_decloud.plain_loop(inputs, plan, model, BATCH),
    }


def part_decloud(size: int, repeats: int, rounds: int, folder: Path) -> dict:
    from m3rcr_xr import tiling

    config = bench_decloud.CONFIG
    bench_decloud._checkpoint(folder, config)
    plan = tiling.make_plan(TILE, TILE // 8, size, size)
    return {
        "scene": f"{size}x{size}",
        "tile": TILE,
        "overlap": plan.overlap,
        "tiles": plan.shape[0] * plan.shape[1],
        "batch": BATCH,
        "model": f"dsen2_cr {config}",
        **compare("decloud", folder, size, repeats, rounds),
    }


# ---------------------------------------------------------------------------- ingest
def _write_tif(path: Path, data: np.ndarray, res: float) -> Path:
    import rasterio
    from affine import Affine

    transform = Affine(res, 0, ORIGIN[0], 0, -res, ORIGIN[1])
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=CRS,
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as dst:
        dst.write(data)
    return path


def write_quartet(folder: Path, size: int, seed: int = 0) -> dict[str, Path]:
    """A quartet of GeoTIFFs (and the .npy mask) in the dataset's form, ``size`` px a side."""
    rng = np.random.default_rng(seed)
    coarse = int(np.ceil(size * OPTICAL_RES / COARSE_RES))
    optical = (4, size, size)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "mask.npy", rng.random((size, size)) < 0.3)
    return {
        "cloudy": _write_tif(
            folder / "cloudy.tif", rng.integers(1, 10000, optical, dtype=np.uint16), OPTICAL_RES
        ),
        "cloudfree": _write_tif(
            folder / "cloudfree.tif", rng.integers(1, 10000, optical, dtype=np.uint16), OPTICAL_RES
        ),
        "sar": _write_tif(
            folder / "s1.tif",
            rng.uniform(-30, 0, (2, coarse, coarse)).astype(np.float32),
            COARSE_RES,
        ),
        "landcover": _write_tif(
            folder / "lc.tif", rng.choice(bench_metrics.CODES[:-1], (1, coarse, coarse)), COARSE_RES
        ),
        "cloudmask": folder / "mask.npy",
    }


def ingest_m3rcr(files: dict[str, Path], store: Path) -> None:
    """What ``m3rcr ingest CLOUDY --cloudfree ... DEST`` does."""
    import m3rcr_xr

    ds = m3rcr_xr.open_quartet(
        files["cloudy"], files["cloudfree"], files["sar"], files["landcover"], files["cloudmask"]
    )
    m3rcr_xr.to_zarr(ds, store, overwrite=True, progress=False)


def _nearest_index(size: int) -> np.ndarray:
    """Row (or column) of the 10 m grid holding each 3 m pixel centre."""
    return ((np.arange(size) + 0.5) * OPTICAL_RES // COARSE_RES).astype(np.intp)


def ingest_raw(files: dict[str, Path], store: Path, chunk: int) -> None:
    """rasterio reads, 10 m layers upsampled by index, one zarr-python array each."""
    import rasterio
    import zarr

    arrays = {}
    for name in ("cloudy", "cloudfree", "sar", "landcover"):
        with rasterio.open(files[name]) as src:
            arrays[name] = src.read()
    size = arrays["cloudy"].shape[-1]
    index = _nearest_index(size)
    arrays["sar"] = arrays["sar"][:, index[:, None], index[None, :]]
    arrays["landcover"] = arrays["landcover"][0][index[:, None], index[None, :]]
    arrays["cloudmask"] = np.load(files["cloudmask"])
    group = zarr.open_group(store, mode="w", zarr_format=3)
    for name, data in arrays.items():
        chunks = (*data.shape[:-2], chunk, chunk)
        target = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks)
        target[...] = data


def setup_ingest(folder: Path, size: int) -> dict[str, Callable[[], Any]]:
    import m3rcr_xr

    files = {
        "cloudy": "cloudy.tif",
        "cloudfree": "cloudfree.tif",
        "sar": "s1.tif",
        "landcover": "lc.tif",
        "cloudmask": "mask.npy",
    }
    files = {name: folder / "quartet" / file for name, file in files.items()}
    chunk = m3rcr_xr.get_options()["scene_chunk"]
    return {
        "m3rcr_xr": lambda: ingest_m3rcr(files, folder / "m3rcr.zarr"),
        "baseline": lambda: ingest_raw(files, folder / "raw.zarr", chunk),
    }


def part_ingest(size: int, repeats: int, rounds: int, folder: Path) -> dict:
    import m3rcr_xr

    files = write_quartet(folder / "quartet", size)
    on_disk = sum(path.stat().st_size for path in files.values())
    return {
        "scene": f"{size}x{size} (3 m) with 10 m SAR and land cover",
        "input_mib": round(on_disk / MIB),
        "chunk": m3rcr_xr.get_options()["scene_chunk"],
        **compare("ingest", folder, size, repeats, rounds),
    }


# ------------------------------------------------------------------------------ stac
def write_stac(folder: Path, size: int) -> dict[str, Path]:
    """The ingest quartet's layers as STAC item collections (one item each), SAR as
    ``vv``/``vh`` in linear power; bands declared (``raster:bands``) for bare odc-stac."""
    import pystac
    import rasterio

    from m3rcr_xr.testing import stac_item

    files = write_quartet(folder, size)
    with rasterio.open(files["sar"]) as src:
        power = 10 ** (src.read().astype(np.float64) / 10)
    vv = _write_tif(folder / "vv.tif", power[:1].astype(np.float32), COARSE_RES)
    vh = _write_tif(folder / "vh.tif", power[1:].astype(np.float32), COARSE_RES)
    layouts = {
        "planet": {"ortho_analytic_4b_sr": (files["cloudy"], "uint16", 4)},
        "s1": {"vv": (vv, "float32", 1), "vh": (vh, "float32", 1)},
        "worldcover": {"map": (files["landcover"], "uint8", 1)},
    }
    out = {}
    for name, assets in layouts.items():
        item = stac_item(name, {asset: path for asset, (path, _, _) in assets.items()})
        for asset, (_, dtype, count) in assets.items():
            item.assets[asset].extra_fields["raster:bands"] = [{"data_type": dtype}] * count
        out[name] = folder / f"{name}.json"
        pystac.ItemCollection([item]).save_object(dest_href=str(out[name]))
    return out


def ingest_stac(collections: dict[str, Path], store: Path) -> None:
    import m3rcr_xr

    ds = m3rcr_xr.open_stac(
        collections["planet"],
        sar_items=collections["s1"],
        landcover_items=collections["worldcover"],
    )
    m3rcr_xr.to_zarr(ds, store, overwrite=True, progress=False)


def stac_raw(collections: dict[str, Path], store: Path, chunk: int) -> None:
    """Bare odc-stac: the same bands onto the optical grid, written by xarray."""
    import odc.stac
    import pystac
    import xarray as xr

    from m3rcr_xr.stac import item_geobox

    items = {name: list(pystac.ItemCollection.from_file(str(p))) for name, p in collections.items()}
    geobox = item_geobox(items["planet"][0], "ortho_analytic_4b_sr")
    bands = {
        "planet": [f"ortho_analytic_4b_sr.{i}" for i in range(1, 5)],
        "s1": ["vv", "vh"],
        "worldcover": ["map"],
    }
    loaded = [
        odc.stac.load(
            items[name], bands=names, geobox=geobox, chunks={"y": chunk, "x": chunk}
        ).isel(time=0, drop=True)
        for name, names in bands.items()
    ]
    xr.merge(loaded).to_zarr(store, mode="w", zarr_format=3, consolidated=True)


def setup_stac(folder: Path, size: int) -> dict[str, Callable[[], Any]]:
    import m3rcr_xr

    collections = {
        name: folder / "stac" / f"{name}.json" for name in ("planet", "s1", "worldcover")
    }
    chunk = m3rcr_xr.get_options()["scene_chunk"]
    return {
        "m3rcr_xr": lambda: ingest_stac(collections, folder / "stac-m3rcr.zarr"),
        "baseline": lambda: stac_raw(collections, folder / "stac-raw.zarr", chunk),
    }


def part_stac(size: int, repeats: int, rounds: int, folder: Path) -> dict:
    write_stac(folder / "stac", size)
    return {
        "scene": f"{size}x{size} (3 m) from STAC, with 10 m SAR (linear) and land cover",
        **compare("stac", folder, size, repeats, rounds),
    }


# --------------------------------------------------------------------------- metrics
METRICS_CHUNK = 1024


def setup_metrics(folder: Path, size: int) -> dict[str, Callable[[], Any]]:
    from m3rcr_xr import metrics

    arrays = bench_metrics.in_memory_scene(size)
    inputs = (arrays["decloud"], arrays["cloudfree"], arrays["landcover"], arrays["cloudmask"])
    ds = bench_metrics.as_dataset(arrays).chunk(y=METRICS_CHUNK, x=METRICS_CHUNK)
    return {
        "m3rcr_xr": lambda: metrics.evaluate(ds),
        "baseline": lambda: bench_metrics.numpy_metrics(*inputs, blur=bench_metrics._blur_numpy),
    }


def part_metrics(size: int, repeats: int, rounds: int, folder: Path) -> dict:
    return {
        "scene": f"{size}x{size}, 4 bands",
        "chunk": METRICS_CHUNK,
        **compare("metrics", folder, size, repeats, rounds),
    }


# -------------------------------------------------------------------------- semantic
#: the architecture of the shipped demo classifier, untrained here (the cost is the same)
CLASSIFIER_CONFIG = {"depth": 2, "features": 16, "level": 1}


def plain_classification(images: list[np.ndarray], landcover: np.ndarray, plan, model) -> None:
    """Classify each image tile by tile (no blending: each tile's stride-sized corner is
    kept), then count its confusion with the WorldCover labels by ``np.bincount``."""
    import torch

    from m3rcr_xr import tiling
    from m3rcr_xr.landcover import class_names, worldcover_labels

    truth = worldcover_labels(landcover, 1).astype(np.int64).ravel()
    n_classes = len(class_names(1))
    rows, cols = plan.shape
    corners = [(r * plan.stride, c * plan.stride) for r in range(rows) for c in range(cols)]
    for image in images:
        padded = tiling.pad(image, plan)
        labels = np.empty(padded.shape[-2:], np.int64)
        with torch.inference_mode():
            for first in range(0, len(corners), BATCH):
                batch = corners[first : first + BATCH]
                crops = np.stack(
                    [padded[:, y : y + plan.tile, x : x + plan.tile] for y, x in batch]
                )
                predicted = model(torch.from_numpy(crops)).argmax(1).numpy()
                for (y, x), tile in zip(batch, predicted, strict=True):
                    labels[y : y + plan.stride, x : x + plan.stride] = tile[
                        : plan.stride, : plan.stride
                    ]
        pred = labels[: image.shape[-2], : image.shape[-1]].ravel()
        keep = truth < n_classes
        np.bincount(truth[keep] * n_classes + pred[keep], minlength=n_classes**2)


def setup_semantic(folder: Path, size: int) -> dict[str, Callable[[], Any]]:
    import m3rcr_xr
    from m3rcr_xr import models, tiling
    from m3rcr_xr.normalize import normalize_optical

    scene = m3rcr_xr.synthetic_scene((size, size), chunks=size).persist()
    scene = scene.assign(decloud=scene.cloudfree.astype("float32") * 0.9 + 50)
    images = [
        normalize_optical(scene[name].values.astype(np.float32))
        for name in ("decloud", "cloudfree", "cloudy")
    ]
    plan = tiling.make_plan(TILE, TILE // 8, size, size)
    options = {"classifier": "untrained", "classifier_config": CLASSIFIER_CONFIG}
    model = models.build("landcover_unet", **CLASSIFIER_CONFIG).eval()
    landcover = scene.landcover.values
    return {
        "m3rcr_xr": lambda: m3rcr_xr.evaluate_semantic(
            scene, tile=TILE, batch_size=BATCH, device="cpu", **options
        ),
        "baseline": lambda: plain_classification(images, landcover, plan, model),
    }


def part_semantic(size: int, repeats: int, rounds: int, folder: Path) -> dict:
    from m3rcr_xr import tiling

    plan = tiling.make_plan(TILE, TILE // 8, size, size)
    return {
        "scene": f"{size}x{size}, 3 images classified",
        "tile": TILE,
        "tiles_per_image": plan.shape[0] * plan.shape[1],
        "model": f"landcover_unet {CLASSIFIER_CONFIG} (untrained)",
        "goal": "speed_ratio >= 1 / 1.1 (at most the forward passes + 10%)",
        **compare("semantic", folder, size, repeats, rounds),
    }


# ------------------------------------------------------------------------------- cog
COG_CHUNK = 512


def lazy_scene(size: int) -> Any:
    """A lazy float32 (band, y, x) scene with a CRS: random values, computed by chunk."""
    import dask.array as da
    import xarray as xr

    data = da.random.default_rng(0).random(
        (4, size, size), chunks=(4, COG_CHUNK, COG_CHUNK), dtype="float32"
    )
    coords = {
        "band": ["blue", "green", "red", "nir"],
        "y": ORIGIN[1] - OPTICAL_RES * (np.arange(size) + 0.5),
        "x": ORIGIN[0] + OPTICAL_RES * (np.arange(size) + 0.5),
    }
    return xr.DataArray(data, dims=("band", "y", "x"), coords=coords).rio.write_crs(CRS)


def setup_cog(folder: Path, size: int) -> dict[str, Callable[[], Any]]:
    import m3rcr_xr

    scene = lazy_scene(size)
    ours, theirs = folder / f"m3rcr-{size}.tif", folder / f"rio-{size}.tif"
    return {
        "m3rcr_xr": lambda: m3rcr_xr.to_cog(scene, ours, overwrite=True, blocksize=COG_CHUNK),
        "baseline": lambda: scene.rio.to_raster(
            theirs, driver="COG", compress="DEFLATE", overview_resampling="NEAREST"
        ),
    }


def part_cog(size: int, repeats: int, rounds: int, folder: Path) -> dict:
    return {
        "scene": f"{size}x{size}, 4 bands float32, lazy, chunks {COG_CHUNK}",
        **compare_with_half_size("cog", folder, size, repeats, rounds),
    }


def compare_with_half_size(part: str, folder: Path, size: int, repeats: int, rounds: int) -> dict:
    """:func:`compare`, and m3rcr_xr's largest peak on a scene half as wide and half as
    tall: ``peak_ratio_vs_half`` is the peak at ``size`` over that one."""
    result = compare(part, folder, size, repeats, rounds)
    peak_half = max(
        run_child(part, "m3rcr_xr", folder, size // 2, repeats)["peak_mib"] for _ in range(rounds)
    )
    return {
        **result,
        "m3rcr_xr_peak_mib_half_size": round(peak_half),
        "peak_ratio_vs_half": round(result["m3rcr_xr_peak_mib"] / max(peak_half, 1.0), 3),
    }


# ----------------------------------------------------------------------------- store
#: a DSen2-CR small enough that its own memory stays small beside the scene's
TINY = {"n_resblocks": 1, "n_feats": 8}


def setup_store(folder: Path, size: int) -> dict[str, Callable[[], Any]]:
    import m3rcr_xr

    scene = m3rcr_xr.synthetic_scene((size, size), chunks=1024)
    result = m3rcr_xr.decloud(scene, "dsen2_cr", "untrained", config=TINY)
    target = folder / f"decloud-{size}.zarr"
    return {
        "m3rcr_xr": lambda: m3rcr_xr.to_zarr(result.to_dataset(), target, overwrite=True),
        "baseline": lambda: result.compute(scheduler="threads"),
    }


def part_store(size: int, repeats: int, rounds: int, folder: Path) -> dict:
    return {
        "scene": f"{size}x{size}, lazy, chunks 1024, dsen2_cr {TINY}",
        **compare_with_half_size("store", folder, size, repeats, rounds),
    }


SETUPS = {
    "decloud": setup_decloud,
    "ingest": setup_ingest,
    "stac": setup_stac,
    "metrics": setup_metrics,
    "cog": setup_cog,
    "semantic": setup_semantic,
    "store": setup_store,
}


# ------------------------------------------------------------------------------ main
def machine() -> dict[str, Any]:
    import torch

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        model = names[0] if names else model
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def child(part: str, way: str, folder: Path, size: int, repeats: int) -> None:
    """Inside :func:`run_child`: set up, measure one way, print one JSON line."""
    import m3rcr_xr

    m3rcr_xr.set_options(progress=False)
    func = SETUPS[part](folder, size)[way]
    print(json.dumps(measure(func, repeats)))


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decloud-size", type=int, default=1024)
    parser.add_argument("--ingest-size", type=int, default=2048)
    parser.add_argument("--stac-size", type=int, default=2048)
    parser.add_argument("--metrics-size", type=int, default=2048)
    parser.add_argument(
        "--parts", nargs="+", choices=list(SETUPS), default=list(SETUPS), help="parts to run"
    )
    parser.add_argument("--cog-size", type=int, default=4096)
    parser.add_argument("--semantic-size", type=int, default=2048)
    parser.add_argument("--store-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per way, alternating")
    parser.add_argument("--child", nargs=2, metavar=("PART", "WAY"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        part, way = args.child
        child(part, way, args.folder, getattr(args, f"{part}_size"), args.repeats)
        return None
    import m3rcr_xr

    with tempfile.TemporaryDirectory() as tmp, m3rcr_xr.set_options(progress=False):
        folder = Path(tmp)
        parts = {
            "decloud": part_decloud,
            "ingest": part_ingest,
            "stac": part_stac,
            "metrics": part_metrics,
            "cog": part_cog,
            "semantic": part_semantic,
            "store": part_store,
        }
        report = {
            "machine": machine(),
            **{
                name: part(getattr(args, f"{name}_size"), args.repeats, args.rounds, folder)
                for name, part in parts.items()
                if name in args.parts
            },
            "ratios": "speed_ratio = baseline s / m3rcr_xr s (>1: faster); "
            "memory_ratio = m3rcr_xr peak / baseline peak (<1: less memory)",
        }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
