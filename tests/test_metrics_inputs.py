"""metrics.inputs: names and DataArrays resolved, grids checked."""

from __future__ import annotations

import pytest
import rioxarray  # noqa: F401 - registers .rio

from m3rcr_xr import SchemaError, metrics
from tests.metrics_scenes import assert_same_result, make_scene


def test_band_order_of_the_prediction_does_not_matter():
    ds = make_scene(seed=7)
    reordered = ds.decloud.isel(band=[3, 1, 0, 2])
    assert_same_result(metrics.evaluate(ds, reordered), metrics.evaluate(ds))


def test_dataarray_inputs_without_a_dataset():
    ds = make_scene(seed=9)
    result = metrics.evaluate(
        None, ds.decloud, ds.cloudfree, landcover=ds.landcover, cloudmask=ds.cloudmask
    )
    assert_same_result(result, metrics.evaluate(ds))


def test_grids_that_do_not_match_are_refused():
    ds = make_scene(seed=17)
    with pytest.raises(SchemaError, match="y has 47 pixels"):
        metrics.evaluate(ds, ds.decloud.isel(y=slice(1, None)).drop_vars("y"))
    shifted = ds.decloud.assign_coords(x=ds.x + 3.0)
    with pytest.raises(SchemaError, match="coordinate 'x' differs"):
        metrics.evaluate(ds, shifted)
    other_crs = ds.decloud.rio.write_crs("EPSG:32633")
    with pytest.raises(SchemaError, match="CRS"):
        metrics.evaluate(ds, other_crs)
    with pytest.raises(SchemaError, match="landcover: grid does not match"):
        metrics.evaluate(ds, landcover=ds.landcover.isel(x=slice(0, 10)))


def test_missing_variables_are_named():
    ds = make_scene(seed=18)
    with pytest.raises(SchemaError, match="'cloudfree' is missing"):
        metrics.evaluate(ds.drop_vars("cloudfree"))
    with pytest.raises(SchemaError, match="'decloud' is missing"):
        metrics.evaluate(ds.drop_vars("decloud"))
    with pytest.raises(SchemaError, match="'landcover' is missing.*landcover=None"):
        metrics.evaluate(ds.drop_vars("landcover"))
    with pytest.raises(SchemaError, match="'cloudmask' is missing"):
        metrics.evaluate(ds.drop_vars("cloudmask"))
    assert metrics.evaluate(ds.drop_vars("cloudmask"), strata=("all",)).sizes["stratum"] == 1
