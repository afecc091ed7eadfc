"""Put the 10 m layers (SAR, land cover) onto the 3 m optical grid.

Two ways, chosen by ``align=``:

``"coords"`` (default)
    Each optical pixel centre takes the value of the coarse pixel that contains it,
    found from the coordinates. In the same CRS this is an index computation, which
    stays lazy on Dask arrays whatever the scene size. Where the CRS differs the layer
    is reprojected with odc-geo's ``xr_reproject`` (nearest), which is lazy too
    (rioxarray's ``reproject`` is eager: rioxarray#119, #189).
``"shape"``
    The published M3R-CR loader: nearest resampling of the array to the optical
    shape, ignoring coordinates (and so the 1-2 m offset between the grids).

Pixels of the optical grid outside the coarse layer become ``fill`` (NaN for SAR,
0 = nodata for land cover).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal, TypeVar

import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine

from .exceptions import AlignmentError, UsageError, argument

XarrayT = TypeVar("XarrayT", xr.DataArray, xr.Dataset)

AlignMethod = Literal["coords", "shape"]


def check_north_up(transform: Affine, what: str = "grid") -> None:
    """Raise :class:`AlignmentError` for a rotated or sheared grid.

    Such a grid has no 1-D ``x``/``y`` pixel-centre coordinates (rioxarray then gives
    pixel indices, which must never be taken for metres). It is refused rather than
    reprojected: warp it to a north-up grid first (``gdalwarp``).
    """
    if transform.b != 0 or transform.d != 0:
        raise AlignmentError(
            f"{what}: rotated or sheared grids are not supported (transform "
            f"{tuple(transform)[:6]}); warp it to a north-up grid first (gdalwarp)"
        )


def pixel_centers(transform: Affine, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the (y, x) pixel-center coordinates of a north-up grid.

    Examples
    --------
    >>> y, x = pixel_centers(Affine(10, 0, 500000, 0, -10, 4000000), 2, 3)
    >>> y.tolist(), x.tolist()
    ([3999995.0, 3999985.0], [500005.0, 500015.0, 500025.0])
    """
    check_north_up(transform)
    x = transform.c + (np.arange(width) + 0.5) * transform.a
    y = transform.f + (np.arange(height) + 0.5) * transform.e
    return y, x


def pixel_centres(transform: Affine, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Deprecated British spelling of :func:`pixel_centers`."""
    warnings.warn("pixel_centres is deprecated; use pixel_centers", FutureWarning, stacklevel=2)
    return pixel_centers(transform, height, width)


def containing_index(centres: np.ndarray, origin: float, step: float, size: int) -> np.ndarray:
    """Index of the coarse pixel (origin, step, size) that holds each centre; -1 outside.

    Centres up to half a coarse pixel beyond the layer's edge take its edge pixel: the
    M3R-CR grids are offset by a metre or two, and would otherwise lose a row or column.
    """
    position = (np.asarray(centres, dtype=np.float64) - origin) / step
    index = np.clip(np.floor(position), 0, size - 1).astype(np.int64)
    index[(position < -0.5) | (position >= size + 0.5)] = -1
    return index


def shape_index(coarse: int, fine: int) -> np.ndarray:
    """Nearest-neighbour index of a resampling by array shape (as GDAL does it)."""
    return np.floor((np.arange(fine) + 0.5) * coarse / fine).astype(np.int64)


def _take(
    layer: xr.DataArray, rows: np.ndarray, cols: np.ndarray, fill, target: xr.DataArray
) -> xr.DataArray:
    """Orthogonal take along y and x (-1 marks pixels outside the layer, which become
    ``fill``), lazily in the chunks of ``target`` when ``layer`` is on Dask."""
    if (rows < 0).all() or (cols < 0).all():
        raise AlignmentError(f"{_label(layer)}: does not overlap the optical grid")
    outside = bool((rows < 0).any() or (cols < 0).any())
    dtype = layer.dtype
    if outside and np.isnan(fill) and dtype.kind != "f":
        dtype = np.dtype("float64")
    data: Any
    if layer.chunks is None:
        data = _take_block(layer.values, rows, cols, fill, dtype)
    else:
        chunks = target.chunksizes if target.chunks is not None else {}
        row_chunks = chunks.get("y", (len(rows),))
        col_chunks = chunks.get("x", (len(cols),))
        data = _take_chunked(layer.data, rows, cols, fill, dtype, (row_chunks, col_chunks))
    dims = layer.dims
    coords = {
        name: c for name, c in layer.coords.items() if "y" not in c.dims and "x" not in c.dims
    }
    return xr.DataArray(data, dims=dims, coords=coords, name=layer.name, attrs=layer.attrs)


def _take_block(block: np.ndarray, rows: np.ndarray, cols: np.ndarray, fill, dtype) -> np.ndarray:
    """``block[..., rows, cols]`` (orthogonally), ``fill`` where an index is -1."""
    out = block[..., np.clip(rows, 0, None), :][..., np.clip(cols, 0, None)].astype(dtype)
    out[..., rows < 0, :] = fill
    out[..., cols < 0] = fill
    return out


def _take_chunked(
    data: da.Array, rows: np.ndarray, cols: np.ndarray, fill, dtype, chunks
) -> da.Array:
    """:func:`_take_block` per output chunk, each on the few coarse pixels it needs.

    Dask's own fancy indexing gives one output chunk per *source* chunk: a 10 m layer
    in one chunk becomes one 3 m chunk of the whole scene (11 times its size), split
    afterwards. Here each output chunk is made at its final size from its own window.
    """
    row_parts = np.split(rows, np.cumsum(chunks[0])[:-1])
    col_parts = np.split(cols, np.cumsum(chunks[1])[:-1])
    grid = []
    for r in row_parts:
        r0, r1 = _window(r)
        line = []
        for c in col_parts:
            c0, c1 = _window(c)
            # the window is small (a tenth of the output chunk): one chunk of it
            window = data[..., r0:r1, c0:c1]
            window = window.rechunk(window.shape, method="tasks")
            line.append(
                window.map_blocks(
                    _take_block,
                    np.where(r < 0, -1, r - r0),
                    np.where(c < 0, -1, c - c0),
                    fill,
                    dtype,
                    chunks=(*window.shape[:-2], len(r), len(c)),
                    dtype=dtype,
                )
            )
        grid.append(line)
    return da.block(grid)


def _window(index: np.ndarray) -> tuple[int, int]:
    """The slice of the coarse layer that holds ``index`` (-1 outside: not read)."""
    inside = index[index >= 0]
    if inside.size == 0:
        return 0, 1
    return int(inside.min()), int(inside.max()) + 1


def yx_dims(data: XarrayT) -> XarrayT:
    """``data`` with its grid's dims named ``y``, ``x``, as a scene has them: odc-geo and
    odc-stac name a geographic grid's dims ``latitude``, ``longitude``."""
    geographic = {"latitude": "y", "longitude": "x"}
    return data.rename({old: new for old, new in geographic.items() if old in data.dims})


def _reproject(layer: xr.DataArray, target: xr.DataArray, fill) -> xr.DataArray:
    """Reproject ``layer`` onto the grid of ``target`` with odc-geo (lazy on Dask)."""
    import odc.geo.xr  # noqa: F401 - registers the .odc accessor
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_reproject

    _check_overlap(layer, target)  # also proves the transform exists, before any work
    geobox = GeoBox(target.rio.shape, target.rio.transform(), target.rio.crs)
    out = yx_dims(xr_reproject(layer, geobox, resampling="nearest", dst_nodata=fill))
    return out.assign_coords(y=target["y"].values, x=target["x"].values)


def align_to(
    layer: xr.DataArray,
    target: xr.DataArray,
    *,
    method: AlignMethod = "coords",
    fill=np.nan,
    source: str | os.PathLike | None = None,
) -> xr.DataArray:
    """Put ``layer`` (y, x last, rioxarray georeference) onto the grid of ``target``.

    Parameters
    ----------
    layer
        The coarse layer, with ``y`` and ``x`` dims and a CRS (``layer.rio.crs``).
    target
        Anything on the optical grid (``y``, ``x`` pixel centres and a CRS).
    method
        ``"coords"``: by coordinates; ``"shape"``: by array shape (published loader).
    fill
        Value for optical pixels outside the layer.
    source
        The file ``layer`` was read from, for messages; default its
        ``encoding["source"]``.

    Returns
    -------
    xr.DataArray
        ``layer`` on the ``y``/``x`` coordinates of ``target``, lazy if ``layer`` is.
    """
    if source is not None:  # the messages name it (_label)
        layer = layer.copy(deep=False)
        layer.encoding["source"] = os.fspath(source)
    height, width = target.sizes["y"], target.sizes["x"]
    if method == "shape":
        rows = shape_index(layer.sizes["y"], height)
        cols = shape_index(layer.sizes["x"], width)
        out = layer.isel(y=rows, x=cols)
    elif method == "coords":
        if layer.rio.crs is None or target.rio.crs is None:
            raise AlignmentError(f"{_label(layer)}: no CRS; cannot align by coordinates")
        if layer.rio.crs != target.rio.crs:
            return _with_grid_of(_reproject(layer, target, fill), target)
        _check_overlap(layer, target)
        src = layer.rio.transform()
        rows = containing_index(target["y"].values, src.f, src.e, layer.sizes["y"])
        cols = containing_index(target["x"].values, src.c, src.a, layer.sizes["x"])
        out = _take(layer, rows, cols, fill, target)
    else:
        raise UsageError(f"{argument('align', method)}: must be 'coords' or 'shape'")
    return _with_grid_of(out.assign_coords(y=target["y"].values, x=target["x"].values), target)


def _with_grid_of(out: xr.DataArray, target: xr.DataArray) -> xr.DataArray:
    """``out`` (on ``target``'s pixels) georeferenced as ``target``: the layer's own
    grid mapping (its CRS and 10 m transform) would tell rioxarray a wrong transform."""
    mapping = out.rio.grid_mapping
    out = out.drop_vars([mapping] if mapping in out.coords else [])
    out.attrs.pop("grid_mapping", None)
    out.encoding.pop("grid_mapping", None)
    if target.rio.crs is None:
        return out
    return out.rio.write_crs(target.rio.crs).rio.write_transform(target.rio.transform())


def _bounds_in(layer: xr.DataArray, crs) -> tuple[float, float, float, float]:
    """Bounds of ``layer`` in ``crs``; AlignmentError when no transform exists."""
    from rasterio.warp import transform_bounds

    bounds = layer.rio.bounds()
    if layer.rio.crs == crs:
        return bounds
    try:
        moved = transform_bounds(layer.rio.crs, crs, *bounds)
    except Exception as err:  # rasterio/PROJ raise several types for impossible transforms
        raise AlignmentError(
            f"{_label(layer)}: cannot reproject from {layer.rio.crs} to {crs}: {err}"
        ) from err
    if not np.all(np.isfinite(moved)):
        raise AlignmentError(f"{_label(layer)}: cannot reproject from {layer.rio.crs} to {crs}")
    return moved


def _label(layer: xr.DataArray) -> str:
    """How a message names ``layer``: its name, and its file where it was read from one
    (``encoding["source"]``), so that the file at fault is known in a collection."""
    name = layer.name or "layer"
    source = layer.encoding.get("source")
    return f"{name} ({source})" if isinstance(source, str | os.PathLike) else str(name)


def _check_overlap(layer: xr.DataArray, target: xr.DataArray) -> None:
    left, bottom, right, top = _bounds_in(layer, target.rio.crs)
    t_left, t_bottom, t_right, t_top = target.rio.bounds()
    if left >= t_right or right <= t_left or bottom >= t_top or top <= t_bottom:
        extent = f"its extent {(left, bottom, right, top)}"
        if layer.rio.crs != target.rio.crs:  # moved into the optical CRS: say where it is
            own = tuple(layer.rio.bounds())
            extent += f" in the optical {target.rio.crs} ({own} in its {layer.rio.crs})"
        raise AlignmentError(
            f"{_label(layer)}: does not overlap the optical image: {extent}, the optical "
            f"extent {(t_left, t_bottom, t_right, t_top)}"
        )


def fill_nan_with_mean(
    sar: xr.DataArray, *, per_band: bool = True, covered: xr.DataArray | None = None
) -> xr.DataArray:
    """Fill holes with the mean of the valid values, as the published loader does.

    Holes are NaN and +-inf alike: an infinite value is no measurement, and would
    otherwise make the mean, and so every filled hole, infinite. The mean is taken over
    the finite values only. The published loader uses one mean over all bands
    (``per_band=False``) of the SAR once resampled to the optical shape; by default each
    polarization takes its own mean. Lazy on Dask arrays. The choice is recorded in
    ``attrs["nan_fill"]``.

    With ``covered`` (boolean, y/x: where the layer has data) only the holes there are
    filled, with the mean over it; every pixel outside it is NaN, never a mean.

    Examples
    --------
    >>> sar = xr.DataArray(np.array([[-10.0, np.nan, -20.0, np.nan]]), dims=("y", "x"))
    >>> covered = xr.DataArray(np.array([[True, True, True, False]]), dims=("y", "x"))
    >>> fill_nan_with_mean(sar, covered=covered).values
    array([[-10., -15., -20.,  nan]])
    """
    dims = ["y", "x"] if per_band else None
    finite = sar.where(np.isfinite(sar))
    if covered is not None:
        finite = finite.where(covered)
    filled = finite.fillna(finite.mean(dim=dims, skipna=True))
    if covered is not None:
        filled = filled.where(covered)
    filled.attrs = {**sar.attrs, "nan_fill": "band mean" if per_band else "image mean"}
    return filled
