"""Cloud masks for scenes that come without the dataset's ``.npy`` mask.

Two sources, both lazy (Dask) and pixel-wise, so the result does not depend on the
chunking:

Planet UDM2 (:func:`open_udm2`, :func:`udm2_cloudmask`, :func:`udm2_nodata`)
    The *usable data mask* delivered with every PlanetScope scene since August 2018: an
    8-band uint8 GeoTIFF on the grid of the analytic asset (Planet, "UDM 2.1",
    https://developers.planet.com/docs/data/udm-2/ and
    https://docs.planet.com/data/imagery/udm/). Bands 1-6 are mutually exclusive 0/1
    class flags: 1 clear, 2 snow, 3 shadow, 4 light haze, 5 heavy haze, 6 cloud;
    band 7 is the classifier's confidence (0-100 %); band 8 is the legacy UDM bitmask,
    whose bit 0 marks *blackfill* (pixels the spacecraft did not image) and bits 2-7
    band 1-6 of the image missing (lost in downlink) or suspect (downlink errors)
    (Planet, "Unusable Data Mask"). Blackfill and a flag on any of the image's 4 bands
    make the pixel *unusable* (:func:`udm2_nodata`): the scene's nodata. UDM2.1 (every
    scene processed from 29 November 2023) keeps the 8-band layout but has a single haze
    class, written to band 4 (light haze); band 5 (heavy haze) is always 0 (Planet, "All
    About UDM2.1"). The default classes (cloud, heavy haze, shadow) therefore mask no
    haze on UDM2.1: add ``"light_haze"`` to mask it.
An estimate from the 4 PlanetScope bands (:func:`estimate_cloudmask`)
    A spectral test after Fmask (Zhu & Woodcock 2012, *Remote Sens. Environ.* 118:83-94)
    without its thermal and SWIR tests, which PlanetScope lacks: the haze-optimised
    transform (Zhang et al. 2002, *Remote Sens. Environ.* 82:173-187), brightness,
    whiteness and NDVI. Its result says loudly that it is estimated
    (``attrs["estimated"] = 1``), and readers and ``decloud(composite=True)`` warn.

Examples
--------
>>> import numpy as np, xarray as xr
>>> flags = np.zeros((8, 1, 3), np.uint8)
>>> flags[0, 0, 0] = flags[5, 0, 1] = flags[7, 0, 2] = 1  # clear, cloud, blackfill
>>> udm2 = xr.DataArray(flags, dims=("band", "y", "x"), coords={"band": list(UDM2_BANDS)})
>>> udm2_cloudmask(udm2).values.tolist(), udm2_nodata(udm2).values.tolist()
([[False, True, False]], [[False, False, True]])
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from rasterio.errors import RasterioError

from .exceptions import InputFileError, M3RCRWarning, SchemaError, UsageError, argument
from .identity import opened_file, sources
from .rasters import open_raster, quietly_opened
from .schema import BANDS, OPTICAL_NODATA

#: the 8 bands of a UDM2 GeoTIFF, in order (names after Planet's, ``haze_light`` etc.)
UDM2_BANDS = (
    "clear",
    "snow",
    "shadow",
    "light_haze",
    "heavy_haze",
    "cloud",
    "confidence",
    "udm1",
)
#: the class bands that may count as cloud
UDM2_CLASSES = ("clear", "snow", "shadow", "light_haze", "heavy_haze", "cloud")
DEFAULT_CLASSES = ("cloud", "heavy_haze", "shadow")
#: bit 0 of the legacy UDM (band 8): blackfill, not imaged
BLACKFILL_BIT = 1
#: bit 2 of the legacy UDM: band 1 of the image missing or suspect; bits 3-7 bands 2-6
FIRST_BAND_BIT = 1 << 2

#: default thresholds of :func:`estimate_cloudmask`, tuned on the two M3R-CR samples
ESTIMATE_DEFAULTS = {
    "clear_line_slope": 2.0,
    "hot_threshold": 100.0,
    "brightness_threshold": 1500.0,
    "whiteness_threshold": 0.7,
    "ndvi_threshold": 0.4,
}


# --------------------------------------------------------------------------------- UDM2
def is_udm2(path: str | os.PathLike) -> bool:
    """True when ``path`` is a raster of 8 bands: the form of a Planet UDM2 (a 1-band
    cloud mask never has 8); :func:`open_udm2` checks the rest."""
    try:
        with quietly_opened(path) as src:
            return src.count == len(UDM2_BANDS)
    except RasterioError:
        return False


def open_udm2(path: str | os.PathLike, *, chunks: Any = "auto") -> xr.DataArray:
    """Open a Planet UDM2 GeoTIFF lazily as (band, y, x) uint8, bands named by
    :data:`UDM2_BANDS`.

    Its ``encoding["source"]`` is the file with its identity once opened
    (:func:`m3rcr_xr.identity.opened_file`, one ``stat`` or HEAD request), and
    :func:`udm2_cloudmask`, :func:`udm2_nodata` and :func:`mask_nodata` pass it on: a
    scene that holds their results is refused by :func:`m3rcr_xr.to_zarr`,
    :func:`m3rcr_xr.to_cog` and training if the file changed since (rewritten or
    replaced), as it could mix pixels of the old file (read before, still in GDAL's
    cache) with the new one's; open it again. So is one removed since, while data of it
    is lazy; results loaded into memory (``.load()``, ``.compute()``) are written
    whatever became of the file.

    Raises
    ------
    MissingFileError, InputFileError
        Missing or unreadable, or not 8 bands of uint8 (the message names the file).
    """
    array = open_raster(path, "udm2", len(UDM2_BANDS), chunks)
    if array.dtype != np.uint8:
        raise InputFileError(
            f"{path}: udm2 has dtype {array.dtype}, expected uint8 (Planet UDM2: 8 bands)"
        )
    array.encoding["source"] = opened_file(array.encoding["source"])  # open: its identity now
    return array.assign_coords(band=list(UDM2_BANDS))


def _read_from(result: xr.DataArray, *inputs: xr.DataArray) -> xr.DataArray:
    """``result`` with the sources of ``inputs`` (:func:`~m3rcr_xr.identity.sources`,
    with their identity at open where their data is lazy) in its ``encoding``, which
    xarray's arithmetic drops: a file changed since it was opened is refused wherever
    the result is written."""
    result.encoding["source"] = [source for array in inputs for source in sources(array)]
    return result


def check_classes(classes: Sequence[str], name: str = "classes") -> tuple[str, ...]:
    """``classes`` as a tuple of UDM2 class names; :class:`UsageError` naming argument
    ``name`` for an unknown one or none."""
    if isinstance(classes, str):
        classes = (classes,)
    unknown = [name for name in classes if name not in UDM2_CLASSES]
    if unknown or not classes:
        raise UsageError(
            f"{argument(name, tuple(classes))}: expected one or more of {', '.join(UDM2_CLASSES)}"
        )
    return tuple(classes)


def udm2_classes_for(classes: Sequence[str] | None, missing: str | None = None) -> tuple[str, ...]:
    """The UDM2 classes a reader flags as cloud: ``classes`` (checked), or
    :data:`DEFAULT_CLASSES` for None.

    ``missing`` says why the reader has no UDM2 to apply them to (None: it has one):
    classes given there would be ignored, so they are refused (:class:`UsageError`,
    naming the argument ``udm2_classes``).

    Examples
    --------
    >>> udm2_classes_for(None)
    ('cloud', 'heavy_haze', 'shadow')
    >>> udm2_classes_for(None, "there is no cloud mask")
    ('cloud', 'heavy_haze', 'shadow')
    >>> udm2_classes_for(["cloud"], "there is none")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    m3rcr_xr.exceptions.UsageError: udm2_classes=['cloud']: only with a Planet UDM2 ...
    """
    if classes is None:
        return DEFAULT_CLASSES
    if missing is not None:
        raise UsageError(
            f"{argument('udm2_classes', classes)}: only with a Planet UDM2 cloud mask; {missing}"
        )
    return check_classes(classes, "udm2_classes")


def udm2_cloudmask(udm2: xr.DataArray, classes: Sequence[str] = DEFAULT_CLASSES) -> xr.DataArray:
    """The cloud mask (y, x) bool of a UDM2: True where any of ``classes`` is flagged.

    Parameters
    ----------
    udm2
        As :func:`open_udm2` gives it.
    classes
        Names from :data:`UDM2_CLASSES`; default cloud, heavy haze and shadow. On UDM2.1
        all haze is ``"light_haze"``.

    Its ``encoding["source"]`` names ``udm2``'s file, passed on as :func:`open_udm2` says.
    """
    classes = check_classes(classes)
    mask = (udm2.sel(band=list(classes)) != 0).any("band")
    mask.attrs = {"long_name": "cloud mask, True = cloud", "source": "Planet UDM2"}
    mask.attrs["udm2_classes"] = ", ".join(classes)
    return _read_from(mask.rename("cloudmask"), udm2)


def unusable_bits(band_count: int = len(BANDS)) -> int:
    """The bits of the legacy UDM (UDM2 band 8) that make a pixel of a ``band_count``-band
    image unusable: blackfill (bit 0) and any of its bands missing or suspect (bits 2 to
    ``1 + band_count``: a band lost in downlink reads 0 or garbage, not reflectance).

    Examples
    --------
    >>> bin(unusable_bits(4))  # PlanetScope 4-band: bits 0, 2, 3, 4, 5
    '0b111101'
    """
    return BLACKFILL_BIT | sum(FIRST_BAND_BIT << band for band in range(band_count))


def udm2_nodata(udm2: xr.DataArray, band_count: int = len(BANDS)) -> xr.DataArray:
    """True (y, x) where the UDM2 makes a pixel of a ``band_count``-band image unusable
    (band 8, :func:`unusable_bits`): not imaged (blackfill), or one of its bands missing
    or suspect.

    Its ``encoding["source"]`` names ``udm2``'s file, passed on as :func:`open_udm2` says.
    """
    nodata = (udm2.sel(band="udm1", drop=True) & unusable_bits(band_count)) != 0
    nodata.attrs = {"long_name": "unusable (UDM2 blackfill or band missing/suspect)"}
    return _read_from(nodata.rename("nodata"), udm2)


def mask_nodata(optical: xr.DataArray, nodata: xr.DataArray) -> xr.DataArray:
    """``optical`` with ``OPTICAL_NODATA`` (0) where ``nodata`` is True, attrs kept.

    0 is the library's optical nodata: decloud and the metrics read it as such.

    Its ``encoding["source"]`` names the files of ``optical`` and ``nodata``, passed on
    as :func:`open_udm2` says.
    """
    masked = optical.where(~nodata, OPTICAL_NODATA).astype(optical.dtype)
    masked.attrs = {
        **optical.attrs,
        "nodata_source": "Planet UDM2 blackfill or band missing/suspect",
    }
    return _read_from(masked, optical, nodata)


# ----------------------------------------------------------------------------- estimate
def _require_bands(cloudy: xr.DataArray, needed: Sequence[str]) -> None:
    have = [str(b) for b in cloudy["band"].values] if "band" in cloudy.coords else []
    missing = [b for b in needed if b not in have]
    if missing:
        raise SchemaError(
            f"{cloudy.name or 'cloudy'}: band(s) {', '.join(missing)} missing (bands: "
            f"{', '.join(have) or 'none'}); estimating a cloud mask needs {', '.join(needed)}"
        )


def estimate_cloudmask(
    cloudy: xr.DataArray,
    *,
    clear_line_slope: float = ESTIMATE_DEFAULTS["clear_line_slope"],
    hot_threshold: float = ESTIMATE_DEFAULTS["hot_threshold"],
    brightness_threshold: float = ESTIMATE_DEFAULTS["brightness_threshold"],
    whiteness_threshold: float = ESTIMATE_DEFAULTS["whiteness_threshold"],
    ndvi_threshold: float = ESTIMATE_DEFAULTS["ndvi_threshold"],
) -> xr.DataArray:
    """Estimate a cloud mask from the blue, green, red and NIR reflectance (x10000).

    A pixel is cloud when all four tests hold:

    - haze-optimised transform (Zhang et al. 2002): ``HOT = blue sin(t) - red cos(t)``,
      with ``t = atan(clear_line_slope)`` the angle of the clear-sky line ``red =
      clear_line_slope * blue``, is above ``hot_threshold`` (haze and cloud scatter blue
      more than the ground does). Fmask's ``blue - 0.5 red - 0.08 > 0`` is slope 2;
    - brightness, the mean of the visible bands, above ``brightness_threshold``;
    - whiteness (Fmask): ``sum(|band - mean|) / mean`` over the visible bands below
      ``whiteness_threshold``: clouds are flat across the visible spectrum;
    - NDVI below ``ndvi_threshold``: bright vegetation is not cloud.

    Nodata pixels (0 in every band) are never cloud. The test is pixel-wise: lazy on
    Dask, and the result does not depend on the chunking.

    The defaults were tuned on the two M3R-CR samples (IoU 0.69 and 0.55 against the
    dataset's masks): two patches are not a validation set. The test misses thin cloud
    over dark ground and flags bright, flat surfaces (snow, sand, roofs, bare soil).

    Parameters
    ----------
    cloudy
        (band, y, x) reflectance x10000 with bands ``blue``, ``green``, ``red``, ``nir``.

    Returns
    -------
    xr.DataArray
        (y, x) bool ``cloudmask``, ``attrs["estimated"] = 1`` with the method and its
        thresholds.

    Raises
    ------
    SchemaError
        A band is missing.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> values = np.array([[[5000, 800]], [[5100, 900]], [[5200, 700]], [[5300, 3000]]])
    >>> cloudy = xr.DataArray(values, dims=("band", "y", "x"),
    ...                       coords={"band": ["blue", "green", "red", "nir"]})
    >>> mask = estimate_cloudmask(cloudy)
    >>> mask.values.tolist(), mask.attrs["estimated"]
    ([[True, False]], 1)
    """
    _require_bands(cloudy, BANDS)
    blue, green, red, nir = (cloudy.sel(band=b, drop=True).astype(np.float32) for b in BANDS)
    angle = np.arctan(clear_line_slope)
    hot = blue * np.float32(np.sin(angle)) - red * np.float32(np.cos(angle))
    brightness = (blue + green + red) / 3
    deviation = abs(blue - brightness) + abs(green - brightness) + abs(red - brightness)
    # whiteness and NDVI as products, not ratios: no 0/0 on nodata (0 in every band),
    # where every comparison is False, so nodata is never cloud
    mask = (
        (hot > hot_threshold)
        & (brightness > brightness_threshold)
        & (deviation < whiteness_threshold * brightness)
        & (nir - red < ndvi_threshold * (nir + red))
    )
    mask.attrs = {
        "long_name": "estimated cloud mask, True = cloud",
        "estimated": 1,
        "method": "HOT (Zhang et al. 2002), brightness, whiteness (Fmask), NDVI",
        "clear_line_slope": clear_line_slope,
        "hot_threshold": hot_threshold,
        "brightness_threshold": brightness_threshold,
        "whiteness_threshold": whiteness_threshold,
        "ndvi_threshold": ndvi_threshold,
    }
    return mask.rename("cloudmask")


def warn_if_estimated(mask: xr.DataArray, what: str, stacklevel: int = 3) -> None:
    """An :class:`M3RCRWarning` when ``mask`` is an estimate (``attrs["estimated"]``)."""
    if mask.attrs.get("estimated"):
        warnings.warn(
            f"{what} uses an estimated cloud mask ({mask.attrs.get('method', 'spectral test')}"
            "), not one delivered with the data: expect missed thin cloud and bright "
            "surfaces taken for cloud",
            M3RCRWarning,
            stacklevel=stacklevel,
        )
