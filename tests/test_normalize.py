import numpy as np
import pytest
import torch
import xarray as xr

from m3rcr_xr.exceptions import SchemaError
from m3rcr_xr.normalize import (
    denormalize_optical,
    normalize_optical,
    normalize_sar,
)


def test_optical_clip_and_scale():
    values = np.array([0, 2500, 10000, 12000], dtype=np.uint16)
    np.testing.assert_allclose(normalize_optical(values), [0, 0.25, 1, 1])
    np.testing.assert_allclose(
        denormalize_optical(normalize_optical(values)), [0, 2500, 10000, 10000]
    )


def test_sar_per_polarization_ranges():
    sar = np.array([[[-30.0, -12.5, 5.0]], [[-40.0, -16.25, 0.0]]], dtype=np.float32)  # (2,1,3)
    out = normalize_sar(sar)
    np.testing.assert_allclose(out[0, 0], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(out[1, 0], [0.0, 0.5, 1.0])


def test_sar_same_on_numpy_torch_and_xarray():
    rng = np.random.default_rng(0)
    sar = rng.uniform(-40, 10, size=(3, 2, 5, 5)).astype(np.float32)
    expected = normalize_sar(sar)
    np.testing.assert_allclose(normalize_sar(torch.from_numpy(sar)).numpy(), expected, rtol=1e-6)
    da = xr.DataArray(
        sar, dims=("t", "polarization", "y", "x"), coords={"polarization": ["VV", "VH"]}
    )
    np.testing.assert_allclose(normalize_sar(da).values, expected, rtol=1e-6)


def test_sar_unknown_polarization():
    with pytest.raises(SchemaError, match="unknown polarization"):
        normalize_sar(np.zeros((1, 2, 2)), polarizations=("HH",))
    da = xr.DataArray(np.zeros((2, 2, 2)), dims=("polarization", "y", "x"))
    with pytest.raises(SchemaError, match=r"sar: unknown polarization\(s\) \['HH'\]"):
        normalize_sar(da.assign_coords(polarization=["VV", "HH"]))
