"""The cloud mask of a quartet: a boolean ``.npy`` or GeoTIFF on the optical grid, a
Planet UDM2, or an estimate from the optical bands (:data:`ESTIMATE`).

The masks themselves (UDM2 classes, the spectral estimate) are made by
:mod:`m3rcr_xr.cloudmask`; this module reads a quartet's mask file and checks it against
the optical layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .. import href
from ..cloudmask import (
    estimate_cloudmask,
    is_udm2,
    mask_nodata,
    open_udm2,
    udm2_classes_for,
    udm2_cloudmask,
    udm2_nodata,
    warn_if_estimated,
)
from ..exceptions import InputFileError, MissingFileError
from ..href import PathType
from ..npy import NpyFile, open_npy
from ..rasters import open_raster
from .grids import check_same_grid, oriented_like

#: ``open_quartet(cloudmask=ESTIMATE)`` estimates the mask from the optical bands
ESTIMATE = "estimate"


def read_cloudmask(
    path: PathType,
    shape: tuple[int, int],
    like: xr.DataArray | None = None,
    chunks: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> np.ndarray | da.Array:
    """Read a boolean cloud mask from ``.npy`` (never unpickling) or a GeoTIFF.

    Shape and dtype are checked from the header, before the values are read: a file
    that declares a huge array is refused without reading it. A GeoTIFF with a CRS must
    lie on the grid of ``like`` (the optical layer), rows in either order; one without,
    like a ``.npy``, is taken pixel for pixel.

    With ``chunks`` (Dask's ``(row chunks, column chunks)``, e.g. the optical layer's),
    nothing more is read: a lazy Dask array comes back, each chunk read and made boolean
    when computed, its graph holding the path, never the values. Without, the mask is
    read into memory.

    Raises
    ------
    AlignmentError
        A georeferenced GeoTIFF in another CRS or on another grid than ``like``.
    """
    path = href.as_href(path)
    if not href.is_file(path, "cloudmask"):
        raise MissingFileError(f"{path}: cloudmask file does not exist")
    if href.name_of(path).suffix.lower() == ".npy":
        npy = _open_npy(path)
        _check_mask(path, npy, shape)
        if npy.truncated:
            raise InputFileError(
                f"{path}: cloudmask is not a readable .npy file (its header declares "
                f"{npy.nbytes} bytes of data, it holds {max(npy.size - npy.offset, 0)})"
            )
        mask: Any = da.from_array(npy, chunks=chunks or -1, fancy=False, asarray=True)
    else:
        # chunk sizes, not tuples, which would not fit a mask of the wrong shape
        spatial = None if chunks is None else {"y": max(chunks[0]), "x": max(chunks[1])}
        raster = open_raster(path, "cloudmask", 1, chunks=spatial).isel(band=0, drop=True)
        if like is not None and raster.rio.crs is not None and raster.shape == shape:
            raster = oriented_like(raster, like)  # lazily: rows read backwards
            check_same_grid(raster, like, path)
        _check_mask(path, raster, shape)
        mask = raster.data
    if chunks is None:
        return np.asarray(mask).astype(bool)
    return mask.rechunk(chunks).astype(bool)


def _open_npy(path: str | Path) -> NpyFile:
    """The header of a ``.npy`` cloud mask; an object array (which needs pickle) refused."""
    unreadable: tuple[type[Exception], ...] = (*href.read_errors(), EOFError)
    try:
        return open_npy(path)
    except ValueError as err:
        raise InputFileError(f"{path}: cloudmask is not a plain array ({err})") from err
    except unreadable as err:
        href.raise_if_refused(path, err, "cloudmask")
        raise InputFileError(
            f"{path}: cloudmask is not a readable .npy file ({err})"
        ) from href.cause(err)


def _check_mask(path: PathType, mask: Any, shape: tuple[int, int]) -> None:
    if mask.shape != shape:
        raise InputFileError(f"{path}: cloudmask has shape {mask.shape}, optical grid is {shape}")
    if mask.dtype.kind not in "biu":
        raise InputFileError(f"{path}: cloudmask has dtype {mask.dtype}, expected bool")


def cloudmask_layer(
    source: PathType, layers: dict[str, xr.DataArray], chunks: Any, classes: Sequence[str] | None
) -> xr.DataArray:
    """The cloud mask from ``source``: ``"estimate"``, a Planet UDM2 (whose unusable
    pixels become nodata 0 in ``layers["cloudy"]``), a ``.npy`` or a 1-band GeoTIFF."""
    optical = layers["cloudy"]
    if source == ESTIMATE:
        udm2_classes_for(classes, "the cloud mask is estimated")
        mask = estimate_cloudmask(optical)
        warn_if_estimated(mask, "open_quartet", stacklevel=4)
        return mask
    if Path(source).suffix.lower() != ".npy" and is_udm2(source):
        classes = udm2_classes_for(classes)
        udm2 = oriented_like(open_udm2(source, chunks=chunks), optical)
        check_same_grid(udm2.isel(band=0), optical.isel(band=0), source)
        layers["cloudy"] = mask_nodata(optical, udm2_nodata(udm2))
        return udm2_cloudmask(udm2, classes)
    udm2_classes_for(classes, f"{source} is not one (8 bands of uint8)")
    grid = optical.isel(band=0)
    shape = (grid.sizes["y"], grid.sizes["x"])
    blocks = None if grid.chunks is None else grid.data.chunks
    values = read_cloudmask(source, shape, like=grid, chunks=blocks)
    return xr.DataArray(values, dims=("y", "x"), attrs={"long_name": "cloud mask, True = cloud"})
