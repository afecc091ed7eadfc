import inspect

import pytest
import xarray as xr

import m3rcr_xr
from m3rcr_xr import inference, metrics, schema, store
from m3rcr_xr.testing import TINY, raise_if_dask_computes


@pytest.mark.parametrize(
    ("method", "func"),
    [
        ("validate", schema.validate),
        ("to_zarr", store.to_zarr),
        ("decloud", inference.decloud),
        ("evaluate", metrics.evaluate),
    ],
)
def test_methods_take_the_parameters_of_their_function(method, func):
    bound = getattr(m3rcr_xr.synthetic_scene((32, 32)).m3rcr, method)
    expected = list(inspect.signature(func).parameters.values())[1:]  # less the dataset
    assert list(inspect.signature(bound).parameters.values()) == expected
    assert bound.__doc__ == func.__doc__


def test_one_class_on_both_kinds_of_object():
    scene = m3rcr_xr.synthetic_scene((32, 32))
    assert type(scene.m3rcr) is type(scene["cloudy"].m3rcr)
    assert scene.m3rcr.is_collection is scene["cloudy"].m3rcr.is_collection is False
    collection = m3rcr_xr.synthetic_collection(2, 32)
    assert collection.m3rcr.is_collection and collection["cloudy"].m3rcr.is_collection


@pytest.mark.parametrize("method", ["validate", "to_zarr", "decloud", "evaluate"])
def test_dataset_methods_refuse_a_dataarray(method):
    array = m3rcr_xr.synthetic_scene((32, 32))["cloudy"]
    with pytest.raises(m3rcr_xr.UsageError, match=rf"\.m3rcr\.{method}\(\) needs a Dataset"):
        getattr(array.m3rcr, method)("unused")


def test_validate_returns_the_scene_and_forwards_required():
    scene = m3rcr_xr.synthetic_scene((32, 32))
    assert scene.m3rcr.validate() is scene
    with pytest.raises(m3rcr_xr.SchemaError, match="decloud"):
        scene.m3rcr.validate(required=("decloud",))


def test_to_zarr_writes_what_the_function_writes(tmp_path):
    scene = m3rcr_xr.synthetic_scene((32, 32))
    scene.m3rcr.to_zarr(tmp_path / "a.zarr")
    m3rcr_xr.to_zarr(scene, tmp_path / "b.zarr")
    xr.testing.assert_identical(
        m3rcr_xr.open_zarr(tmp_path / "a.zarr").load(),
        m3rcr_xr.open_zarr(tmp_path / "b.zarr").load(),
    )
    with pytest.raises(m3rcr_xr.StoreError):
        scene.m3rcr.to_zarr(store=tmp_path / "a.zarr")  # keywords as the function's


def test_decloud_and_evaluate_match_the_functions(small_scene, tiny_checkpoint):
    kwargs = {"config": TINY, "tile": 64, "device": "cpu"}
    with raise_if_dask_computes():
        lazy = small_scene.m3rcr.decloud("dsen2_cr", tiny_checkpoint, **kwargs)
    expected = m3rcr_xr.decloud(small_scene, "dsen2_cr", tiny_checkpoint, **kwargs)
    xr.testing.assert_identical(lazy.compute(), expected.compute())
    scene = small_scene.assign(decloud=expected)
    xr.testing.assert_identical(
        scene.m3rcr.evaluate(level=None), m3rcr_xr.evaluate(scene, level=None)
    )
