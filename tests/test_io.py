import json
import shutil
import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine

import m3rcr_xr
from m3rcr_xr.io import discover, read_filelist
from m3rcr_xr.normalize import normalize_sar
from tests.conftest import raise_if_dask_computes
from tests.rasters import write_raster


def test_open_quartet_is_lazy_and_follows_the_data_model(train_quartet):
    with raise_if_dask_computes():
        ds = m3rcr_xr.open_quartet(**train_quartet)
    assert set(ds.data_vars) == {"cloudy", "cloudfree", "sar", "landcover", "cloudmask"}
    assert all(var.chunks is not None for var in ds.data_vars.values())
    assert ds.cloudy.dtype == np.uint16 and ds.sar.dtype == np.float32
    assert ds.landcover.dtype == np.uint8 and ds.cloudmask.dtype == bool
    assert ds.rio.crs.to_epsg() == 32646
    assert ds.rio.transform() == Affine(3, 0, 760299, 0, -3, 1898412)
    with rasterio.open(train_quartet["cloudy"]) as src:
        np.testing.assert_array_equal(ds.cloudy.values, src.read())
    mask = np.load(train_quartet["cloudmask"])
    np.testing.assert_array_equal(ds.cloudmask.values, mask)


def test_big_scene_is_opened_in_chunks_without_reading(tmp_path):
    scene = m3rcr_xr.synthetic_scene((2048, 1536), chunks=512)
    path = tmp_path / "big.tif"
    scene.cloudy.rio.to_raster(path, tiled=True, blockxsize=256, blockysize=256)
    with raise_if_dask_computes():
        ds = m3rcr_xr.open_quartet(path, chunks=512)
    assert ds.cloudy.data.numblocks == (1, 4, 3)
    np.testing.assert_array_equal(
        ds.cloudy[:, 1000:1010, 700:720].values, scene.cloudy[:, 1000:1010, 700:720].values
    )


@pytest.mark.parametrize("sample", ["summer_33_p_1", "fall_1_p_457"])
def test_shape_alignment_reproduces_the_reference_sar(shared_dir, request, sample):
    quartet = request.getfixturevalue(
        "test_quartet" if sample.startswith("summer") else "train_quartet"
    )
    golden = json.loads((shared_dir / "reference/golden/metrics.json").read_text())[sample]
    ds = m3rcr_xr.open_quartet(quartet["cloudy"], sar=quartet["sar"], align="shape")
    sar = normalize_sar(ds.sar).values.astype("float64")
    np.testing.assert_allclose(
        sar.mean(axis=(1, 2)), golden["sar_normalized_mean_per_channel"], rtol=1e-6
    )
    np.testing.assert_allclose(sar[:, 150, 150], golden["sar_normalized_center_pixel"], rtol=1e-6)


def test_open_m3rcr_from_filelist_warns_on_duplicates(samples_dir):
    with pytest.warns(m3rcr_xr.M3RCRWarning, match="duplicate row"):
        ds = m3rcr_xr.open_m3rcr(samples_dir / "train", samples_dir / "one_train_sample.csv")
    assert ds.sizes["patch"] == 1
    assert ds.patch.values.tolist() == ["fall_1_p_457"]
    assert ds.season.values.tolist() == ["fall"] and ds.split.values.tolist() == ["train"]
    assert ds.epsg.values.tolist() == [32646]
    assert ds.x.dims == ("patch", "x") and ds.y.dims == ("patch", "y")


def test_open_m3rcr_discovers_the_layout(samples_dir, test_quartet):
    with warnings.catch_warnings():
        warnings.simplefilter("error", m3rcr_xr.M3RCRWarning)
        ds = m3rcr_xr.open_m3rcr(samples_dir / "test", chunks={"patch": 1})
    assert ds.patch.values.tolist() == ["summer_33_p_1"]
    assert (
        ds.source.values[0] == "planet_cloudy_summer/planet_cloudy_summer_33/"
        "planet_cloudy_summer_33_p_1.tif"
    )
    scene = m3rcr_xr.open_quartet(**test_quartet)
    np.testing.assert_array_equal(ds.sar.values[0], scene.sar.values)
    np.testing.assert_array_equal(ds.x.values[0], scene.x.values)
    assert discover(samples_dir / "test")[0].cloudmask.endswith(".npy")


def test_collection_of_two_utm_zones(samples_dir, tmp_path):
    for split in ("train", "test"):
        shutil.copytree(samples_dir / split, tmp_path / "both", dirs_exist_ok=True)
    ds = m3rcr_xr.open_m3rcr(tmp_path / "both")
    assert sorted(ds.epsg.values.tolist()) == [32646, 32736]
    assert ds.sizes["patch"] == 2


# ---------------------------------------------------------------------------- bad input
@pytest.fixture
def copied(tmp_path, train_quartet):
    """A writable copy of the train quartet's files."""
    out = {}
    for name, path in train_quartet.items():
        out[name] = tmp_path / path.name
        shutil.copy(path, out[name])
    return out


def test_missing_file(copied):
    copied["sar"].unlink()
    with pytest.raises(m3rcr_xr.MissingFileError, match=r"S1_fall_1_p_457.tif: sar file"):
        m3rcr_xr.open_quartet(**copied)


def test_truncated_geotiff(copied):
    data = copied["cloudy"].read_bytes()
    copied["cloudy"].write_bytes(data[: len(data) // 2])
    with pytest.raises(m3rcr_xr.InputFileError, match="planet_cloudy_fall_1_p_457.tif"):
        m3rcr_xr.open_quartet(**copied)


def test_not_a_geotiff(copied):
    copied["landcover"].write_text("not a raster")
    with pytest.raises(m3rcr_xr.InputFileError, match="landcover is not a readable GeoTIFF"):
        m3rcr_xr.open_quartet(**copied)


def test_wrong_band_count(copied, tmp_path):
    with rasterio.open(copied["sar"]) as src:
        data, transform, crs = src.read(), src.transform, src.crs
    three = write_raster(tmp_path / "three.tif", np.concatenate([data, data[:1]]), transform, crs)
    with pytest.raises(m3rcr_xr.InputFileError, match="three.tif: sar has 3 band"):
        m3rcr_xr.open_quartet(copied["cloudy"], sar=three)


def test_extents_that_do_not_overlap(copied, tmp_path):
    with rasterio.open(copied["sar"]) as src:
        data, transform, crs = src.read(), src.transform, src.crs
    far = write_raster(tmp_path / "far.tif", data, transform * Affine.translation(500, 0), crs)
    with pytest.raises(m3rcr_xr.AlignmentError, match="does not overlap"):
        m3rcr_xr.open_quartet(copied["cloudy"], sar=far)


def test_crs_that_cannot_be_reprojected(copied, tmp_path):
    with rasterio.open(copied["sar"]) as src:
        data = src.read()
    mars = write_raster(
        tmp_path / "mars.tif", data, Affine(0.001, 0, 10, 0, -0.001, 10), "IAU_2015:49900"
    )
    with pytest.raises(m3rcr_xr.AlignmentError, match="cannot reproject"):
        m3rcr_xr.open_quartet(copied["cloudy"], sar=mars)


def test_pickled_cloudmask_is_refused(copied):
    np.save(copied["cloudmask"], np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(m3rcr_xr.InputFileError, match="cloudmask is not a plain array"):
        m3rcr_xr.open_quartet(**copied)


def test_cloudmask_of_the_wrong_shape(copied):
    np.save(copied["cloudmask"], np.zeros((90, 90), dtype=bool))
    with pytest.raises(m3rcr_xr.InputFileError, match=r"shape \(90, 90\), optical grid"):
        m3rcr_xr.open_quartet(**copied)


@pytest.mark.parametrize("row", ["../outside.tif", "/etc/passwd"])
def test_filelist_paths_must_stay_under_root(samples_dir, tmp_path, row):
    line = (samples_dir / "one_test_sample.csv").read_text().splitlines()[0].split(",")
    line[0] = row
    csv = tmp_path / "list.csv"
    csv.write_text(",".join(line) + "\n")
    with pytest.raises(m3rcr_xr.UnsafePathError, match="absolute path|escapes"):
        m3rcr_xr.open_m3rcr(samples_dir / "test", csv)


def test_filelist_with_wrong_columns(tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text("a.tif,b.tif\n")
    with pytest.raises(m3rcr_xr.InputFileError, match="list.csv:1: expected 5 columns"):
        read_filelist(csv)
