"""metrics.engine: chunk independence, one compute, a graph bounded in memory."""

from __future__ import annotations

import dask
import pytest
from dask.utils import key_split
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3rcr_xr import metrics
from tests.conftest import CountingScheduler, raise_if_dask_computes
from tests.metrics_scenes import assert_same_result, make_scene


def test_dask_result_equals_numpy_result():
    ds = make_scene((70, 90), seed=10)
    assert_same_result(metrics.evaluate(ds.chunk(y=32, x=40)), metrics.evaluate(ds))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cy=st.integers(3, 70), cx=st.integers(3, 90))
def test_no_value_depends_on_the_chunking(cy, cx):
    ds = make_scene((70, 90), seed=11)
    whole = metrics.evaluate(ds.chunk(y=-1, x=-1))
    assert_same_result(metrics.evaluate(ds.chunk(y=cy, x=cx)), whole)


def test_synthetic_scene_chunkings_agree(small_scene):
    scene = small_scene
    a = metrics.evaluate(scene, "cloudy", "cloudfree", level=2)
    b = metrics.evaluate(scene.chunk(y=64, x=100), "cloudy", "cloudfree", level=2)
    assert_same_result(b, a)


def test_building_the_graph_computes_nothing():
    ds = make_scene(seed=12).chunk(y=16, x=16)
    with raise_if_dask_computes():
        lazy = metrics.evaluate(ds, compute=False)
        lazy_pp = metrics.evaluate(
            make_scene(seed=12, patches=3).chunk(patch=1), protocol="per_patch", compute=False
        )
    assert lazy.PSNR.chunks is not None and lazy_pp.SSIM.chunks is not None
    assert_same_result(lazy.compute(), metrics.evaluate(ds))


@pytest.mark.parametrize("protocol", ["pooled", "per_patch"])
def test_everything_in_one_compute(protocol):
    ds = make_scene(seed=13, patches=4).chunk(patch=2, y=24, x=28)
    counter = CountingScheduler(max_computes=1)
    with dask.config.set(scheduler=counter):
        metrics.evaluate(ds, protocol=protocol, level=2)
    assert counter.total_computes == 1


def test_the_per_patch_table_in_one_compute():
    ds = make_scene(seed=13, patches=4).chunk(patch=2, y=24, x=28)
    counter = CountingScheduler(max_computes=1)
    with dask.config.set(scheduler=counter):
        table = metrics.evaluate_per_patch(ds, level=2)
    assert counter.total_computes == 1 and table.PSNR.dims == (
        "patch",
        "stratum",
        "landcover_class",
    )


def test_two_lazy_results_computed_together_keep_their_own_values():
    """Graph keys depend on the inputs: two graphs merged in one compute do not collide."""
    first, second = (make_scene(seed=seed).chunk(y=16) for seed in (26, 27))
    lazy = [metrics.evaluate(ds, compute=False) for ds in (first, second)]
    computed = dask.compute(*lazy)
    for result, ds in zip(computed, (first, second), strict=True):
        assert_same_result(result, metrics.evaluate(ds.compute()))


def test_the_graph_has_no_task_per_class():
    small = metrics.evaluate(make_scene(seed=14).chunk(y=24, x=28), compute=False, level=1)
    large = metrics.evaluate(make_scene(seed=14).chunk(y=24, x=28), compute=False, level=2)
    assert len(dict(small.PSNR.data.dask)) == len(dict(large.PSNR.data.dask))


def test_each_chunk_is_read_by_its_own_task_only():
    """What bounds memory: no other task waits for a chunk, so it is freed at once."""
    ds = make_scene((60, 70), seed=25).chunk(y=20, x=25)
    graph = dict(metrics.evaluate(ds, compute=False).PSNR.data.__dask_graph__())
    dependents: dict = {key: [] for key in graph}
    for key, task in graph.items():
        for dep in dask.core.get_dependencies(graph, key, task=task):
            dependents[dep].append(key)
    for block in dask.core.flatten(ds.decloud.data.__dask_keys__()):
        readers = dependents[block]
        while len(readers) == 1 and key_split(readers[0]) != "chunk_pass":
            readers = dependents[readers[0]]
        assert len(readers) == 1, (block, readers)
        assert key_split(readers[0]) == "chunk_pass", (block, readers)


def test_the_graph_has_as_many_layers_for_any_number_of_patches():
    """Building it is linear in the chunks: a layer (a ``delayed`` call) per task merged
    the layers of the inputs once per task, quadratic in the number of patches."""

    def layers(n_patches: int) -> int:
        ds = make_scene((24, 30), seed=28, patches=n_patches).chunk(patch=1, y=12, x=15)
        lazy = metrics.evaluate(ds, protocol="per_patch", compute=False)
        return len(lazy.PSNR.data.__dask_graph__().layers)

    assert layers(64) == layers(4)
