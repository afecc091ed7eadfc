"""The m3rcr_xr data model, and :func:`validate`.

Scene
    One georeferenced grid in one CRS at the optical resolution (3 m for PlanetScope).
    Dims ``band`` (blue, green, red, nir), ``polarization`` (VV, VH), ``y``, ``x``
    (pixel centres in metres). Variables:

    ============  ======================  =======  ====================================
    name          dims                    dtype    meaning
    ============  ======================  =======  ====================================
    cloudy        (band, y, x)            uint16   surface reflectance x10000, nodata 0
    cloudfree     (band, y, x)            uint16   the same, cloud-free (optional)
    sar           (polarization, y, x)    float32  Sentinel-1 backscatter in dB (opt.)
    landcover     (y, x)                  uint8    ESA WorldCover code, 0 = nodata (opt.)
    cloudmask     (y, x)                  bool     True = cloud (optional)
    ============  ======================  =======  ====================================

    Georeference follows rioxarray: a ``spatial_ref`` coordinate, so ``ds.rio.crs`` and
    ``ds.rio.transform()`` work.

Collection
    Many patches stacked along a leading ``patch`` dim, the same variables. Each patch
    keeps its own grid as coordinates ``x(patch, x)``, ``y(patch, y)`` and ``epsg(patch)``,
    with per-patch ``season``, ``aoi``, ``split`` and ``source`` (path relative to the
    dataset root). The ``patch`` ids are unique: per-patch metrics, stores and the
    GeoTIFFs of :func:`m3rcr_xr.to_cog` are keyed by them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping

import numpy as np
import rioxarray  # noqa: F401 - registers the .rio accessor used by the data model
import xarray as xr

from .exceptions import SchemaError

BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
POLARIZATIONS: tuple[str, ...] = ("VV", "VH")
OPTICAL_NODATA = 0

#: variable name -> (dims of a scene, dtype)
VARIABLES: Mapping[str, tuple[tuple[str, ...], np.dtype]] = {
    "cloudy": (("band", "y", "x"), np.dtype("uint16")),
    "cloudfree": (("band", "y", "x"), np.dtype("uint16")),
    "sar": (("polarization", "y", "x"), np.dtype("float32")),
    "landcover": (("y", "x"), np.dtype("uint8")),
    "cloudmask": (("y", "x"), np.dtype("bool")),
    # what decloud adds: the network's estimate, in the units of cloudy
    "decloud": (("band", "y", "x"), np.dtype("float32")),
}
REQUIRED = ("cloudy",)
PATCH_COORDS = ("epsg", "season", "aoi", "split", "source")


def is_collection(ds: xr.Dataset | xr.DataArray) -> bool:
    """True when ``ds`` is a collection (has a ``patch`` dim)."""
    return "patch" in ds.dims


def validate(ds: xr.Dataset, *, required: tuple[str, ...] = REQUIRED) -> xr.Dataset:
    """Check that ``ds`` is a scene or a collection; return it unchanged.

    ``required`` names the variables that must be present (``cloudy`` by default; a
    store of decloud output alone passes ``required=()``).

    Raises
    ------
    SchemaError
        Naming the variable or coordinate and what is wrong with it.

    Examples
    --------
    >>> import m3rcr_xr
    >>> scene = m3rcr_xr.synthetic_scene((64, 64))
    >>> m3rcr_xr.validate(scene) is scene
    True
    """
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    collection = is_collection(ds)
    for name in required:
        if name not in ds.data_vars:
            raise SchemaError(f"{name}: required variable is missing (have {list(ds.data_vars)})")
    for name, (dims, dtype) in VARIABLES.items():
        if name in ds.data_vars:
            _check_variable(ds[name], name, (("patch", *dims) if collection else dims), dtype)
    _check_labels(ds, "band", BANDS)
    _check_labels(ds, "polarization", POLARIZATIONS)
    if collection:
        _check_collection_coords(ds)
        check_patch_ids(ds)
    else:
        _check_scene_grid(ds)
    return ds


def repeated(values: Iterable[Hashable]) -> list[Hashable]:
    """The values that occur more than once, in the order they first occur.

    Examples
    --------
    >>> repeated(["a", "b", "a", "c", "b"])
    ['a', 'b']
    """
    return [value for value, count in Counter(values).items() if count > 1]


def check_patch_ids(collection: xr.Dataset | xr.DataArray) -> None:
    """Refuse a collection whose ``patch`` ids are not unique (:class:`SchemaError`
    naming the repeated ids)."""
    if "patch" not in collection.coords:
        return
    twice = repeated(np.asarray(collection["patch"].values).tolist())
    if twice:
        raise SchemaError(
            f"patch: ids must be unique in a collection; repeated: {', '.join(map(repr, twice))}"
        )


def _check_variable(da: xr.DataArray, name: str, dims: tuple[str, ...], dtype: np.dtype) -> None:
    if da.dims != dims:
        raise SchemaError(f"{name}: dims are {da.dims}, expected {dims}")
    if da.dtype != dtype:
        raise SchemaError(f"{name}: dtype is {da.dtype}, expected {dtype}")


def _check_labels(ds: xr.Dataset, dim: str, expected: tuple[str, ...]) -> None:
    if dim not in ds.dims:
        return
    if dim not in ds.coords:
        raise SchemaError(f"{dim}: coordinate labels are missing, expected {list(expected)}")
    labels = tuple(str(v) for v in ds[dim].values)
    if labels != expected:
        raise SchemaError(f"{dim}: labels are {list(labels)}, expected {list(expected)}")


def _check_scene_grid(ds: xr.Dataset) -> None:
    for dim in ("y", "x"):
        if dim not in ds.coords:
            raise SchemaError(f"{dim}: pixel-centre coordinate is missing")
        values = np.asarray(ds[dim].values)
        if values.ndim != 1:
            raise SchemaError(f"{dim}: expected a 1-D coordinate, got dims {ds[dim].dims}")
        if values.size > 1:
            steps = np.diff(values)
            if not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-6) or steps[0] == 0:
                raise SchemaError(f"{dim}: coordinate is not regularly spaced")
    if ds.rio.crs is None:
        raise SchemaError("spatial_ref: the scene has no CRS (ds.rio.crs is None)")


def _check_collection_coords(ds: xr.Dataset) -> None:
    for dim in ("y", "x"):
        if dim not in ds.coords or ds[dim].dims != ("patch", dim):
            raise SchemaError(f"{dim}: a collection needs coordinate {dim}(patch, {dim})")
    for name in PATCH_COORDS:
        if name not in ds.coords or ds[name].dims != ("patch",):
            raise SchemaError(f"{name}: a collection needs coordinate {name}(patch)")
