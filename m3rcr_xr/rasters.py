"""Reading one raster: a GeoTIFF opened lazily as (band, y, x), checked as it opens.

:func:`open_raster` opens every GeoTIFF the readers read (the layers of
:func:`m3rcr_xr.open_quartet`, a UDM2 of :func:`m3rcr_xr.open_udm2`); :mod:`m3rcr_xr.stac`
checks its assets' headers with :func:`check_header` and :func:`check_readable`. Only
the header is read at open time, plus one block (the last) to catch a truncated file
early.

What an open reads is bounded: a raster whose declared size is beyond the
``max_raster_bytes`` option, or whose blocks (tiles or strips) are beyond
:data:`MAX_BLOCK_BYTES`, is refused from its header, before any pixel is read (a
file of a few hundred bytes may declare a 200000 x 200000 raster in one strip).

Values are read as stored, never wrapped around:

- a scale/offset in the header (value = raw x scale + offset) is refused, unless the
  caller asks for it (:func:`header_scaling`, :func:`apply_scaling`); optical values
  may be stored only as reflectance x10000 (:func:`check_reflectance`);
- bands are taken by position, or by name where the file's band descriptions name
  them (:func:`band_order`);
- optical values become uint16 exactly (NaN and the declared nodata become 0), or
  raise :class:`InputFileError` naming the file and the values found, chunk by chunk
  as they are read (:func:`as_uint16`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from . import href
from .align import check_north_up
from .exceptions import InputFileError, MissingFileError, UsageError
from .href import PathType
from .options import OPTIONS
from .schema import OPTICAL_NODATA

#: largest block (tile or strip, all bands) a raster may have, in bytes. Any read decodes
#: whole blocks, so one block bounds the memory of the open-time check and of each chunk
#: read later. GDAL writes 8 KiB strips and 256 x 256 tiles; a file in one huge strip
#: can be retiled with ``gdal_translate -co TILED=YES``.
MAX_BLOCK_BYTES = 256 * 2**20
_UINT16_MAX = int(np.iinfo(np.uint16).max)


def spatial_chunks(chunks: Any) -> Any:
    """Translate the user's ``chunks`` into rioxarray's form (all bands in one chunk)."""
    if chunks is None:
        return None
    if chunks == "auto":
        chunks = OPTIONS["scene_chunk"]
    if isinstance(chunks, int) and not isinstance(chunks, bool):
        return {"band": -1, "y": chunks, "x": chunks}
    if isinstance(chunks, Mapping):
        return {"band": -1, **{k: v for k, v in chunks.items() if k in ("y", "x")}}
    raise UsageError(f"chunks: expected 'auto', an int, a dict or None, not {chunks!r}")


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"


def check_header(path: PathType, name: str, src: rasterio.DatasetReader) -> None:
    """Refuse, from the header alone, a raster whose reads could not be bounded.

    The declared size (width x height x bands x bytes per value) must be within the
    ``max_raster_bytes`` option, one block of all bands within :data:`MAX_BLOCK_BYTES`,
    and the grid north-up (a rotated grid has no 1-D ``x``/``y`` coordinates).

    GDAL may present one huge DEFLATE strip as one-row blocks: each read then inflates
    the strip up to that row, in bounded memory; ``max_raster_bytes`` bounds that work.
    """
    itemsize = max(np.dtype(dtype).itemsize for dtype in src.dtypes)
    size = src.width * src.height * src.count * itemsize
    limit = OPTIONS["max_raster_bytes"]
    if size > limit:
        raise InputFileError(
            f"{path}: {name} declares {src.width} x {src.height} pixels x {src.count} "
            f"band(s) of {src.dtypes[0]} ({_gib(size)}), beyond the max_raster_bytes "
            f"option ({_gib(limit)}; raise it with m3rcr_xr.set_options to open it)"
        )
    block_h, block_w = src.block_shapes[0]
    block = block_h * block_w * src.count * itemsize
    if block > MAX_BLOCK_BYTES:
        raise InputFileError(
            f"{path}: {name} is stored in blocks of {block_h} x {block_w} pixels "
            f"({_gib(block)} with all bands), beyond {_gib(MAX_BLOCK_BYTES)}: any read "
            "would decode a whole block; retile it (gdal_translate -co TILED=YES)"
        )
    check_north_up(src.transform, f"{path}: {name}")


def check_readable(src: rasterio.DatasetReader) -> None:
    """Read the last block (bounded by :func:`check_header`): a truncated GeoTIFF fails
    here, not in the middle of a job."""
    block_h, block_w = src.block_shapes[0]
    row = max(src.height - block_h, 0)
    col = max(src.width - block_w, 0)
    window = rasterio.windows.Window(col, row, min(block_w, src.width), min(block_h, src.height))
    src.read(window=window)


def open_raster(
    path: PathType,
    name: str,
    count: int,
    chunks: Any = "auto",
    *,
    bands: Sequence[str] | None = None,
    scaled: bool = False,
) -> xr.DataArray:
    """Open one GeoTIFF lazily as (band, y, x), after checking that it is whole.

    ``path`` may be a remote href (``https://``, ``s3://``), read by GDAL.

    With ``bands`` (the names expected, in the library's order), a file whose band
    descriptions name exactly these bands, in any order and any case, has its bands put
    in that order (lazily); one without descriptions, or describing its bands by other
    names ("Band 1"), is taken by position (see :func:`band_order`).

    The values are read raw. A scale/offset in the header (value = raw x scale + offset)
    other than (1, 0) is refused, unless ``scaled``: then it is kept, in band order, as
    ``attrs["scales"]`` and ``attrs["offsets"]`` (rioxarray's names), for the caller to
    apply or check (:func:`header_scaling`).

    Raises
    ------
    MissingFileError, InputFileError
        The file is missing, unreadable or truncated, STAC JSON (which GDAL opens as
        the assets it names), or has not ``count`` bands (none: no raster); its
        declared size or its blocks are beyond the limits of :func:`check_header`; its
        band descriptions name ``bands`` but not each exactly once; without ``scaled``,
        its header declares a scale or offset.
    AccessDeniedError
        A server refused access to it (HTTP 401, 403: for a presigned URL, its signature
        may have expired).
    AlignmentError
        Its grid is rotated or sheared.

    Notes
    -----
    The declared nodata, if any, is kept as ``attrs["_FillValue"]`` (``array.rio.nodata``).
    """
    path = href.as_href(path)
    if not href.is_remote(path) and not Path(path).is_file():
        raise MissingFileError(f"{path}: {name} file does not exist")
    try:
        with quietly_opened(path) as src:
            _check_count(path, name, src, count)
            check_header(path, name, src)
            check_readable(src)
            order = band_order(src.descriptions, bands, f"{path}: {name}")
            scaling = _file_scaling(src, order)
        if scaling and not scaled:
            scales, offsets = zip(*scaling, strict=True)
            raise InputFileError(
                f"{path}: {name} declares scale {_listed(scales)}, offset {_listed(offsets)} "
                f"in its header (value = raw x scale + offset); {name} values are read as "
                "stored, so a scaled file is refused rather than misread"
            )
        with _per_band_scaling_expected(scaling):
            array = rioxarray.open_rasterio(
                path, chunks=spatial_chunks(chunks), mask_and_scale=False, lock=False
            )
    except RasterioError as err:
        href.raise_if_refused(path, err, name)
        what = "cannot be read" if href.is_remote(path) else "is not a readable GeoTIFF"
        raise InputFileError(f"{path}: {name} {what} ({err})") from href.cause(err)
    assert isinstance(array, xr.DataArray)  # _check_count refused containers of subdatasets
    if order is not None:
        array = array.isel(band=order)
    array.attrs = {key: value for key, value in array.attrs.items() if key == "_FillValue"}
    if scaling:
        array.attrs["scales"], array.attrs["offsets"] = zip(*scaling, strict=True)
    array.encoding = {"source": str(path)}  # xarray's convention; see identity.sources
    array.name = name
    return array


def quietly_opened(path: PathType) -> rasterio.DatasetReader:
    """``rasterio.open(path)`` without its ``NotGeoreferencedWarning``: a file GDAL opens
    with no bands (STAC JSON of several assets) has no grid either, and is refused by
    :func:`_check_count`; of a raster with bands and no grid, rioxarray warns as it
    opens it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


#: the layers :func:`m3rcr_xr.open_stac` reads from STAC items
STAC_LAYERS = ("cloudy", "sar", "landcover")
#: GDAL's drivers of STAC JSON: an item opens as its asset, or with no bands for several
STAC_DRIVERS = ("STACIT", "STACTA")


def _check_count(path: PathType, name: str, src: rasterio.DatasetReader, count: int) -> None:
    """Refuse a file of ``name`` that is not a raster of ``count`` bands: STAC JSON
    (which GDAL opens, through the assets it names), or a file with no bands at all (a
    container of subdatasets)."""
    if src.driver in STAC_DRIVERS:
        where = (
            "; STAC items are read only with the optical layer as STAC items too "
            "(m3rcr_xr.open_stac; m3rcr ingest ITEMS.json DEST): here a GeoTIFF is expected"
        )
        raise InputFileError(
            f"{path}: {name} is STAC JSON, not a raster{where if name in STAC_LAYERS else ''}"
        )
    if src.count == 0:
        held = src.subdatasets
        which = f" but {len(held)} subdatasets (give one, such as {held[0]})" if held else ""
        raise InputFileError(f"{path}: {name} has no bands{which}: not one raster")
    if src.count != count:
        raise InputFileError(f"{path}: {name} has {src.count} band(s), expected {count}")


def _file_scaling(
    src: rasterio.DatasetReader, order: list[int] | None
) -> list[tuple[float, float]]:
    """The header's (scale, offset) of each band, in ``order``; ``[]`` where all are (1, 0)."""
    scaling = [(float(s), float(o)) for s, o in zip(src.scales, src.offsets, strict=True)]
    if all(pair == (1.0, 0.0) for pair in scaling):
        return []
    return scaling if order is None else [scaling[index] for index in order]


@contextmanager
def _per_band_scaling_expected(scaling: Sequence[tuple[float, float]]) -> Iterator[None]:
    """Silence rioxarray's warning that bands differ in scale or offset, which
    :func:`open_raster` keeps band by band (the warnings filters are process-wide:
    changed only for such a file)."""
    if len(set(scaling)) < 2:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "(Scales|Offsets) differ across bands")
        yield


def _listed(values: Sequence[float]) -> str:
    """One value if all are equal, else each: ``0.01`` or ``(0.01, 1)``."""
    if len(set(values)) == 1:
        return f"{values[0]:g}"
    return f"({', '.join(f'{value:g}' for value in values)})"


def header_scaling(array: xr.DataArray) -> list[tuple[float, float]]:
    """The (scale, offset) of each band of a raster opened with ``scaled=True``
    (:func:`open_raster`); ``[]`` where its header declares none."""
    return list(zip(array.attrs.get("scales", ()), array.attrs.get("offsets", ()), strict=True))


def apply_scaling(
    array: xr.DataArray, scaling: Sequence[tuple[float, float]], dim: str
) -> xr.DataArray:
    """``array`` as ``raw x scale + offset`` in float32, with the i-th (scale, offset)
    of ``scaling`` along ``dim``; unchanged where all are (1, 0) (or none given)."""
    if all(tuple(pair) == (1, 0) for pair in scaling):
        return array
    scale, offset = (
        xr.DataArray(np.asarray(values, "float32"), dims=dim)
        for values in zip(*scaling, strict=True)
    )
    return array.astype("float32") * scale + offset


def is_reflectance_x10000(scale: float, offset: float) -> bool:
    """Whether values stored with this scale/offset are reflectance x10000 as stored:
    scale 1 (the values themselves) or 0.0001 (they are reflectance once scaled),
    offset 0."""
    return offset == 0 and (math.isclose(scale, 1) or math.isclose(scale, 1e-4))


def check_reflectance(scale: float, offset: float, what: str, where: str) -> None:
    """Refuse optical values stored with a scale/offset that make them anything but
    reflectance x10000 (:func:`is_reflectance_x10000`): the library would otherwise
    guess at their meaning; ``what`` and ``where`` name the file and the metadata."""
    if not is_reflectance_x10000(scale, offset):
        raise InputFileError(
            f"{what} scale {scale:g}, offset {offset:g} {where} (value = raw x scale + "
            "offset); the optical layer must store reflectance x10000 (scale 1 or 0.0001, "
            "offset 0)"
        )


def band_order(
    descriptions: Sequence[str | None], bands: Sequence[str] | None, source: str
) -> list[int] | None:
    """Where each of ``bands`` lies in a file whose bands are ``descriptions``.

    ``None`` (take the bands by position) when there is nothing to expect, when the
    descriptions name none of ``bands`` (missing, or generic like "Band 1": the M3R-CR
    files have none), or when they name them in the library's order already.

    Raises
    ------
    InputFileError
        The descriptions name some of ``bands`` but not each exactly once: which band is
        which cannot be told, and taking them by position could label red as blue.

    Examples
    --------
    >>> band_order(["VH", "VV"], ["VV", "VH"], "s1.tif: sar")
    [1, 0]
    >>> band_order([None, None], ["VV", "VH"], "s1.tif: sar") is None
    True
    """
    if bands is None or not names_any(descriptions, bands):
        return None
    names = _band_labels(descriptions)
    expected = [band.lower() for band in bands]
    if sorted(names) != sorted(expected):
        raise InputFileError(
            f"{source} band descriptions {tuple(descriptions)} do not name each of "
            f"{tuple(bands)} exactly once; cannot tell which band is which"
        )
    order = [names.index(band) for band in expected]
    return None if order == list(range(len(order))) else order


def names_any(descriptions: Sequence[str | None], bands: Sequence[str]) -> bool:
    """Whether ``descriptions`` name any of ``bands`` (any case): then :func:`band_order`
    goes by them, else by position.

    Examples
    --------
    >>> names_any(["Band 1", "Band 2"], ["VV", "VH"]), names_any(["vh", None], ["VV", "VH"])
    (False, True)
    """
    return bool(set(_band_labels(descriptions)) & {band.lower() for band in bands})


def _band_labels(descriptions: Sequence[str | None]) -> list[str]:
    return [(text or "").strip().lower() for text in descriptions]


def map_blocks(func: Any, array: xr.DataArray, dtype: str, **kwargs: Any) -> xr.DataArray:
    """``func(block, **kwargs)`` on each chunk, lazily on Dask; keeps coords, drops attrs."""
    return xr.apply_ufunc(
        func, array, kwargs=kwargs, dask="parallelized", output_dtypes=[np.dtype(dtype)]
    )


def _exact_uint16(values: np.ndarray, source: str, nodata: float | None) -> np.ndarray:
    """Optical values as uint16, exactly; :class:`InputFileError` for any other value.

    NaN and the declared ``nodata`` become ``OPTICAL_NODATA`` (0). Every other value
    must be a whole number in [0, 65535]: nothing is wrapped around (int16 -4630 is not
    61066), clipped or rounded. Runs on one chunk, so the error names the values found
    in the chunk that held them.
    """
    missing = np.isnan(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        missing |= values == nodata
    bad = (values < 0) | (values > _UINT16_MAX)
    if values.dtype.kind == "f":
        bad |= values != np.floor(values)
    bad &= ~missing
    if bad.any():
        wrong = values[bad]
        raise InputFileError(
            f"{source}: {wrong.size} value(s) are not whole numbers in [0, {_UINT16_MAX}] "
            f"(found {wrong.min()} to {wrong.max()}); expected uint16 reflectance x10000, "
            "and values are never wrapped around or clipped"
        )
    return np.where(missing, OPTICAL_NODATA, values).astype(np.uint16)


def as_uint16(array: xr.DataArray, path: PathType, name: str) -> xr.DataArray:
    """The optical layer as uint16 reflectance x10000, checked chunk by chunk when read.

    uint8 and uint16 need no check (nor a task) unless a nodata other than 0 is declared.
    """
    if array.dtype.kind not in "uif":
        raise InputFileError(f"{path}: {name} has dtype {array.dtype}, expected uint16")
    nodata = array.attrs.get("_FillValue")
    if array.dtype in (np.uint8, np.uint16) and nodata in (None, OPTICAL_NODATA):
        return array.astype(np.uint16)
    source = f"{path}: {name} (dtype {array.dtype})"
    return map_blocks(_exact_uint16, array, "uint16", source=source, nodata=nodata)
