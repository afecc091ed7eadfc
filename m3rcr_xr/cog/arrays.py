"""Arrays as a GeoTIFF takes them: the variable to write, its nodata (encoded as
``rio.to_raster`` writes it), its bands along one ``band`` dim, a compression that keeps
its values, and a collection's patches as scenes, with their file names."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import dask
import numpy as np
import xarray as xr
from dask.base import is_dask_collection

from ..exceptions import SchemaError, StoreError, UnsafePathError, UsageError, argument
from ..schema import check_patch_ids, is_collection, repeated

#: file suffix of the GeoTIFFs a collection is written to
SUFFIX = ".tif"


def array_to_write(obj: xr.Dataset | xr.DataArray, variable: str | None) -> xr.DataArray:
    """The DataArray to write: ``obj`` itself, or its ``variable`` (default ``decloud``),
    its coordinates in memory (:func:`_coordinates_loaded`)."""
    if isinstance(obj, xr.DataArray):
        return _coordinates_loaded(obj)
    name = variable or "decloud"
    if name not in obj.data_vars:
        raise UsageError(
            f"{argument('variable', name)}: not a variable of the dataset "
            f"(it has {sorted(map(str, obj.data_vars))})"
        )
    return _coordinates_loaded(obj[name])


def _coordinates_loaded(array: xr.DataArray) -> xr.DataArray:
    """``array`` with its Dask-backed coordinates (a collection's ``y``, ``x`` and
    ``epsg`` after ``xr.open_zarr`` or ``.chunk()``) computed together, in one graph:
    the record of what a file is written from, the patches' names and their grids each
    read them, which computed each coordinate again each time."""
    lazy = [name for name, coord in array.coords.items() if coord.chunks is not None]
    if not lazy:
        return array
    loaded = dask.compute(*(array.coords[name].variable for name in lazy))
    return array.assign_coords(dict(zip(lazy, loaded, strict=True)))


def with_nodata(array: xr.DataArray) -> xr.DataArray:
    """``array`` with its nodata in ``encoding`` (the rioxarray way): the one it
    declares (rioxarray's, else this library's ``attrs["nodata"]``), else NaN for
    floats; integers without one get none. An encoded nodata is written as
    ``rio.to_raster`` writes it: NaN filled with it, and the dtype of the encoding (a
    masked read of uint16 is uint16 again), see :func:`_encoded`. :class:`UsageError`
    for a nodata that does not fit the array's dtype."""
    try:  # rioxarray casts a declared nodata to the dtype as it reads it
        nodata = array.rio.encoded_nodata
        if nodata is not None:
            return _encoded(array, nodata).rio.write_nodata(nodata, encoded=True)
        for fallback in (array.rio.nodata, array.attrs.get("nodata")):
            nodata = fallback if nodata is None else nodata
        if nodata is None and array.dtype.kind == "f":
            nodata = np.nan
        return array if nodata is None else array.rio.write_nodata(nodata, encoded=True)
    except (OverflowError, ValueError) as err:
        raise UsageError(
            f"{array.name or 'array'}: its nodata is no value of its dtype {array.dtype} ({err})"
        ) from None


def _encoded(array: xr.DataArray, nodata: float) -> xr.DataArray:
    """``array`` (decoded: nodata as NaN) with NaN as ``nodata`` again, in the integer
    dtype of its encoding (``encoding["dtype"]``) where it has one and no scale or
    offset: the pixels carry the nodata the file declares, and GDAL masks them.
    Lazy; a block with a value that dtype cannot hold is a :class:`UsageError`."""
    if array.dtype.kind != "f" or np.isnan(nodata):
        return array
    filled = array.fillna(nodata)
    dtype = np.dtype(array.encoding.get("dtype", array.dtype))
    scaled = (array.encoding.get("scale_factor", 1), array.encoding.get("add_offset", 0))
    if dtype.kind not in "iu" or scaled != (1, 0):
        return filled
    cast = partial(_exactly, dtype=dtype, name=str(array.name or "array"))
    data = filled.data
    data = data.map_blocks(cast, dtype=dtype) if is_dask_collection(data) else cast(data)
    return filled.copy(data=data)


def _exactly(block: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """``block`` as ``dtype``, or :class:`UsageError` for a value it changes."""
    cast = block.astype(dtype)
    if not np.array_equal(cast, block):
        raise UsageError(
            f"{name}: has values its encoding's dtype {dtype} cannot hold; drop "
            f'encoding["dtype"] to write them as {block.dtype}'
        )
    return cast


#: TIFF codecs that keep every value (no ``none``: odc-geo cannot write a COG uncompressed)
LOSSLESS = ("deflate", "zstd", "lzw", "lzma", "packbits")
#: lossy codecs, and the band counts they take, for 8-bit data only
LOSSY_8BIT = {"jpeg": (1, 3), "webp": (3, 4)}


def writable(array: xr.DataArray, compress: str, overview_resampling: str) -> xr.DataArray:
    """``array`` as a COG takes it, or :class:`UsageError` before any work: a CRS; its
    bands as a ``band`` dim (:func:`_with_band_dim`); bool as uint8 (TIFF has no
    one-byte bool: it would be written as bits, and read back scrambled); no
    ``long_name`` but one name a band (see :func:`_band_names_kept`); a ``compress``
    that keeps its values; an ``overview_resampling`` GDAL knows."""
    from odc.geo.warp import resampling_s2rio

    if not is_collection(array) and array.rio.crs is None:
        raise UsageError(f"{array.name or 'array'}: has no CRS; set one with rio.write_crs")
    array = _with_band_dim(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    array = _band_names_kept(array)
    codec = str(compress).lower()
    bands = array.sizes.get("band", 1)
    if codec not in LOSSLESS and not (
        array.dtype == np.uint8 and bands in LOSSY_8BIT.get(codec, ())
    ):
        what = (
            f"not for {bands} band(s) of {array.dtype}"
            if codec in LOSSY_8BIT
            else "not a compression to_cog writes"
        )
        raise UsageError(
            f"{argument('compress', compress)}: {what}; use one of {', '.join(LOSSLESS)} "
            "(jpeg: 1 or 3 bands of uint8, webp: 3 or 4; none: odc-geo writes no "
            "uncompressed COG)"
        )
    try:
        resampling_s2rio(overview_resampling)
    except ValueError:
        raise UsageError(
            f"{argument('overview_resampling', overview_resampling)}: not a resampling "
            "method (nearest, average, bilinear, mode...)"
        ) from None
    return array


def _with_band_dim(array: xr.DataArray) -> xr.DataArray:
    """``array`` with its bands as the ``band`` dim odc-geo writes as bands (and names
    from a string coordinate): a scalar ``band`` coordinate becomes one band, and another
    dim than ``patch``, ``y`` and ``x`` is the bands (a scene's ``sar``: ``polarization``,
    VV and VH). odc-geo took such a dim for bands but named them from ``long_name``.

    Raises
    ------
    UsageError
        No ``y`` or ``x`` dim, or more than one other dim: not an image of bands.
    """
    bands = [dim for dim in array.dims if dim not in ("patch", "y", "x")]
    if "band" in array.coords and "band" not in array.dims:
        bands.append("band")
    spatial = {"y", "x"} <= set(array.dims)
    if not spatial or len(bands) > 1:
        what = f"bands along {' and '.join(map(str, bands))}" if spatial else "not both y and x"
        raise UsageError(
            f"{array.name or 'array'}: dims {array.dims}, {what}; to_cog writes "
            "([patch,] [band,] y, x), the bands along one dim of any name (select or "
            "stack the others)"
        )
    if "band" in array.coords and "band" not in array.dims:
        return array.expand_dims("band", axis=array.dims.index("y"))
    return array.rename({bands[0]: "band"}) if bands and bands[0] != "band" else array


def _band_names_kept(array: xr.DataArray) -> xr.DataArray:
    """``array`` without a ``long_name`` that is not one name a band (rioxarray reads a
    GeoTIFF's name tag into a string ``long_name``, which odc-geo would take for the
    names of the bands, and refuse for another count of bands). Band descriptions come
    from a string ``band`` coordinate, else from such a ``long_name``."""
    long_name = array.attrs.get("long_name")
    if long_name is None:
        return array
    names = np.atleast_1d(np.asarray(long_name, dtype=object))
    if names.ndim == 1 and names.size == array.sizes.get("band", 1):
        return array
    kept = array.copy(deep=False)
    kept.attrs = {key: value for key, value in array.attrs.items() if key != "long_name"}
    return kept


def patch_scene(collection: xr.DataArray, index: int) -> xr.DataArray:
    """Patch ``index`` of a collection as a scene: its own grid and CRS (``epsg``).

    Raises
    ------
    SchemaError
        Its ``epsg`` is no EPSG code: -1, which earlier versions recorded for a CRS
        without one (a store written then has lost that patch's georeference).
    """
    patch = collection.isel(patch=index)
    crs = int(patch["epsg"])
    if crs <= 0:
        raise SchemaError(
            f"patch {patch['patch'].item()}: epsg {crs} is no EPSG code, so its CRS is "
            "unknown; a collection records each patch's CRS as an EPSG code (open the "
            "patch's files again, reprojected to a CRS that has one)"
        )
    patch = patch.drop_vars([name for name in patch.coords if patch[name].ndim == 0])
    # its y and x (rows of the collection's 2-D coordinates) indexed, as a scene's: not
    # indexed, the write's chunking made them lazy, and odc-geo computed them twice
    for dim in ("y", "x"):
        if dim in patch.coords and dim not in patch.xindexes:
            patch = patch.set_xindex(dim)
    return patch.rio.write_crs(crs)


def patch_file_names(collection: xr.Dataset | xr.DataArray) -> list[str]:
    """The file name of each patch of a collection: its ``patch`` id and ``.tif``.

    Raises
    ------
    SchemaError
        Repeated patch ids.
    UnsafePathError
        A patch id that is not a plain file name (a path separator, ``..``).
    StoreError
        Patch ids that differ only by case: one file on macOS and Windows.
    """
    check_patch_ids(collection)
    names = [f"{patch}{SUFFIX}" for patch in np.asarray(collection["patch"].values).tolist()]
    for name in names:
        if Path(name).name != name or name.startswith("."):
            raise UnsafePathError(f"patch {name[: -len(SUFFIX)]!r}: not a plain file name")
    folded = repeated(name.casefold() for name in names)
    if folded:
        clash = [name for name in names if name.casefold() in folded]
        raise StoreError(
            f"{', '.join(clash)}: file names that differ only by case are one file on "
            "macOS and Windows; patch ids must differ by more than case"
        )
    return names
