"""metrics.inputs: names and DataArrays resolved, grids checked."""

from __future__ import annotations

import pytest
import rioxarray  # noqa: F401 - registers .rio
import xarray as xr

from m3rcr_xr import SchemaError, metrics
from m3rcr_xr.metrics.dispatch import is_lazy
from m3rcr_xr.synthetic import synthetic_collection
from m3rcr_xr.testing import raise_if_dask_computes
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


def test_a_prediction_without_bands_is_refused_naming_it():
    """A 2-D variable (a cloud mask, say) as ``pred``: a SchemaError naming it, not
    xarray's ValueError from a transpose."""
    ds = make_scene(seed=19)
    with pytest.raises(SchemaError, match=r"pred: dims \('y', 'x'\) lack \['band'\]"):
        metrics.evaluate(ds, ds.cloudmask.astype("float32"))


def test_missing_variables_are_named():
    ds = make_scene(seed=18)
    with pytest.raises(SchemaError, match="'cloudfree' is missing"):
        metrics.evaluate(ds.drop_vars("cloudfree"))
    with pytest.raises(SchemaError, match="'decloud' is missing"):
        metrics.evaluate(ds.drop_vars("decloud"))
    with pytest.raises(SchemaError, match="'landcover' is missing.*landcover=None"):
        metrics.evaluate(ds.drop_vars("landcover"))
    with pytest.raises(SchemaError, match=r"'cloudmask' is missing.*strata=\('all',\)"):
        metrics.evaluate(ds.drop_vars("cloudmask"))
    assert metrics.evaluate(ds.drop_vars("cloudmask"), strata=("all",)).sizes["stratum"] == 1
    no_cloudmask = r"strata other than 'all' need a cloud mask \(pass strata=\('all',\)"
    with pytest.raises(SchemaError, match=no_cloudmask):
        metrics.evaluate(ds, cloudmask=None)
    with pytest.raises(SchemaError, match=no_cloudmask):
        metrics.evaluate_semantic(ds, cloudmask=None, classifier="untrained")


def _collection(seed: int) -> xr.Dataset:
    """An in-memory collection: patch coordinates and 2-D ``x``, ``y`` as open_m3rcr's."""
    ds = synthetic_collection(3, 32, seed=seed)
    return ds.assign(decloud=(ds.cloudy / 2 + ds.cloudfree / 2).astype("float32")).compute()


@pytest.mark.parametrize("protocol", ["pooled", "per_patch"])
def test_a_collection_chunked_by_patch_is_checked_without_computing(protocol):
    """Chunking makes the non-index coordinates (epsg, aoi..., the 2-D x and y) dask
    arrays: the grid check compares them by graph, never by computing them."""
    ds = _collection(seed=21)
    lazy = ds.chunk({"patch": 1})
    assert is_lazy(lazy.epsg) and is_lazy(lazy.x)
    with raise_if_dask_computes():
        same_graph = metrics.evaluate(lazy, protocol=protocol, compute=False)
        in_memory_pred = metrics.evaluate(lazy, ds.decloud, protocol=protocol, compute=False)
    expected = metrics.evaluate(ds, protocol=protocol)
    assert_same_result(same_graph.compute(), expected)
    assert_same_result(in_memory_pred.compute(), expected)


@pytest.mark.parametrize("protocol", ["pooled", "per_patch"])
def test_dask_coordinates_that_differ_are_refused_when_computed(protocol):
    """A prediction of another place, both chunked by patch: its 2-D x and its aoi are
    dask arrays of another graph, compared in the computation, not while it is built."""
    ds = _collection(seed=23)
    lazy = ds.chunk({"patch": 1})
    moved = ds.assign_coords(x=ds.x + 50_000.0).chunk({"patch": 1})
    renamed = ds.assign_coords(aoi=("patch", ["a", "b", "c"])).chunk({"patch": 1})
    for other, name in ((moved, "x"), (renamed, "aoi")):
        with raise_if_dask_computes():
            result = metrics.evaluate(lazy, other.decloud, protocol=protocol, compute=False)
        with pytest.raises(SchemaError, match=f"pred: grid does not match.*'{name}' differs"):
            result.compute()


def test_patch_coordinates_that_differ_are_refused():
    """In memory, as a collection opened from a store has them, before any work."""
    ds = _collection(seed=22)
    other = ds.decloud.assign_coords(aoi=("patch", ["a", "b", "c"]))
    with pytest.raises(SchemaError, match="pred: grid does not match.*coordinate 'aoi'"):
        metrics.evaluate(ds, other)
    shifted = ds.landcover.assign_coords(x=ds.x + 3.0)
    with pytest.raises(SchemaError, match="landcover: grid does not match.*coordinate 'x'"):
        metrics.evaluate(ds, landcover=shifted)
