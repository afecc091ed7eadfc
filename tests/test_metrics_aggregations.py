"""metrics.aggregations: each variable declared once; PSNR from the MSE."""

from __future__ import annotations

import numpy as np
import xarray as xr

from m3rcr_xr import metrics
from tests.metrics_scenes import make_scene


def test_each_result_variable_is_declared_once_with_its_sums_and_attrs():
    names = [agg.name for agg in metrics.AGGREGATIONS]
    assert names == [*metrics.METRICS, "n_pixels", "n_nodata"]
    for agg in metrics.AGGREGATIONS:
        assert set(agg.sums) <= set(metrics.QUANTITIES), agg.name
        assert agg.attrs["units"] and agg.attrs["long_name"], agg.name
    result = metrics.evaluate(make_scene(seed=3), level=1)
    assert list(result.data_vars) == names
    assert {name: dict(result[name].attrs) for name in names} == {
        agg.name: dict(agg.attrs) for agg in metrics.AGGREGATIONS
    }


def test_psnr_from_mse_caps_a_perfect_prediction_at_100():
    values = metrics.psnr(xr.DataArray([0.01, 0.0, np.nan]))
    np.testing.assert_allclose(values.values, [20.0, 100.0, np.nan])
