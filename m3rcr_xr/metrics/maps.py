"""Per-pixel maps: where in the image a prediction is good or bad.

The public per-pixel API: :func:`ssim_map` and :func:`sam_map` for looking at (or
plotting) the metrics pixel by pixel, and :func:`pixel_quantities`, the per-pixel
values whose grouped sums give every metric of :func:`~m3rcr_xr.metrics.evaluate`.
They run the same kernels as ``evaluate``, but under dask as a halo exchange
(``map_overlap``-style: each chunk waits for its neighbours' edges), which is right for
a map and not for a reduction over a large scene; the tests use ``pixel_quantities`` as
an independent path to the streamed sums.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .dispatch import map_with_halo
from .inputs import PIXEL_DIMS, require_dims
from .kernels import HALO, QUANTITIES, quantities_block, spectral_angle, ssim_same


def _ssim_block(pred: np.ndarray, target: np.ndarray, halo: int) -> np.ndarray:
    return ssim_same(pred, target)[..., halo:-halo, halo:-halo]


def ssim_map(pred: xr.DataArray, target: xr.DataArray) -> xr.DataArray:
    """Per-band SSIM map of two images normalised to [0, 1].

    Zero padding at the image edge; under dask each chunk gets a 5-pixel halo from its
    neighbours, so no value depends on the chunking.

    Parameters
    ----------
    pred, target
        Normalised images with dims ``y`` and ``x`` (and any others, e.g. ``band``).

    Returns
    -------
    xarray.DataArray
        float32 SSIM per pixel and band, dims of ``pred``.
    """
    require_dims(pred, PIXEL_DIMS, "pred")
    p = pred.astype(np.float32).transpose(..., *PIXEL_DIMS)
    t = target.astype(np.float32).transpose(*p.dims)
    data = map_with_halo(
        _ssim_block, p.data, t.data, halo=HALO, dtype=np.float32, token="m3rcr-ssim-map"
    )
    return p.copy(data=data).transpose(*pred.dims).rename("SSIM")


def sam_map(pred: xr.DataArray, target: xr.DataArray, dim: str = "band") -> xr.DataArray:
    """Spectral angle in degrees per pixel between ``pred`` and ``target`` along ``dim``.

    Computed in float32 as the reference does (squared norms clipped below at float16
    eps, cosine clipped to [-1, 1]).
    """
    require_dims(pred, (dim,), "pred")
    p, t = pred.astype(np.float32), target.astype(np.float32)
    angle = spectral_angle((p * t).sum(dim), (p * p).sum(dim), (t * t).sum(dim))
    return angle.rename("SAM").assign_attrs(units="degree")


def pixel_quantities(pred: xr.DataArray, target: xr.DataArray) -> xr.DataArray:
    """The per-pixel quantities whose grouped sums give every metric.

    Parameters
    ----------
    pred, target
        Optical images in reflectance x10000, dims ``([patch,] band, y, x)``, on the same
        grid and with the same chunks (``band`` in one chunk).

    Returns
    -------
    xarray.DataArray
        float64, dims ``(quantity, [patch,] y, x)``, quantities
        :data:`~m3rcr_xr.metrics.kernels.QUANTITIES`; lazy when the inputs are dask arrays.
    """
    data = map_with_halo(
        quantities_block,
        pred.data,
        target.data,
        halo=HALO,
        dtype=np.float64,
        token="m3rcr-metric-quantities",
        size3=len(QUANTITIES),
    )
    dims = [d for d in pred.dims if d != "band"]
    return xr.DataArray(
        np.moveaxis(data, -3, 0), dims=("quantity", *dims), coords={"quantity": list(QUANTITIES)}
    )
