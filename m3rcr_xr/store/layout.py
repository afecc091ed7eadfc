"""How a dataset is laid out in a store, and the dataset as it is written.

Its chunks (:func:`store_chunks`), the steps a write takes along its leading spatial
or patch dim (:func:`step_size`, :func:`step_regions`), and :func:`prepare`: the
encodings kept, coordinates in memory, the names and dtypes a store can hold and read
back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from ..exceptions import SchemaError
from ..options import OPTIONS
from ..schema import VARIABLES, is_collection
from .root import OWN_FILES, array_name

#: the most chunks a step writes: the unit of progress and of parallel work
CHUNKS_PER_STEP = 8
#: the most pixels a step writes (a scene's rows x its width, a collection's patches x
#: their pixels), but one chunk: a step is one compute, and what the scheduler holds
#: in it grows with its pixels (decloud: about 13 bytes a pixel), so a scene wider than
#: 8192 pixels writes fewer than :data:`CHUNKS_PER_STEP` chunk rows a step
PIXELS_PER_STEP = 8192 * 8192
#: the encodings of a data variable that :func:`~m3rcr_xr.store.to_zarr` keeps (codecs,
#: fill value and stored dtype); the others, chunks included, are its own
#: (:func:`store_chunks`). On a
#: variable of the schema, a packing or a dtype that would not read back as the schema's
#: dtype is refused (:func:`_check_decoded_dtypes`)
KEPT_ENCODING = (
    "compressors",
    "filters",
    "serializer",
    "_FillValue",
    "dtype",
    "scale_factor",
    "add_offset",
)


def store_chunks(ds: xr.Dataset) -> dict[str, int]:
    """The chunking of a store: ~1024 px a side for a scene, a few patches for a
    collection; all bands (and polarizations) of a pixel in one chunk."""
    chunks: dict[str, int] = {dim: -1 for dim in ("band", "polarization") if dim in ds.dims}
    if is_collection(ds):
        chunks.update(patch=OPTIONS["patches_per_chunk"], y=-1, x=-1)
    else:
        chunks.update(y=OPTIONS["scene_chunk"], x=OPTIONS["scene_chunk"])
    return chunks


def write_dim(ds: xr.Dataset) -> str:
    """The dim a store is written along, a step at a time: a collection's ``patch``, a
    scene's ``y``."""
    return "patch" if is_collection(ds) else "y"


def step_size(ds: xr.Dataset, dim: str) -> int:
    """How many chunks along ``dim`` a step of a new store writes: at most
    :data:`CHUNKS_PER_STEP` and :data:`PIXELS_PER_STEP` pixels, at least one.

    Examples
    --------
    >>> import m3rcr_xr
    >>> scene = m3rcr_xr.synthetic_scene((16_384, 16_384), chunks=1024)
    >>> step_size(scene, "y"), step_size(scene.isel(x=slice(8192)), "y")
    (4, 8)
    """
    pixels = ds.chunksizes[dim][0] * math.prod(ds.sizes[d] for d in ("y", "x") if d != dim)
    return max(1, min(CHUNKS_PER_STEP, PIXELS_PER_STEP // pixels))


def step_regions(ds: xr.Dataset, dim: str, chunks_per_step: int) -> list[slice]:
    """Regions along ``dim``, each ``chunks_per_step`` chunks (the last may be fewer)."""
    sizes = ds.chunksizes[dim]
    bounds = np.cumsum((0, *sizes))
    starts = bounds[::chunks_per_step]
    ends = [*starts[1:], bounds[-1]]
    return [slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True) if b > a]


def check_names(ds: xr.Dataset) -> None:
    """Refuse a variable whose name cannot name an array at a store's root
    (:func:`~m3rcr_xr.store.root.array_name`) or names a file of the store's own.

    Raises
    ------
    SchemaError
        Naming the variable.
    """
    for name in ds.variables:
        if not array_name(name):
            raise SchemaError(
                f"variable {name!r}: not a name a Zarr store can hold as an array (a string, "
                "not empty, '.' or '..', without '/'); rename it"
            )
        if name in OWN_FILES:
            raise SchemaError(f"variable {name!r}: names a file of the store's own; rename it")


def prepare(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` as :func:`~m3rcr_xr.store.to_zarr` writes it: in the store's chunks
    (:func:`store_chunks`), its coordinates and the variables without the dim it writes
    along in memory, the encodings it keeps (:data:`KEPT_ENCODING`), a nodata declared
    in attrs where xarray's decoding puts it, and its dtypes checked
    (:func:`_check_decoded_dtypes`)."""
    ds = ds.chunk(store_chunks(ds))
    # coordinates are small: keep them in memory so they are written with the metadata;
    # strings as variable-length UTF-8, the string type Zarr v3 specifies
    ds = ds.assign_coords({name: _plain(ds[name]) for name in ds.coords})
    # so are data variables without the dim the steps write along (a per-band gain):
    # written with the metadata too, as no step writes them
    dim = write_dim(ds)
    ds = ds.assign(
        {name: var.compute() for name, var in ds.data_vars.items() if dim not in var.dims}
    )
    for name, var in ds.variables.items():
        kept = KEPT_ENCODING if name in ds.data_vars else ()
        encoding = {key: var.encoding[key] for key in kept if key in var.encoding}
        attrs = dict(var.attrs)  # a new dict: the caller's variables keep theirs
        # a nodata declared the way rioxarray.open_rasterio declares it (in attrs), which
        # xarray refuses to write next to an encoded one
        fill = attrs.pop("_FillValue", None)
        _unpacked(attrs, encoding)
        if var.dtype.kind == "f":
            if fill is not None:  # where xarray's decoding puts it: NaN when read
                encoding.setdefault("_FillValue", fill)
        else:
            # an integer _FillValue would read back masked, as floats: the data model's
            # integers keep their nodata as a value (attrs["nodata"])
            encoding.pop("_FillValue", None)
            if fill is not None and var.dtype.kind in "iu":
                attrs.setdefault("nodata", fill)
        var.encoding, var.attrs = encoding, attrs
    _check_decoded_dtypes(ds)
    return ds


#: packing a variable may declare (rioxarray: in attrs, as it reads a file), and its
#: value that changes nothing
_PACKING = {"scale_factor": 1, "add_offset": 0}


def _unpacked(attrs: dict[str, Any], encoding: dict[str, Any]) -> None:
    """Packing declared in ``attrs`` (as ``rioxarray.open_rasterio`` declares it, which
    xarray refuses to write next to an encoded one) moved into ``encoding``, and packing
    that changes nothing (scale 1, offset 0) dropped from both: a variable is never
    scaled by it, and read back in its own dtype."""
    for key, identity in _PACKING.items():
        value = attrs.pop(key, None)
        if value is not None:
            encoding.setdefault(key, value)
        if key in encoding and np.all(np.asarray(encoding[key]) == identity):
            del encoding[key]


def _check_decoded_dtypes(ds: xr.Dataset) -> None:
    """Refuse an encoding of a variable of the schema that would read back in another
    dtype than the schema's: :func:`~m3rcr_xr.store.open_zarr` would refuse the store it wrote.

    A packed variable (``scale_factor``, ``add_offset``) reads back unpacked as float64
    or int64, whatever its dtype (JSON attributes keep no float32); a ``dtype`` without
    them reads back as that dtype.
    """
    for name, var in ds.data_vars.items():
        if str(name) not in VARIABLES:
            continue
        expected = VARIABLES[str(name)][1]
        packing = [key for key in _PACKING if key in var.encoding]
        stored = var.encoding.get("dtype")
        if packing:
            how, reads = f"{packing[0]}={var.encoding[packing[0]]!s}", "float64 or int64"
        elif stored is not None and np.dtype(stored) != expected:
            how, reads = f"dtype={np.dtype(stored)}", str(np.dtype(stored))
        else:
            continue
        raise SchemaError(
            f"{name}: encoding {how} would read back as {reads}, not the schema's "
            f"{expected}, and the store would not open; remove it from "
            f"ds[{name!r}].encoding"
        )


def _plain(coord: xr.DataArray) -> xr.DataArray:
    coord = coord.compute()
    return coord.astype(object) if coord.dtype.kind == "U" else coord
