"""The optical, SAR and land-cover layers of a quartet, each read from its GeoTIFF and
checked as it is read (lazily, chunk by chunk): optical reflectance as uint16, SAR in dB
(:func:`check_sar_unit`) with its holes filled, land cover as ESA WorldCover codes; the
10 m layers put on the optical grid (:func:`m3rcr_xr.align.align_to`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..align import AlignMethod, align_to, fill_nan_with_mean
from ..exceptions import InputFileError, argument
from ..href import PathType
from ..landcover import NODATA_CODE, to_worldcover
from ..rasters import (
    apply_scaling,
    as_uint16,
    check_reflectance,
    header_scaling,
    map_blocks,
    open_raster,
)
from ..schema import BANDS, OPTICAL_NODATA, POLARIZATIONS

#: a chunk with fewer finite SAR values than this is not judged by :func:`check_sar_unit`
#: (too few to tell dB from power); the file's other chunks still are
SAR_UNIT_MIN_VALUES = 64
#: a dB chunk whose finite values all lie in [0, this] holds linear power
#: (:func:`check_sar_unit`)
LINEAR_POWER_MAX = 1.5


def _require_georeference(array: xr.DataArray, path: PathType, name: str, why: str) -> None:
    """Refuse a raster without a CRS or a geotransform: its coordinates would be pixel
    indices, which must never be stored as metres."""
    if array.rio.crs is None:
        raise InputFileError(f"{path}: {name} has no CRS; {why}")
    if array.rio.transform().is_identity:
        raise InputFileError(f"{path}: {name} has no geotransform (pixel indices only); {why}")


def optical_layer(path: PathType, name: str, chunks: Any) -> xr.DataArray:
    """The optical layer ``name`` (``cloudy``, ``cloudfree``) of the 4-band GeoTIFF
    ``path``: uint16 reflectance x10000, bands by name, georeferenced."""
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


def sar_layer(
    path: PathType, optical: xr.DataArray, chunks: Any, align: AlignMethod
) -> xr.DataArray:
    """The ``sar`` layer of the 2-band GeoTIFF ``path`` (dB, its header's scale/offset
    applied, holes filled with a mean), on ``optical``'s grid by ``align``."""
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
    ``unit``: then :class:`~m3rcr_xr.exceptions.InputFileError` naming ``source`` and
    the values found, ``hint`` after them where given.

    Each reader assumes one unit, and a file in the other reads without any error into
    a scene of constants: dB read as power is below the power floor everywhere (-50 dB);
    power read as dB is about 0 dB everywhere, the top of the normalised range. The
    thresholds leave real data alone (the M3R-CR samples' dB, -36 to +11.5, trips
    neither in any window of 8 x 8 pixels or more; tests/test_io_layers.py checks them):

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


def landcover_layer(
    path: PathType, optical: xr.DataArray, chunks: Any, align: AlignMethod
) -> xr.DataArray:
    """The ``landcover`` layer of the 1-band GeoTIFF ``path`` (ESA WorldCover codes,
    others nodata 0), on ``optical``'s grid by ``align``."""
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
