import dask
import dask.array as da
import xarray as xr

from m3rcr_xr.resources import annotate, required_resources


def _dataset(resources):
    with annotate(resources):
        data = da.ones((4, 4), chunks=2) + 1
    return xr.Dataset({"v": (("y", "x"), data)})


def test_annotate_puts_resources_on_the_tasks_built_inside():
    ds = _dataset({"GPU": 1})
    assert required_resources(ds) == {"GPU": 1}


def test_no_resources_no_annotation():
    assert required_resources(_dataset(None)) is None
    assert required_resources(_dataset({})) is None


def test_annotate_without_resources_is_a_no_op():
    with annotate(None):
        assert dask.get_annotations() == {}


def test_in_memory_data_asks_for_nothing():
    assert required_resources(xr.Dataset({"v": (("y",), [1, 2])})) is None


def test_resources_are_found_behind_later_operations():
    ds = _dataset({"GPU": 1})
    assert required_resources((ds * 2).isel(y=slice(1, 3))) == {"GPU": 1}
