import numpy as np
import pytest
import xarray as xr

import m3rcr_xr
from m3rcr_xr.schema import validate


def test_synthetic_scene_is_valid(small_scene):
    assert validate(small_scene) is small_scene
    assert small_scene.rio.crs is not None


def test_missing_cloudy_is_named(small_scene):
    with pytest.raises(m3rcr_xr.SchemaError, match="cloudy: required"):
        validate(small_scene.drop_vars("cloudy"))


def test_optional_variables_may_be_absent(small_scene):
    cloudy_only = small_scene.drop_vars(["cloudfree", "sar", "landcover", "cloudmask"])
    assert validate(cloudy_only) is cloudy_only


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ds: ds.assign(sar=ds.sar.astype("float64")), "sar: dtype is float64"),
        (lambda ds: ds.assign(landcover=ds.landcover.T), r"landcover: dims are \('x', 'y'\)"),
        (lambda ds: ds.assign_coords(band=["b", "g", "r", "n"]), "band: labels"),
        (lambda ds: ds.drop_vars("spatial_ref"), "no CRS"),
        (
            lambda ds: ds.assign_coords(x=np.r_[0.0, np.cumsum(np.arange(1, ds.sizes["x"]))]),
            "x: coordinate is not regularly spaced",
        ),
    ],
)
def test_schema_errors_name_the_variable(small_scene, change, message):
    with pytest.raises(m3rcr_xr.SchemaError, match=message):
        validate(change(small_scene))


def test_not_a_dataset():
    with pytest.raises(m3rcr_xr.SchemaError, match="expected an xarray.Dataset"):
        validate(xr.DataArray([1]))


def test_collection_needs_per_patch_coordinates(small_scene):
    collection = xr.concat([small_scene.drop_vars(["x", "y", "spatial_ref"])] * 2, dim="patch")
    with pytest.raises(m3rcr_xr.SchemaError, match=r"y\(patch, y\)"):
        validate(collection)


def test_repeated_patch_ids_are_refused():
    collection = m3rcr_xr.synthetic_collection(4, 16).assign_coords(patch=["a", "b", "a", "b"])
    with pytest.raises(m3rcr_xr.SchemaError, match="patch: ids must be unique.*repeated: 'a', 'b'"):
        validate(collection)
