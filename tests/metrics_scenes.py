"""Small in-memory scenes for the metric tests, and a comparison of two results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401 - registers .rio
import xarray as xr

import m3rcr_xr
from m3rcr_xr import metrics
from m3rcr_xr.cli.evaluate import _open_stores
from m3rcr_xr.testing import TINY

BANDS = ["blue", "green", "red", "nir"]
CODES = np.array([10, 20, 30, 40, 50, 60, 80, 90, 0], dtype="uint8")


def make_scene(shape=(48, 56), *, seed=0, patches=None, nodata=0.02, crs="EPSG:32632"):
    """A small in-memory scene (or collection) with a float32 ``decloud`` prediction."""
    rng = np.random.default_rng(seed)
    lead = () if patches is None else (patches,)
    target = rng.integers(1, 10001, (*lead, 4, *shape), dtype="uint16")
    target[..., rng.random(shape) < nodata] = 0  # nodata in all bands
    noise = rng.normal(1.0, 0.08, target.shape).astype("float32")
    pred = (target * noise + rng.normal(0, 150, target.shape)).astype("float32")
    landcover = rng.choice(CODES, (*lead, *shape))
    cloudmask = rng.random((*lead, *shape)) < 0.35
    dims = ("patch",) * len(lead)
    ds = xr.Dataset(
        {
            "cloudfree": ((*dims, "band", "y", "x"), target),
            "decloud": ((*dims, "band", "y", "x"), pred),
            "landcover": ((*dims, "y", "x"), landcover),
            "cloudmask": ((*dims, "y", "x"), cloudmask),
        },
        coords={
            "band": BANDS,
            "y": 5000.0 - 3.0 * np.arange(shape[0]),
            "x": 400.0 + 3.0 * np.arange(shape[1]),
        },
    )
    return ds.rio.write_crs(crs) if crs else ds


def assert_same_result(actual: xr.Dataset, expected: xr.Dataset, rtol: float = 1e-12) -> None:
    for name in (*metrics.METRICS, "n_pixels", "n_nodata"):
        np.testing.assert_allclose(
            actual[name].values, expected[name].values, rtol=rtol, equal_nan=True, err_msg=name
        )


#: decloud of a tiny untrained network: predictions of a scene, quickly
TINY_DECLOUD = {"model": "dsen2_cr", "checkpoint": "untrained", "config": TINY, "tile": 32}


def scene_stores(folder: Path) -> dict[str, Path]:
    """Stores of two 64 x 64 synthetic scenes on one grid, ``a`` and ``b``, and
    ``decloud_a``: the decloud store written from ``a``."""
    paths = {name: folder / f"{name}.zarr" for name in ("a", "b", "decloud_a")}
    for name, seed in (("a", 1), ("b", 2)):
        m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 64), seed=seed), paths[name])
    estimate = m3rcr_xr.decloud(m3rcr_xr.open_zarr(paths["a"]), **TINY_DECLOUD)
    m3rcr_xr.to_zarr(estimate.to_dataset(), paths["decloud_a"])
    return paths


def merged_stores(*paths: Path) -> xr.Dataset:
    """The stores ``paths`` merged as ``m3rcr evaluate`` merges them."""
    return _open_stores([str(path) for path in paths])
