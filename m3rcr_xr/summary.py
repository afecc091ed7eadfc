"""Human-readable summaries of scenes, collections and stores (``m3rcr info``)."""

from __future__ import annotations

import math

import dask
import numpy as np
import pandas as pd
import xarray as xr
from rasterio.crs import CRS

from .landcover import WORLDCOVER
from .schema import is_collection


def layout(ds: xr.Dataset) -> pd.DataFrame:
    """One row per variable: dims, dtype, shape and chunk shape (no data is read)."""
    rows = []
    for name, var in ds.data_vars.items():
        chunks = "x".join(str(c[0]) for c in var.chunks) if var.chunks else "in memory"
        rows.append(
            {
                "variable": name,
                "dims": ", ".join(map(str, var.dims)),
                "dtype": str(var.dtype),
                "shape": "x".join(map(str, var.shape)),
                "chunks": chunks,
            }
        )
    return pd.DataFrame(rows).set_index("variable")


def statistics(ds: xr.Dataset) -> dict[str, float]:
    """Cloud fraction and land-cover shares, in one pass over the data."""
    lazy: dict[str, object] = {}
    if "cloudmask" in ds:
        lazy["cloud fraction"] = ds["cloudmask"].mean().data
    if "landcover" in ds:
        codes = ds["landcover"].data
        for cls in WORLDCOVER:
            lazy[f"landcover {cls.name}"] = (codes == cls.code).mean()
    if "cloudy" in ds:
        lazy["cloudy nodata fraction"] = (ds["cloudy"].data == 0).all(axis=-3).mean()
    (values,) = dask.compute(lazy)
    return {key: float(np.asarray(value)) for key, value in values.items()}


def describe(ds: xr.Dataset, *, stats: bool = False) -> str:
    """A text summary of a scene or collection.

    With ``stats``, the :func:`statistics` too, but for the shares of land-cover
    classes the data does not have (a cloud fraction of 0 is shown: no cloud, not
    no cloud mask).
    """
    lines = []
    if is_collection(ds):
        epsg = sorted({int(e) for e in np.asarray(ds["epsg"].values)})
        lines.append(
            f"collection: {ds.sizes['patch']} patches of "
            f"{ds.sizes['y']}x{ds.sizes['x']} px; EPSG {epsg}"
        )
        for name in ("split", "season"):
            counts = pd.Series(np.asarray(ds[name].values)).value_counts().to_dict()
            lines.append(f"{name}: {counts}")
    else:
        resolution = abs(ds.rio.transform().a)
        # bounds to a tenth of a pixel: 0.1 m at 3 m, 1e-6 degrees at 2.7e-5 degrees
        digits = max(0, math.ceil(-math.log10(resolution or 1))) + 1
        lines.append(
            f"scene: {ds.sizes['y']}x{ds.sizes['x']} px at {resolution:g} "
            f"{_unit(ds.rio.crs)}; CRS {ds.rio.crs}; "
            f"bounds {tuple(round(b, digits) for b in ds.rio.bounds())}"
        )
    lines.append(layout(ds).to_string())
    if stats:
        # a land-cover class the scene lacks is noise; a cloud fraction of 0 is news
        lines.extend(
            f"{key}: {value:.4f}"
            for key, value in statistics(ds).items()
            if value or not key.startswith("landcover ")
        )
    return "\n".join(lines)


def _unit(crs: CRS | None) -> str:
    """The unit of the coordinates of ``crs``: degrees (geographic), m or its own."""
    if crs is None:
        return "(no CRS)"
    if crs.is_geographic:
        return "degrees"
    unit = crs.linear_units
    return "m" if unit in ("metre", "meter") else unit
