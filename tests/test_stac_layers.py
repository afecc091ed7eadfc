"""The scene's layers from STAC items (m3rcr_xr.stac.layers): SAR power in dB."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from m3rcr_xr.stac import layers


def test_to_db_floors_zero_power():
    power = xr.DataArray(np.array([1e-3, 0.0, -1.0, np.nan], dtype=np.float32))
    db = layers.to_db(power).values
    np.testing.assert_allclose(db[:3], [-30.0, layers.SAR_DB_FLOOR, layers.SAR_DB_FLOOR])
    assert np.isnan(db[3]) and pytest.approx(-50.0) == layers.SAR_DB_FLOOR
