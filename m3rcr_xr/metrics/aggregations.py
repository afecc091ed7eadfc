"""Each metric declared once, as data: the sums it needs, how it finishes, its attributes.

Like flox's ``Aggregation``: an :class:`Aggregation` names the summed per-pixel
quantities (:data:`~m3rcr_xr.metrics.kernels.QUANTITIES`) it reads and the function
that turns their cell sums into the value; ``over_patches`` says how the per-patch
protocol combines patches. :func:`metrics_from_sums` and :func:`mean_over_patches` are
loops over :data:`AGGREGATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import xarray as xr

#: PSNR reported when the MSE is exactly 0 (the reference's convention)
PSNR_IF_PERFECT = 100.0


def psnr(mse: Any) -> Any:
    """PSNR in dB of images in [0, 1] from their MSE: ``20 log10(1 / sqrt(MSE))``.

    An MSE of exactly 0 gives 100 (the reference's convention), a NaN MSE gives NaN.
    """
    mse = xr.DataArray(mse) if not isinstance(mse, xr.DataArray) else mse
    positive = mse.where(mse > 0)
    value = 20 * np.log10(1 / np.sqrt(positive))
    return xr.where(mse == 0, PSNR_IF_PERFECT, value)


@dataclass(frozen=True)
class Aggregation:
    """One variable of the result, computed from cell sums.

    Parameters
    ----------
    name
        Variable name in the result.
    sums
        The summed quantities ``finalize`` takes, in order.
    finalize
        ``finalize(*sums, n_bands)``: the value per cell (NaN where it has no pixels).
    over_patches
        ``"mean"``: the per-patch protocol averages it over the patches that have it
        (a metric); ``"sum"``: it adds up (a count).
    attrs
        Attributes of the variable (``units``, ``long_name``).
    """

    name: str
    sums: tuple[str, ...]
    finalize: Callable[..., xr.DataArray]
    over_patches: Literal["mean", "sum"]
    attrs: Mapping[str, str] = field(default_factory=dict)


def _per_sample(total: xr.DataArray, n: xr.DataArray, n_bands: int) -> xr.DataArray:
    """Mean over the cell's pixels and bands."""
    return total / (n * n_bands).where(n > 0)


def _per_pixel(total: xr.DataArray, n: xr.DataArray, n_bands: int) -> xr.DataArray:
    return total / n.where(n > 0)


def _count(n: xr.DataArray, n_bands: int) -> xr.DataArray:
    return n.round().astype(np.int64)


AGGREGATIONS: tuple[Aggregation, ...] = (
    Aggregation(
        "PSNR",
        ("sq_error", "n_valid"),
        lambda sq, n, n_bands: psnr(_per_sample(sq, n, n_bands)),
        "mean",
        {"units": "dB", "long_name": "peak signal-to-noise ratio (peak 1)"},
    ),
    Aggregation(
        "SSIM",
        ("ssim", "n_valid"),
        _per_sample,
        "mean",
        {"units": "1", "long_name": "structural similarity (11x11 Gaussian, sigma 1.5)"},
    ),
    Aggregation(
        "SAM",
        ("sam", "n_valid"),
        _per_pixel,
        "mean",
        {"units": "degree", "long_name": "spectral angle"},
    ),
    Aggregation(
        "MAE",
        ("abs_error", "n_valid"),
        _per_sample,
        "mean",
        {"units": "1", "long_name": "mean absolute error of reflectance in [0, 1]"},
    ),
    Aggregation(
        "RMSE",
        ("sq_error", "n_valid"),
        lambda sq, n, n_bands: xr.apply_ufunc(np.sqrt, _per_sample(sq, n, n_bands), dask="allowed"),
        "mean",
        {"units": "1", "long_name": "root mean squared error of reflectance in [0, 1]"},
    ),
    Aggregation(
        "n_pixels",
        ("n_valid",),
        _count,
        "sum",
        {"units": "pixel", "long_name": "valid pixels in the cell"},
    ),
    Aggregation(
        "n_nodata",
        ("n_nodata",),
        _count,
        "sum",
        {"units": "pixel", "long_name": "nodata pixels excluded from the cell"},
    ),
)
#: the metrics (averaged over patches by the per-patch protocol), in result order
METRICS: tuple[str, ...] = tuple(a.name for a in AGGREGATIONS if a.over_patches == "mean")


def metrics_from_sums(cells: xr.DataArray, n_bands: int) -> xr.Dataset:
    """Every variable of :data:`AGGREGATIONS` from cell sums (:func:`cell_sums`).

    Cells without valid pixels get NaN metrics.
    """
    result = xr.Dataset()
    for agg in AGGREGATIONS:
        sums = [cells.sel(quantity=name, drop=True) for name in agg.sums]
        result[agg.name] = agg.finalize(*sums, n_bands).assign_attrs(agg.attrs)
    return result


def mean_over_patches(per_patch: xr.Dataset) -> xr.Dataset:
    """The per-patch protocol's summary: each metric's mean over the patches that have it.

    Counts (``n_pixels``, ``n_nodata``) are summed; ``n_patches`` counts the patches
    averaged.
    """
    summary = xr.Dataset()
    for agg in AGGREGATIONS:
        values = per_patch[agg.name]
        if agg.over_patches == "mean":
            count = values.count("patch")
            values = values.sum("patch", skipna=True) / count.where(count > 0)
        else:
            values = values.sum("patch")
        summary[agg.name] = values.assign_attrs(agg.attrs)
    summary["n_patches"] = per_patch[METRICS[0]].count("patch").astype(np.int64)
    return summary
