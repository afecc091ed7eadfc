"""Readers: M3R-CR quartets (and whole scenes) from GeoTIFF and ``.npy`` into xarray.

:func:`open_quartet` returns a *scene* and :func:`open_m3rcr` a *collection* (see
:mod:`m3rcr_xr.schema`). Everything stays lazy (Dask-backed): a scene tens of thousands
of pixels a side is never read whole; only headers are read at open time, plus one
block of each raster to catch truncated files early.

Each GeoTIFF is opened by :func:`m3rcr_xr.rasters.open_raster`, which bounds what an
open reads and takes bands by name where the file's band descriptions name them (see
:mod:`m3rcr_xr.rasters`). Values are checked as they are read (lazily, chunk by chunk),
never wrapped around:

- optical layers become uint16 exactly (NaN and the declared nodata become 0), or
  raise :class:`InputFileError` naming the file and the values found
  (:func:`m3rcr_xr.rasters.as_uint16`);
- SAR: NaN, +-inf and the declared nodata are holes, filled as the published loader
  fills NaN (:func:`m3rcr_xr.align.fill_nan_with_mean`; with ``align="shape"`` after
  resampling, as that loader); a chunk that plainly holds linear power, not dB, raises
  :class:`InputFileError` (:func:`check_sar_unit`);
- a scale/offset in a file's header (value = raw x scale + offset) is applied to SAR;
  optical files may declare only reflectance x10000 as stored (scale 1 or 0.0001,
  offset 0), the other layers none: anything else is refused naming the file;
- land cover: codes outside ESA WorldCover become nodata 0, with an
  :class:`M3RCRWarning` (:func:`m3rcr_xr.landcover.to_worldcover`).
"""

from __future__ import annotations

import csv
import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from io import StringIO
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any

import dask.array as da
import numpy as np
import rasterio
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

from .. import href
from ..align import AlignMethod, align_to, fill_nan_with_mean
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
from ..exceptions import (
    AlignmentError,
    InputFileError,
    M3RCRWarning,
    MissingFileError,
    SchemaError,
    argument,
)
from ..landcover import NODATA_CODE, to_worldcover
from ..npy import NpyFile, open_npy
from ..rasters import (
    apply_scaling,
    as_uint16,
    check_reflectance,
    header_scaling,
    map_blocks,
    open_raster,
)
from ..schema import BANDS, OPTICAL_NODATA, POLARIZATIONS, repeated, validate

log = logging.getLogger(__name__)

PathType = str | PathLike
#: column order of the published file lists (no header)
FILELIST_COLUMNS = ("cloudfree", "cloudy", "sar", "landcover", "cloudmask")
#: folder prefix of each layer in the dataset's layout
LAYOUT_PREFIX = {
    "cloudy": "planet_cloudy",
    "cloudfree": "planet_cloudfree",
    "sar": "S1",
    "landcover": "landcover",
    "cloudmask": "cloudmask",
}
_PATCH_NAME = re.compile(r"^planet_cloudy_(?P<season>[A-Za-z]+)_(?P<aoi>\w+?)_p_(?P<n>\d+)$")
#: a chunk with fewer finite SAR values than this is not judged by :func:`check_sar_unit`
#: (too few to tell dB from power); the file's other chunks still are
SAR_UNIT_MIN_VALUES = 64
#: a dB chunk whose finite values all lie in [0, this] holds linear power
#: (:func:`check_sar_unit`)
LINEAR_POWER_MAX = 1.5
#: ``open_quartet(cloudmask=ESTIMATE)`` estimates the mask from the optical bands
ESTIMATE = "estimate"


# --------------------------------------------------------------------------- cloud mask
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
            raster = _oriented_like(raster, like)  # lazily: rows read backwards
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


# ------------------------------------------------------------------------------ quartet
def _require_georeference(array: xr.DataArray, path: PathType, name: str, why: str) -> None:
    """Refuse a raster without a CRS or a geotransform: its coordinates would be pixel
    indices, which must never be stored as metres."""
    if array.rio.crs is None:
        raise InputFileError(f"{path}: {name} has no CRS; {why}")
    if array.rio.transform().is_identity:
        raise InputFileError(f"{path}: {name} has no geotransform (pixel indices only); {why}")


def _optical(path: PathType, name: str, chunks: Any) -> xr.DataArray:
    array = open_raster(path, name, len(BANDS), chunks, bands=BANDS, scaled=True)
    _check_reflectance_scaling(array, path, name)
    _require_georeference(array, path, name, "a scene needs one for its optical grid")
    return describe_optical(as_uint16(array, path, name), name)


def _check_reflectance_scaling(array: xr.DataArray, path: PathType, name: str) -> None:
    """Refuse an optical file whose header scale/offset make its values anything but
    reflectance x10000 as stored (:func:`m3rcr_xr.rasters.check_reflectance`)."""
    for scale, offset in header_scaling(array):
        check_reflectance(scale, offset, f"{path}: {name} declares", "in its header")


def describe_optical(array: xr.DataArray, name: str) -> xr.DataArray:
    """Band labels and attributes of an optical layer (uint16 reflectance x10000)."""
    array = array.assign_coords(band=list(BANDS))
    array.attrs = {
        "long_name": f"{name} surface reflectance",
        "units": "reflectance x10000",
        "nodata": OPTICAL_NODATA,
    }
    return array


def _by_coords_needs(align: AlignMethod) -> str:
    return (
        f"{argument('align', align)} needs one; "
        f"pass {argument('align', 'shape')} to align by array shape"
    )


def _sar(path: PathType, optical: xr.DataArray, chunks: Any, align: AlignMethod) -> xr.DataArray:
    array = open_raster(path, "sar", len(POLARIZATIONS), chunks, bands=POLARIZATIONS, scaled=True)
    if align == "coords":
        _require_georeference(array, path, "sar", _by_coords_needs(align))
    nodata, scaling = array.attrs.get("_FillValue"), header_scaling(array)
    if nodata is not None and not np.isnan(nodata):  # declared nodata: holes, as NaN
        array = array.where(array != nodata)
    # NaN and +-inf are holes (fill_nan_with_mean), as is a value beyond float32's range
    array = apply_scaling(array.astype("float32"), scaling, "band")
    array = check_sar_unit(array, "dB", f"{path}: sar", "convert it to dB")
    array = array.rename(band="polarization")
    array = array.assign_coords(polarization=list(POLARIZATIONS))
    if align == "shape":  # as the published loader: one mean over the resampled image
        aligned = align_to(array, optical, method=align, source=path)
        aligned = fill_nan_with_mean(aligned, per_band=False)
    else:  # each polarization its own mean, over the file; pixels beyond it stay NaN
        aligned = align_to(fill_nan_with_mean(array), optical, method=align, source=path)
    aligned.attrs = sar_attrs("image mean" if align == "shape" else "band mean", align)
    return aligned


def check_sar_unit(array: xr.DataArray, unit: str, source: str, hint: str = "") -> xr.DataArray:
    """``array`` (SAR in ``unit``: ``"dB"`` or ``"power"``, linear), each chunk checked
    when it is read (lazily, as the optical values are) by :func:`_check_sar_chunk`;
    ``hint`` ends its error (what to do: convert, or the argument that reads the other
    unit), made now: chunks are read in other threads, where :func:`argument` would not
    name an argument as the caller did (``--sar-unit dB`` on the command line)."""
    return map_blocks(_check_sar_chunk, array, "float32", unit=unit, source=source, hint=hint)


def _check_sar_chunk(values: np.ndarray, unit: str, source: str, hint: str = "") -> np.ndarray:
    """``values`` (one chunk of SAR), unless they are plainly in the other unit than
    ``unit``: then :class:`InputFileError` naming ``source`` and the values found,
    ``hint`` after them where given.

    Each reader assumes one unit, and a file in the other reads without any error into
    a scene of constants: dB read as power is below the power floor everywhere (-50 dB);
    power read as dB is about 0 dB everywhere, the top of the normalised range. The
    thresholds leave real data alone (the M3R-CR samples' dB, -36 to +11.5, trips
    neither in any window of 8 x 8 pixels or more; tests/test_io.py checks them):

    - ``"power"``: more than half the finite values at or below -1. Power is never
      negative but for thermal-noise residue (of the order of -0.001, over calm water
      in much of a chunk: not counted), while dB of land and water is below -1 almost
      everywhere (-25 to -5 dB). Zeros do not count: a power file's empty fill is 0.
    - ``"dB"``: every finite value in [0, :data:`LINEAR_POWER_MAX`], at least
      :data:`SAR_UNIT_MIN_VALUES` of them above 0. Power of natural surfaces lies below
      1 (0 dB), up to 1.5 with the odd bright pixel; dB that close to 0 over a whole
      chunk is no terrain. A chunk of zeros (an undeclared fill) is not judged.

    A chunk with fewer than :data:`SAR_UNIT_MIN_VALUES` finite values is not judged.
    """
    finite = values[np.isfinite(values)]
    if finite.size < SAR_UNIT_MIN_VALUES:
        return values
    hint = f"; {hint}" if hint else ""
    if unit == "power":
        negative = np.count_nonzero(finite <= -1)
        if negative > finite.size / 2:
            raise InputFileError(
                f"{source}: {negative} of the {finite.size} finite values of a chunk are "
                f"-1 or less (found {finite.min():g} to {finite.max():g}): this is "
                f"backscatter in dB, not the linear power expected (never negative){hint}"
            )
    elif (
        finite.min() >= 0
        and finite.max() <= LINEAR_POWER_MAX
        and np.count_nonzero(finite) >= SAR_UNIT_MIN_VALUES
    ):
        raise InputFileError(
            f"{source}: all {finite.size} finite values of a chunk lie in "
            f"[0, {LINEAR_POWER_MAX:g}] (found {finite.min():g} to {finite.max():g}): this "
            "is linear power, not the backscatter in dB expected (10 log10 of power, "
            f"-25 to -5 over land){hint}"
        )
    return values


def sar_attrs(nan_fill: str, align: str) -> dict[str, str]:
    """Attributes of the ``sar`` variable: how holes were filled, how it was aligned."""
    return {
        "long_name": "Sentinel-1 backscatter",
        "units": "dB",
        "nan_fill": nan_fill,
        "align": align,
    }


def _landcover(path: PathType, optical: xr.DataArray, chunks: Any, align: AlignMethod):
    array = open_raster(path, "landcover", 1, chunks).isel(band=0, drop=True)
    if align == "coords":
        _require_georeference(array, path, "landcover", _by_coords_needs(align))
    nodata = array.attrs.get("_FillValue")
    array = map_blocks(
        to_worldcover, array, "uint8", nodata=nodata, source=f"{path}: landcover"
    ).rename("landcover")
    aligned = align_to(array, optical, method=align, fill=NODATA_CODE, source=path)
    aligned.attrs = landcover_attrs(align)
    return aligned


def landcover_attrs(align: str) -> dict[str, Any]:
    """Attributes of the ``landcover`` variable."""
    return {"long_name": "ESA WorldCover 2020 class code", "nodata": NODATA_CODE, "align": align}


def rechunk_like(array: xr.DataArray, like: xr.DataArray) -> xr.DataArray:
    """``array`` (a layer on ``like``'s grid) with ``like``'s chunks along the dims they
    share, or in memory when ``like`` is."""
    if like.chunks is None:
        return array.compute()
    return array.chunk({dim: like.chunksizes[dim] for dim in array.dims if dim in like.dims})


def open_quartet(
    cloudy: PathType,
    cloudfree: PathType | None = None,
    sar: PathType | None = None,
    landcover: PathType | None = None,
    cloudmask: PathType | None = None,
    *,
    chunks: Any = "auto",
    align: AlignMethod = "coords",
    udm2_classes: Sequence[str] | None = None,
) -> xr.Dataset:
    """Open one M3R-CR quartet (or any scene in that form) as a lazy scene.

    Parameters
    ----------
    cloudy, cloudfree
        4-band PlanetScope GeoTIFFs (blue, green, red, NIR; reflectance x10000, read as
        stored: a header scale other than 1 or 0.0001, or an offset, is refused).
    sar
        2-band Sentinel-1 GeoTIFF (VV, VH in dB), at any resolution and CRS; a scale/offset
        in its header is applied (dB x100 stored as int16 with scale 0.01). A chunk of
        linear power instead raises :class:`InputFileError` when read
        (:func:`check_sar_unit`).
    landcover
        1-band ESA WorldCover GeoTIFF, at any resolution and CRS (class codes as stored:
        a header scale/offset is refused).
    cloudmask
        The cloud mask, on the optical grid: a boolean ``.npy`` or 1-band GeoTIFF (the
        dataset's masks); a Planet UDM2 GeoTIFF (recognised by its 8 uint8 bands), whose
        ``udm2_classes`` make the mask and whose unusable pixels (not imaged, or a band
        missing or suspect: :func:`m3rcr_xr.udm2_nodata`) become nodata 0 in
        ``cloudy``; or ``"estimate"``, a spectral test on ``cloudy``
        (:func:`m3rcr_xr.estimate_cloudmask`), with an :class:`M3RCRWarning`.
    chunks
        ``"auto"`` (the ``scene_chunk`` option, 1024 px), an int, a dict of ``y``/``x``
        chunk sizes, or ``None`` to load into memory.
    align
        ``"coords"``: the 10 m layers go onto the optical grid by coordinates;
        ``"shape"``: by array shape, as the published loader does (SAR holes then take
        one mean over the resampled SAR, as in that loader).
    udm2_classes
        The UDM2 classes that count as cloud (:data:`m3rcr_xr.cloudmask.UDM2_CLASSES`);
        default (None) cloud, heavy haze and shadow. Add ``"light_haze"`` for UDM2.1's
        haze. Refused without a UDM2 ``cloudmask``, where they would be ignored.

    Returns
    -------
    xr.Dataset
        A scene (see :mod:`m3rcr_xr.schema`).

    Examples
    --------
    >>> ds = open_quartet("cloudy.tif", sar="s1.tif", landcover="lc.tif")  # doctest: +SKIP
    >>> ds.sar.sel(polarization="VV")  # doctest: +SKIP
    >>> ds = open_quartet("scene.tif", cloudmask="scene_udm2.tif")  # doctest: +SKIP
    """
    optical = _optical(cloudy, "cloudy", chunks)
    layers: dict[str, xr.DataArray] = {"cloudy": optical}
    if cloudfree is not None:
        layers["cloudfree"] = _optical(cloudfree, "cloudfree", chunks)
        check_same_grid(layers["cloudfree"], optical, cloudfree)
    if sar is not None:
        layers["sar"] = rechunk_like(_sar(sar, optical, chunks, align), optical)
    if landcover is not None:
        layers["landcover"] = rechunk_like(_landcover(landcover, optical, chunks, align), optical)
    if cloudmask is None:
        udm2_classes_for(udm2_classes, "there is no cloud mask")
    else:
        layers["cloudmask"] = _cloudmask(cloudmask, layers, chunks, udm2_classes)
    ds = assemble_layers(layers, optical)
    files = (cloudy, cloudfree, sar, landcover, None if cloudmask == ESTIMATE else cloudmask)
    ds.encoding["source"] = [str(p) for p in files if p]
    return validate(ds)


def _cloudmask(
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
        udm2 = _oriented_like(open_udm2(source, chunks=chunks), optical)
        check_same_grid(udm2.isel(band=0), optical.isel(band=0), source)
        layers["cloudy"] = mask_nodata(optical, udm2_nodata(udm2))
        return udm2_cloudmask(udm2, classes)
    udm2_classes_for(classes, f"{source} is not one (8 bands of uint8)")
    grid = optical.isel(band=0)
    shape = (grid.sizes["y"], grid.sizes["x"])
    blocks = None if grid.chunks is None else grid.data.chunks
    values = read_cloudmask(source, shape, like=grid, chunks=blocks)
    return xr.DataArray(values, dims=("y", "x"), attrs={"long_name": "cloud mask, True = cloud"})


def _oriented_like(array: xr.DataArray, optical: xr.DataArray) -> xr.DataArray:
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


def assemble_layers(layers: dict[str, xr.DataArray], optical: xr.DataArray) -> xr.Dataset:
    """The scene of ``layers`` (each on ``optical``'s grid), on ``optical``'s ``y``/``x``
    coordinates and CRS."""
    coords = {"y": optical["y"].values, "x": optical["x"].values}
    variables = {}
    for name, array in layers.items():
        array = array.drop_vars([c for c in array.coords if c not in array.dims])
        variables[name] = array.assign_coords(coords)
    ds = xr.Dataset(variables)
    if optical.rio.crs is not None and optical.rio.crs.is_geographic:  # CF's units
        ds["y"].attrs = {"units": "degrees_north", "long_name": "latitude of pixel centre"}
        ds["x"].attrs = {"units": "degrees_east", "long_name": "longitude of pixel centre"}
    else:
        ds["y"].attrs = {"units": "metre", "long_name": "y coordinate of pixel centre"}
        ds["x"].attrs = {"units": "metre", "long_name": "x coordinate of pixel centre"}
    return ds.rio.write_crs(optical.rio.crs).rio.write_transform(optical.rio.transform())


# --------------------------------------------------------------------------- collection
_LAYERS = "|".join(LAYOUT_PREFIX.values())
#: a file named as the dataset names them: ``{layer prefix}_{season}_{aoi}_p_{n}``
_LAYER_NAME = re.compile(rf"^(?P<prefix>{_LAYERS})_(?P<patch>[A-Za-z]+_\w+?_p_\d+)$")
#: a folder of the dataset's layout: ``{layer prefix}_{season}[_{aoi}]``
_LAYER_FOLDER = re.compile(rf"^(?P<prefix>{_LAYERS})_[A-Za-z]+(?:_\w+)?$")


@dataclass(frozen=True)
class Quartet:
    """The files of one patch, relative to the dataset root."""

    cloudy: str
    cloudfree: str | None = None
    sar: str | None = None
    landcover: str | None = None
    cloudmask: str | None = None

    @property
    def patch_id(self) -> str:
        stem = Path(self.cloudy).stem
        match = _PATCH_NAME.match(stem)
        if match is None:
            return stem
        return f"{match['season']}_{match['aoi']}_p_{match['n']}"

    @property
    def season(self) -> str:
        match = _PATCH_NAME.match(Path(self.cloudy).stem)
        return match["season"] if match else ""

    @property
    def aoi(self) -> str:
        match = _PATCH_NAME.match(Path(self.cloudy).stem)
        return match["aoi"] if match else ""

    def paths(self, root: PathType) -> dict[str, str | Path]:
        """Paths (or URLs) of the present layers, each checked to stay inside ``root``."""
        return {name: href.join(root, rel) for name, rel in vars(self).items() if rel}

    def mismatch(self) -> str | None:
        """What shows that the files are not one patch's layers, or None.

        Only files named as the dataset names them (``S1_fall_1_p_457.tif`` in
        ``S1_fall/S1_fall_1/``) are checked: each must carry its own layer's prefix (in
        its name and in such folders), and all must name one patch. Files named
        otherwise (a user's own) are taken as given.

        Examples
        --------
        >>> Quartet("planet_cloudy_fall_1_p_1.tif", "planet_cloudfree_fall_1_p_2.tif").mismatch()
        'files of different patches: fall_1_p_1 (cloudy); fall_1_p_2 (cloudfree)'
        >>> Quartet("my_cloudy.tif", "planet_cloudfree_fall_1_p_2.tif").mismatch() is None
        True
        """
        patches: dict[str, list[str]] = {}
        for column, relative in vars(self).items():
            path = PurePosixPath(relative or "")
            match = _LAYER_NAME.match(path.stem)
            if match is None:
                continue
            folders = (_LAYER_FOLDER.match(part) for part in path.parent.parts)
            found = {match["prefix"], *(m["prefix"] for m in folders if m)}
            found.discard(LAYOUT_PREFIX[column])
            if found:
                return (
                    f"column {column!r} holds {relative!r}, a {' and '.join(sorted(found))} "
                    f"file (expected the {LAYOUT_PREFIX[column]}_ prefix); the columns are "
                    f"{', '.join(FILELIST_COLUMNS)}"
                )
            patches.setdefault(match["patch"], []).append(column)
        if len(patches) < 2:
            return None
        listed = (f"{patch} ({', '.join(columns)})" for patch, columns in patches.items())
        return f"files of different patches: {'; '.join(listed)}"


def _read_utf8(path: str | Path) -> str:
    """The text of ``path`` as UTF-8, without a byte-order mark (spreadsheets write one).

    Raises InputFileError naming the line of the first byte that is not UTF-8.
    """
    data = href.read_bytes(path, "file list")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputFileError(
            f"{path}:{line}: file list is not UTF-8 text "
            f"(byte {data[err.start]:#04x} at offset {err.start}); save it as UTF-8"
        ) from err


def _csv_rows(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """The line number and stripped cells of each row of the CSV at ``path``.

    Raises InputFileError naming the line that the csv module cannot parse.
    """
    reader = csv.reader(StringIO(_read_utf8(path), newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:  # e.g. a cell over csv.field_size_limit()
            raise InputFileError(f"{path}:{reader.line_num}: not a CSV row: {err}") from err
        yield reader.line_num, [cell.strip() for cell in row]


def read_filelist(path: PathType) -> list[Quartet]:
    """Read a published file list (CSV, no header; cloudfree, cloudy, S1, landcover,
    cloudmask). Duplicate rows give a warning and are kept once.

    The CSV must be UTF-8 (a byte-order mark is ignored); blank rows are skipped, and
    every other row needs a path in each of the five columns, as the published lists
    have. Files named as the dataset names them (``planet_cloudy_fall_1_p_457.tif``,
    ``S1_fall_1_p_457.tif``...) must be in their layer's column and of the row's patch
    (:meth:`Quartet.mismatch`); files named otherwise are taken as given.

    Raises
    ------
    InputFileError
        Naming the CSV and the line: not UTF-8, not parsable as CSV, a wrong number of
        columns, an empty path (and its column), a dataset-named file in another
        layer's column or of another patch.
    """
    path = href.as_href(path)
    if not href.is_file(path, "file list"):
        raise MissingFileError(f"{path}: file list does not exist")
    quartets: list[Quartet] = []
    for line, row in _csv_rows(path):
        if not any(row):
            continue
        if len(row) != len(FILELIST_COLUMNS):
            raise InputFileError(
                f"{path}:{line}: expected {len(FILELIST_COLUMNS)} columns "
                f"({', '.join(FILELIST_COLUMNS)}), got {len(row)}"
            )
        fields = dict(zip(FILELIST_COLUMNS, row, strict=True))
        empty = [name for name, value in fields.items() if not value]
        if empty:
            raise InputFileError(
                f"{path}:{line}: empty path in column {empty[0]!r} "
                f"(columns: {', '.join(FILELIST_COLUMNS)})"
            )
        quartet = Quartet(**fields)
        mismatch = quartet.mismatch()
        if mismatch:
            raise InputFileError(f"{path}:{line}: {mismatch}")
        quartets.append(quartet)
    unique = list(dict.fromkeys(quartets))
    if len(unique) < len(quartets):
        warnings.warn(
            f"{path}: {len(quartets) - len(unique)} duplicate row(s) ignored",
            M3RCRWarning,
            stacklevel=2,
        )
    return unique


def discover(root: PathType) -> list[Quartet]:
    """Find the quartets of a split folder by walking the dataset's layout."""
    found = href.glob(root, "planet_cloudy_*/planet_cloudy_*/planet_cloudy_*.tif")
    present = {top.split("/")[0] for top in href.glob(root, "*")}
    quartets = []
    for relative in found:
        layers: dict[str, str | None] = {}
        for name, prefix in LAYOUT_PREFIX.items():
            if name == "cloudy":
                continue
            other = relative.replace("planet_cloudy", prefix)
            if name == "cloudmask":
                other = other[: -len(".tif")] + ".npy"
            layers[name] = other if other.split("/")[0] in present else None
        quartets.append(Quartet(relative, **layers))
    return quartets


def open_m3rcr(
    root: PathType,
    filelist: PathType | None = None,
    *,
    chunks: Mapping[str, int] | None = None,
    align: AlignMethod = "coords",
) -> xr.Dataset:
    """Open an M3R-CR split folder (``train/``, ``test/``) as a lazy collection.

    Parameters
    ----------
    root
        The split folder, holding ``planet_cloudy_{season}/...`` and its siblings.
    filelist
        A CSV in the published format, paths relative to ``root``, checked as in
        :func:`read_filelist`. Without it, the quartets are found by walking the layout.
    chunks
        Dask chunks of the result, e.g. ``{"patch": 16}``; default one patch a chunk.
    align
        As in :func:`open_quartet`.

    Returns
    -------
    xr.Dataset
        A collection: the scene variables with a leading ``patch`` dim, per-patch grids
        ``x(patch, x)``, ``y(patch, y)``, ``epsg(patch)`` and ``season``, ``aoi``,
        ``split`` (the name of ``root``, also when given as ``.``), ``source`` (cloudy
        path relative to ``root``).
    """
    root = href.as_href(root)
    if not href.is_dir(root, "dataset root"):
        raise MissingFileError(f"{root}: dataset root is not a folder")
    quartets = read_filelist(filelist) if filelist is not None else discover(root)
    if not quartets:
        raise InputFileError(f"{root}: no quartets found")
    _check_patch_ids(quartets, root if filelist is None else filelist)
    scenes = [_open_patch(q, root, align) for q in quartets]
    meta = {
        "patch": [q.patch_id for q in quartets],
        "season": [q.season for q in quartets],
        "aoi": [q.aoi for q in quartets],
        "split": [_split_name(root)] * len(quartets),
        "source": [q.cloudy for q in quartets],
    }
    collection = stack_scenes(scenes, meta)
    collection.encoding["source"] = [path for s in scenes for path in s.encoding["source"]]
    if chunks:
        collection = collection.chunk(dict(chunks))
    return validate(collection)


def _split_name(root: str | Path) -> str:
    """The name of the split folder ``root``: ``train`` also for ``.`` inside it."""
    if href.is_remote(root):
        return href.name_of(root).name
    return href.local_path(root).resolve().name


def _check_patch_ids(quartets: Sequence[Quartet], source: PathType) -> None:
    """Refuse quartets whose cloudy files give one patch id (:attr:`Quartet.patch_id`),
    naming the files, before any is opened."""
    twice = repeated(quartet.patch_id for quartet in quartets)
    if twice:
        files = "; ".join(
            f"{patch!r} from {', '.join(q.cloudy for q in quartets if q.patch_id == patch)}"
            for patch in twice
        )
        raise InputFileError(
            f"{source}: patch ids (the cloudy file's name) must be unique; repeated: {files}; "
            "rename the files"
        )


def _open_patch(quartet: Quartet, root: str | Path, align: AlignMethod) -> xr.Dataset:
    paths: dict[str, Any] = quartet.paths(root)
    return open_quartet(**paths, chunks={"y": -1, "x": -1}, align=align)


def stack_scenes(scenes: Sequence[xr.Dataset], meta: Mapping[str, Sequence[str]]) -> xr.Dataset:
    """Stack same-shape scenes along ``patch``, each keeping its grid as coordinates.

    Parameters
    ----------
    scenes
        Scenes of one shape and one set of variables, in any CRS.
    meta
        Per-patch labels: ``patch`` (ids), ``season``, ``aoi``, ``split``, ``source``.

    Raises
    ------
    SchemaError
        Scenes of several shapes or sets of variables, or one whose CRS has no EPSG code.
    """
    epsg = [_epsg(scene, label) for scene, label in zip(scenes, meta["source"], strict=True)]
    shapes = {(s.sizes["y"], s.sizes["x"]) for s in scenes}
    if len(shapes) > 1:
        raise SchemaError(f"patches differ in shape {sorted(shapes)}; a collection needs one")
    names = [set(s.data_vars) for s in scenes]
    if any(n != names[0] for n in names):
        raise SchemaError("patches differ in their variables; a collection needs the same set")
    bare = [s.drop_vars(["x", "y", "spatial_ref"]) for s in scenes]
    stacked = xr.concat(
        bare, dim="patch", coords="minimal", compat="override", combine_attrs="drop_conflicts"
    )
    labels = {name: ("patch", list(meta[name])) for name in ("season", "aoi", "split", "source")}
    return stacked.assign_coords(
        {
            "patch": list(meta["patch"]),
            "y": (("patch", "y"), np.stack([s["y"].values for s in scenes])),
            "x": (("patch", "x"), np.stack([s["x"].values for s in scenes])),
            "epsg": ("patch", np.array(epsg, np.int32)),
            **labels,
        }
    )


def _epsg(scene: xr.Dataset, label: str) -> int:
    """The EPSG code of a scene's CRS; :class:`SchemaError` naming its file if none."""
    code = scene.rio.crs.to_epsg()
    if code is None:
        file = (scene.encoding.get("source") or [label])[0]
        raise SchemaError(
            f"{file}: CRS {scene.rio.crs.to_string()!r} has no EPSG code; a collection "
            "records each patch's CRS as an EPSG code (reproject the patch to one, or "
            "open it alone with open_quartet)"
        )
    return code
