"""Pure per-chunk kernels on NumPy arrays: per-pixel quantities and group labels.

Everything here takes and returns bare NumPy arrays laid out as ``(..., band, y, x)``
(images) or ``(..., y, x)`` (layers); nothing knows about dask or xarray. The
definitions follow the reference ``Align-CR/metrics.py`` (see the package docstring).
"""

from __future__ import annotations

from math import exp
from typing import Any

import numpy as np
from scipy import ndimage

from ..landcover import NODATA_CODE, WORLDCOVER_CODES, code_to_index, is_code
from ..normalize import normalize_optical

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: halo of a chunk for the SSIM windows: half the window
HALO = SSIM_WINDOW // 2
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
#: squared norms are clipped below at this value in SAM (the reference's choice)
SAM_EPS = float(np.finfo(np.float16).eps)

#: per-pixel quantities that are summed per group, in this order; ``nan_pred`` flags a
#: prediction that is NaN or infinite in any band, ``nan_in_valid`` those of valid pixels
QUANTITIES: tuple[str, ...] = (
    "n_valid",
    "n_nodata",
    "abs_error",
    "sq_error",
    "sam",
    "ssim",
    "nan_in_valid",
    "nan_pred",
    "pred_nodata",
)
#: land-cover code of each group: the WorldCover codes, nodata (0), then -1 for codes
#: that are not WorldCover's; a pixel's group label is the position of its code here,
#: plus ``len(GROUP_CODES)`` under the cloud mask
GROUP_CODES: tuple[int, ...] = (*WORLDCOVER_CODES, NODATA_CODE, -1)
N_CODES = len(WORLDCOVER_CODES)
NODATA_LABEL = N_CODES
UNKNOWN_LABEL = N_CODES + 1
N_LABELS = 2 * len(GROUP_CODES)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The reference's 1-D SSIM window: float32, centred at ``size / 2``, normalised.

    The reference evaluates ``exp(-(i - size/2)**2 / (2 sigma**2))`` for ``i = 0..size-1``,
    so for size 11 the centre is 5.5, not 5 (taps 5 and 6 are equal); the 2-D window is
    the outer product of this vector with itself.
    """
    taps = np.array(
        [exp(-((i - size / 2) ** 2) / (2 * sigma**2)) for i in range(size)], dtype=np.float32
    )
    return taps / taps.sum()


_WINDOW = gaussian_window().astype(np.float64)


def _blur(image: np.ndarray) -> np.ndarray:
    """Correlate the last two axes with the SSIM window, zero padding at the edge."""
    rows = ndimage.correlate1d(image, _WINDOW, axis=-2, mode="constant", output=np.float32)
    return ndimage.correlate1d(rows, _WINDOW, axis=-1, mode="constant", output=np.float32)


def ssim_same(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """SSIM map of normalised float32 images (..., y, x), same shape, zero padded."""
    mu1, mu2 = _blur(pred), _blur(target)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    var1 = _blur(pred * pred) - mu1_sq
    var2 = _blur(target * target) - mu2_sq
    cov = _blur(pred * target) - mu12
    c1, c2 = np.float32(SSIM_C1), np.float32(SSIM_C2)
    return ((2 * mu12 + c1) * (2 * cov + c2)) / ((mu1_sq + mu2_sq + c1) * (var1 + var2 + c2))


def spectral_angle(dot: Any, norm1: Any, norm2: Any) -> Any:
    """Angle in degrees from a dot product and squared norms (float32, clipped); NumPy,
    Dask or xarray arrays."""
    eps = np.float32(SAM_EPS)
    cosine = dot / np.sqrt(np.maximum(norm1, eps) * np.maximum(norm2, eps))
    # ufuncs, not np.clip: xarray and dask dispatch them lazily, np.clip computes
    cosine = np.minimum(np.maximum(cosine, -1), 1)
    return np.arccos(cosine) / np.float32(np.pi) * np.float32(180)


def pred_nodata(pred_raw: np.ndarray) -> np.ndarray:
    """Pixels where the prediction has no data: an integer one 0 in any band, a float
    one NaN in every band (decloud's nodata, where ``cloudy`` had none)."""
    if np.issubdtype(pred_raw.dtype, np.integer):
        return (pred_raw == 0).any(axis=-3)
    return np.isnan(pred_raw).all(axis=-3)


def excluded_pixels(pred_raw: np.ndarray, target_raw: np.ndarray) -> np.ndarray:
    """Pixels excluded as nodata: target 0 / NaN / +-inf in any band, or prediction
    nodata (:func:`pred_nodata`).

    Tested on the raw values: the normalisation clips +-inf to 0 and 1.
    """
    excluded = ((target_raw == 0) | ~np.isfinite(target_raw)).any(axis=-3)
    return excluded | pred_nodata(pred_raw)


def _band_sum(values: np.ndarray) -> np.ndarray:
    return values.sum(axis=-3, dtype=np.float64)


def quantities_block(pred_raw: np.ndarray, target_raw: np.ndarray, halo: int) -> np.ndarray:
    """Per-pixel quantities of one block (..., band, y, x) that carries a ``halo``.

    Returns float64 (..., quantity, y - 2 halo, x - 2 halo), quantities as in
    :data:`QUANTITIES`; the sums are zero on excluded pixels.
    """
    p = normalize_optical(pred_raw.astype(np.float32, copy=False))
    t = normalize_optical(target_raw.astype(np.float32, copy=False))
    excluded = excluded_pixels(pred_raw, target_raw)
    nan_pred = ~np.isfinite(pred_raw).all(axis=-3)  # any band
    keep = ~excluded[..., None, :, :]
    p, t = np.where(keep, p, np.float32(0)), np.where(keep, t, np.float32(0))
    ssim = np.stack(
        [ssim_same(p[..., b, :, :], t[..., b, :, :]) for b in range(p.shape[-3])], axis=-3
    )
    rows, cols = slice(halo, p.shape[-2] - halo), slice(halo, p.shape[-1] - halo)
    p, t, ssim = p[..., rows, cols], t[..., rows, cols], ssim[..., rows, cols]
    valid, nan_pred = ~excluded[..., rows, cols], nan_pred[..., rows, cols]
    error = p - t
    angle = spectral_angle((p * t).sum(axis=-3), (p * p).sum(axis=-3), (t * t).sum(axis=-3))
    sums = np.stack(
        [
            _band_sum(np.abs(error)),
            _band_sum(error * error),
            angle.astype(np.float64),
            _band_sum(ssim),
        ],
        axis=-3,
    )
    sums = np.where(valid[..., None, :, :], sums, 0.0)
    no_pred = pred_nodata(pred_raw[..., rows, cols])
    flags = [valid, ~valid, nan_pred & valid, nan_pred, no_pred]
    flags = [f.astype(np.float64)[..., None, :, :] for f in flags]
    return np.concatenate([flags[0], flags[1], sums, *flags[2:]], axis=-3)


_CODE_INDEX = code_to_index(2).astype(np.int16)  # WorldCover code -> position 0..10, or -1


def labels_block(landcover: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Group label per pixel: position of the code in :data:`GROUP_CODES`, + 13 if cloudy."""
    codes = np.asarray(landcover)
    missing = codes == NODATA_CODE
    if codes.dtype == np.uint8:
        index = _CODE_INDEX[codes]
    else:
        known = is_code(codes)
        index = np.where(known, _CODE_INDEX[np.where(known, codes, 0).astype(np.intp)], -1)
        missing |= np.isnan(codes) if codes.dtype.kind == "f" else False
    index = np.where(index < 0, UNKNOWN_LABEL, index)
    index = np.where(missing, NODATA_LABEL, index).astype(np.int16)
    return index + np.int16(len(GROUP_CODES)) * (np.asarray(cloud) != 0).astype(np.int16)
