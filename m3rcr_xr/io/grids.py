"""The optical grid of a scene, which its other layers are put on.

:func:`check_same_grid` refuses a layer (or a file's grid) off it, :func:`oriented_like`
turns a layer stored with its rows in the other order onto it, and :func:`rechunk_like`
chunks a layer as it is chunked.
"""

from __future__ import annotations

from typing import Any

import rasterio
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

from ..exceptions import AlignmentError
from ..href import PathType


def rechunk_like(array: xr.DataArray, like: xr.DataArray) -> xr.DataArray:
    """``array`` (a layer on ``like``'s grid) with ``like``'s chunks along the dims they
    share, or in memory when ``like`` is."""
    if like.chunks is None:
        return array.compute()
    return array.chunk({dim: like.chunksizes[dim] for dim in array.dims if dim in like.dims})


def oriented_like(array: xr.DataArray, optical: xr.DataArray) -> xr.DataArray:
    """``array`` with its rows in the order of ``optical``'s: a mask stored south-up
    for a north-up scene (or the reverse) covers the same pixels, read backwards."""
    if array.sizes["y"] < 2 or optical.sizes["y"] < 2:
        return array
    if (array.y[-1] - array.y[0]) * (optical.y[-1] - optical.y[0]) >= 0:
        return array
    array = array.isel(y=slice(None, None, -1))
    return array.rio.write_transform(array.rio.transform(recalc=True))


def check_same_grid(
    array: xr.DataArray | GeoBox,
    optical: xr.DataArray | GeoBox,
    path: PathType,
    reference: str = "cloudy's",
) -> None:
    """Refuse ``array`` (a layer, or a file's grid) unless it has ``optical``'s CRS,
    shape and transform, ``path`` naming it and ``reference`` naming ``optical``."""
    (crs, shape, transform), (optical_crs, optical_shape, optical_transform) = (
        _grid(array),
        _grid(optical),
    )
    if crs != optical_crs:
        raise AlignmentError(f"{path}: CRS {crs} differs from {reference} {optical_crs}")
    if shape != optical_shape or not transform.almost_equals(optical_transform, precision=1e-6):
        raise AlignmentError(
            f"{path}: grid (shape {shape}, transform {tuple(transform)[:6]}) differs from "
            f"{reference} (shape {optical_shape}, transform {tuple(optical_transform)[:6]})"
        )


def _grid(layer: xr.DataArray | GeoBox) -> tuple[Any, tuple[int, ...], Affine]:
    """(CRS, shape, transform) of a layer (y, x) or of a grid, its CRS as rioxarray's."""
    if isinstance(layer, GeoBox):
        crs = None if layer.crs is None else rasterio.crs.CRS.from_wkt(layer.crs.to_wkt())
        return crs, tuple(layer.shape), layer.transform
    return layer.rio.crs, layer.shape, layer.rio.transform()
