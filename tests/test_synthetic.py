import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import m3rcr_xr
from m3rcr_xr.align import containing_index
from m3rcr_xr.synthetic import COARSE_OFFSET, COARSE_RES, ORIGIN, synthetic_collection
from tests.conftest import raise_if_dask_computes

SHAPE = (230, 270)


@pytest.fixture(scope="module")
def reference():
    return m3rcr_xr.synthetic_scene(SHAPE, seed=11, chunks=1024).compute()


def test_building_a_huge_scene_computes_nothing():
    with raise_if_dask_computes():
        scene = m3rcr_xr.synthetic_scene((40_000, 40_000), chunks=2048)
    assert scene.cloudy.nbytes == 4 * 40_000**2 * 2
    assert scene.cloudy.data.numblocks == (1, 20, 20)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cy=st.integers(17, 240), cx=st.integers(17, 280))
def test_values_do_not_depend_on_chunking(reference, cy, cx):
    chunked = m3rcr_xr.synthetic_scene(SHAPE, seed=11, chunks=(cy, cx)).compute()
    for name in reference.data_vars:
        np.testing.assert_array_equal(chunked[name].values, reference[name].values, err_msg=name)


def test_seed_changes_the_scene(reference):
    other = m3rcr_xr.synthetic_scene(SHAPE, seed=12).cloudy.values
    assert (other != reference.cloudy.values).mean() > 0.5


def test_looks_like_a_cloudy_scene():
    scene = m3rcr_xr.synthetic_scene((1024, 1024), seed=0).compute()
    assert len(np.unique(scene.landcover.values)) >= 5
    assert 0.15 < float(scene.cloudmask.mean()) < 0.85
    cloud = scene.cloudmask.values
    brightness = scene.cloudy.sel(band="blue").values.astype(float)
    assert np.median(brightness[cloud]) > 3 * np.median(brightness[~cloud])
    clear = (scene.cloudy == scene.cloudfree).all("band").values
    assert clear[~cloud].mean() > 0.6 and clear[cloud].mean() < 0.05
    # thin edges: cloud pixels span a range of brightness, not one value
    assert np.percentile(brightness[cloud], 90) - np.percentile(brightness[cloud], 10) > 1500
    water = scene.sar.sel(polarization="VV").values[scene.landcover.values == 80]
    urban = scene.sar.sel(polarization="VV").values[scene.landcover.values == 50]
    assert np.median(water) < np.median(urban) - 10


def test_sar_and_landcover_are_constant_on_each_10m_cell(reference):
    rows = containing_index(reference.y.values, ORIGIN[1] + COARSE_OFFSET[1], -COARSE_RES, 10**9)
    cols = containing_index(reference.x.values, ORIGIN[0] + COARSE_OFFSET[0], COARSE_RES, 10**9)
    cell = (rows[:, None] * 10**6 + cols[None, :]).ravel()
    frame = pd.DataFrame(
        {
            "cell": cell,
            "vv": reference.sar.values[0].ravel(),
            "lc": reference.landcover.values.ravel(),
        }
    )
    per_cell = frame.groupby("cell").nunique()
    assert (per_cell["vv"] == 1).all() and (per_cell["lc"] == 1).all()
    # a 10 m cell holds 3 or 4 optical pixels a side: the grids are offset, not nested
    sizes = frame.groupby("cell").size()
    assert set(np.unique(sizes)) <= {9, 12, 16, 3, 4, 6, 8, 1, 2}


def test_collection_is_valid():
    collection = synthetic_collection(3, 40, seed=2)
    m3rcr_xr.validate(collection)
    assert collection.sizes == {"patch": 3, "band": 4, "y": 40, "x": 40, "polarization": 2}
    first = m3rcr_xr.synthetic_scene((40, 40), seed=2).cloudy.values
    np.testing.assert_array_equal(collection.cloudy.values[0], first)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"seed": 1.5}, r"seed=1\.5: must be an integer >= 0, not float"),
        ({"seed": -1}, r"seed=-1: must be an integer >= 0"),
        ({"cloud_cover": float("nan")}, r"cloud_cover=nan: must be a number from 0 to 1"),
        ({"cloud_cover": 7}, r"cloud_cover=7: must be a number from 0 to 1"),
        ({"cloud_cover": True}, r"cloud_cover=True"),
        ({"chunks": 0}, r"chunks=0: must be an integer >= 1 or \(y, x\)"),
        ({"chunks": (32, 0)}, r"chunks=\(32, 0\)"),
        ({"chunks": 16.0}, r"chunks=16\.0"),
        ({"shape": (-4, 64)}, r"shape=\(-4, 64\): must be two integers >= 1"),
        ({"shape": (64,)}, r"shape=\(64,\)"),
        ({"shape": (64.0, 64)}, r"shape=\(64\.0, 64\)"),
    ],
)
def test_arguments_it_cannot_take_are_refused_before_any_work(arguments, message):
    with raise_if_dask_computes(), pytest.raises(m3rcr_xr.UsageError, match=message):
        m3rcr_xr.synthetic_scene(**{"shape": (32, 32), **arguments})


def test_numpy_integers_are_seeds_and_sizes():
    scene = m3rcr_xr.synthetic_scene(
        (np.int64(24), np.int32(20)), seed=np.int64(3), chunks=np.int32(16)
    )
    assert scene.attrs["seed"] == 3 and type(scene.attrs["seed"]) is int
    assert scene.cloudy.data.chunks == ((4,), (16, 8), (16, 4))
    np.testing.assert_array_equal(
        scene.cloudy.values, m3rcr_xr.synthetic_scene((24, 20), seed=3).cloudy.values
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_patches": 0}, "n_patches=0"),
        ({"patch_size": -8}, "patch_size=-8"),
        ({"seed": 0.5}, "seed=0.5"),
        ({"cloud_cover": -0.1}, "cloud_cover=-0.1"),
    ],
)
def test_a_collection_refuses_them_too(arguments, message):
    with raise_if_dask_computes(), pytest.raises(m3rcr_xr.UsageError, match=message):
        synthetic_collection(**{"n_patches": 2, "patch_size": 16, **arguments})
