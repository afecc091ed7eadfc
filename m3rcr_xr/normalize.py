"""The one normalisation that models and metrics share (the M3R-CR convention).

- optical: surface reflectance x10000 clipped to [0, 10000], divided by 10000;
- SAR (dB): VV clipped to [-25, 0], VH to [-32.5, 0], each shifted and scaled to [0, 1].

The functions use only ``.clip`` and arithmetic, so they work unchanged on NumPy and
Dask arrays, xarray objects and torch tensors. SAR functions take the polarization axis
(or, for xarray objects, the ``polarization`` dim) into account.

Examples
--------
>>> import numpy as np
>>> normalize_optical(np.array([0, 5000, 12000]))
array([0. , 0.5, 1. ])
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import xarray as xr

from .exceptions import SchemaError
from .schema import POLARIZATIONS

T = TypeVar("T")

OPTICAL_SCALE = 10000.0
SAR_RANGE_DB: dict[str, tuple[float, float]] = {"VV": (-25.0, 0.0), "VH": (-32.5, 0.0)}


def normalize_optical(values: T) -> T:
    """Reflectance x10000 to [0, 1]: clip to [0, 10000], divide by 10000."""
    return values.clip(0, OPTICAL_SCALE) / OPTICAL_SCALE  # type: ignore[attr-defined]


def denormalize_optical(values: T) -> T:
    """[0, 1] back to reflectance x10000 (clipped to the valid range first)."""
    return values.clip(0.0, 1.0) * OPTICAL_SCALE  # type: ignore[attr-defined]


def _sar_bounds(polarizations: tuple[str, ...], ndim: int, axis: int) -> tuple[Any, Any]:
    unknown = [p for p in polarizations if p not in SAR_RANGE_DB]
    if unknown:
        raise SchemaError(f"sar: unknown polarization(s) {unknown}; expected {POLARIZATIONS}")
    shape = [1] * ndim
    shape[axis] = len(polarizations)
    low = np.array([SAR_RANGE_DB[p][0] for p in polarizations], dtype="float32").reshape(shape)
    high = np.array([SAR_RANGE_DB[p][1] for p in polarizations], dtype="float32").reshape(shape)
    return low, high


def normalize_sar(values: Any, polarizations: tuple[str, ...] = POLARIZATIONS, axis: int = -3):
    """SAR backscatter in dB to [0, 1], per polarization.

    Parameters
    ----------
    values
        An xarray object with a ``polarization`` dim, or an array / tensor whose
        ``axis`` runs over ``polarizations`` (default: channels of (..., C, H, W)).
    """
    if isinstance(values, (xr.DataArray, xr.Dataset)):
        pols = tuple(str(p) for p in values["polarization"].values)
        low, high = (xr.DataArray(b, dims="polarization") for b in _sar_bounds(pols, 1, 0))
        return ((values.clip(low, high) - low) / (high - low)).astype("float32")
    low, high = _sar_bounds(tuple(polarizations), values.ndim, axis)
    if not isinstance(values, np.ndarray) and type(values).__module__.startswith("torch"):
        low = values.new_tensor(low)
        high = values.new_tensor(high)
        return (values.clamp(min=low, max=high) - low) / (high - low)
    return (np.clip(values, low, high) - low) / (high - low)


def model_inputs(ds: xr.Dataset) -> xr.DataArray:
    """Normalised network input, (…, 6, y, x) float32: 4 optical bands, then VV, VH.

    SAR pixels without data (NaN) are set to 0 (the low end of the range).
    """
    optical = normalize_optical(ds["cloudy"].astype(np.float32)).rename(band="channel")
    sar = normalize_sar(ds["sar"]).fillna(0.0).rename(polarization="channel")
    stacked = xr.concat([optical.drop_vars("channel"), sar.drop_vars("channel")], "channel")
    return stacked.astype(np.float32).transpose(..., "channel", "y", "x")
