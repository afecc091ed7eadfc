import numpy as np
import pytest

import m3rcr_xr
from m3rcr_xr.summary import describe, layout, statistics
from m3rcr_xr.testing import raise_if_dask_computes


@pytest.fixture
def scene():
    return m3rcr_xr.synthetic_scene((64, 64), seed=5, chunks=32)


def test_layout_reads_no_data(scene):
    with raise_if_dask_computes():
        table = layout(scene)
    assert table.loc["cloudy", "dims"] == "band, y, x"
    assert table.loc["cloudy", "shape"] == "4x64x64"
    assert table.loc["cloudy", "chunks"] == "4x32x32"
    assert layout(scene.load()).loc["cloudy", "chunks"] == "in memory"


def test_statistics_in_one_pass(scene):
    with raise_if_dask_computes(max_computes=1):
        stats = statistics(scene)
    assert stats["cloud fraction"] == pytest.approx(float(scene["cloudmask"].mean()))
    shares = [v for k, v in stats.items() if k.startswith("landcover ")]
    assert sum(shares) == pytest.approx(1.0)
    assert 0 <= stats["cloudy nodata fraction"] <= 1


def test_statistics_of_what_is_there(scene):
    assert statistics(scene[["cloudy"]]).keys() == {"cloudy nodata fraction"}


def test_describe_a_scene(scene):
    text = describe(scene)
    assert text.startswith("scene: 64x64 px at 3 m; CRS EPSG:")
    stats = statistics(scene)
    shown = [f"{k}: {v:.4f}" for k, v in stats.items() if v or not k.startswith("landcover ")]
    assert shown and describe(scene, stats=True) == "\n".join([text, *shown])


def test_statistics_of_zero_are_shown_but_absent_classes_are_not():
    """No cloud is told apart from no cloud mask."""
    clear = m3rcr_xr.synthetic_scene((32, 32), seed=5, chunks=32, cloud_cover=0.0)
    lines = describe(clear, stats=True).splitlines()
    assert "cloud fraction: 0.0000" in lines
    assert "cloudy nodata fraction: 0.0000" in lines
    assert not [
        line for line in lines if line.startswith("landcover ") and line.endswith(" 0.0000")
    ]
    assert not any(
        "cloud fraction" in line
        for line in describe(clear.drop_vars("cloudmask"), stats=True).splitlines()
    )


def test_describe_a_geographic_scene():
    """Degrees, not metres, and bounds to a tenth of a pixel (not rounded to 11, 45)."""
    res = 2.7e-5
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=1).drop_vars("spatial_ref")
    scene = scene.assign_coords(
        y=45.0 - res * (np.arange(32) + 0.5), x=11.0 + res * (np.arange(32) + 0.5)
    )
    first = describe(scene.rio.write_crs("EPSG:4326")).splitlines()[0]
    assert first == (
        "scene: 32x32 px at 2.7e-05 degrees; CRS EPSG:4326; "
        "bounds (11.0, 44.999136, 11.000864, 45.0)"
    )


def test_describe_a_collection():
    collection = m3rcr_xr.synthetic_collection(3, 32)
    lines = describe(collection).splitlines()
    assert lines[0].startswith("collection: 3 patches of 32x32 px; EPSG [")
    assert lines[1].startswith("split: {") and lines[2].startswith("season: {")
    assert np.all([name in describe(collection) for name in collection.data_vars])
