import json
import re
import shutil
import warnings
from contextlib import nullcontext

import cloudpickle
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine

import m3rcr_xr
from m3rcr_xr.exceptions import OptionError
from m3rcr_xr.io import discover, read_filelist
from m3rcr_xr.normalize import normalize_sar
from m3rcr_xr.testing import serve_directory, stac_item
from tests.conftest import EXPIRED, PRESIGNED, assert_no_credential, raise_if_dask_computes
from tests.rasters import (
    COARSE_GRID,
    CRS,
    OPTICAL_GRID,
    write_coarse,
    write_optical,
    write_raster,
)


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


@pytest.mark.parametrize(
    ("name", "form", "match"),
    [
        ("sar", "stac", "s1.json: sar is STAC JSON, not a raster; STAC items are read only with"),
        ("sar", "one-asset", "s1.json: sar is STAC JSON, not a raster; STAC items are read"),
        ("cloudmask", "stac", "s1.json: cloudmask is STAC JSON, not a raster$"),
        ("sar", "gpkg", "two.gpkg: sar has no bands but 2 subdatasets .give one, such as GPKG:"),
    ],
)
def test_stac_json_or_a_file_without_bands_is_no_raster_and_says_so(
    copied, tmp_path, name, form, match
):
    """GDAL opens STAC JSON (its STACIT driver) with no bands and no grid: this was "sar
    has 0 band(s), expected 2", after a NotGeoreferencedWarning; an item of one asset
    it opens as that asset, which was read, not the items."""
    if form != "gpkg":
        path = tmp_path / "s1.json"
        names = ["sar"] if form == "one-asset" else ["vv", "vh"]
        item = stac_item("s1", dict.fromkeys(names, copied["sar"]))
        path.write_text(json.dumps(item.to_dict()))
    else:  # two rasters in one file: GDAL opens it with none, and lists them
        path = tmp_path / "two.gpkg"
        for table, append in (("a", "NO"), ("b", "YES")):
            grid = {"crs": CRS, "transform": OPTICAL_GRID, "width": 4, "height": 4}
            with rasterio.open(
                path,
                "w",
                "GPKG",
                count=1,
                dtype="uint8",
                **grid,
                RASTER_TABLE=table,
                APPEND_SUBDATASET=append,
            ) as dst:
                dst.write(np.zeros((1, 4, 4), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", rasterio.errors.NotGeoreferencedWarning)
        with pytest.raises(m3rcr_xr.InputFileError, match=match):
            m3rcr_xr.open_quartet(copied["cloudy"], **{name: path})


def test_extents_that_do_not_overlap(copied, tmp_path):
    with rasterio.open(copied["sar"]) as src:
        data, transform, crs = src.read(), src.transform, src.crs
    far = write_raster(tmp_path / "far.tif", data, transform * Affine.translation(500, 0), crs)
    with pytest.raises(m3rcr_xr.AlignmentError, match="does not overlap") as caught:
        m3rcr_xr.open_quartet(copied["cloudy"], sar=far)
    assert str(caught.value).startswith(f"sar ({far}): does not overlap the optical image")


def test_a_layer_in_another_crs_off_the_scene_is_named_with_its_own_extent(copied, tmp_path):
    """SAR in another CRS, far away (Europe): the message names the file and gives its
    extent in its own CRS beside the one moved into the optical CRS."""
    with rasterio.open(copied["sar"]) as src:
        data = src.read()
    europe = Affine(1e-4, 0, 10.0, 0, -1e-4, 50.0)
    other = write_raster(tmp_path / "other.tif", data, europe, "EPSG:4326")
    with pytest.raises(m3rcr_xr.AlignmentError) as caught:
        m3rcr_xr.open_quartet(copied["cloudy"], sar=other)
    message = str(caught.value)
    assert message.startswith(f"sar ({other}): does not overlap the optical image")
    assert "in its EPSG:4326" in message and "(10.0, " in message


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


def test_filelist_rows_with_one_patch_id_are_refused_naming_the_files(tmp_path):
    csv = tmp_path / "list.csv"  # refused before any file is opened: none exists
    csv.write_text(
        "".join(f"{d}/cf.tif,{d}/cloudy.tif,{d}/s1.tif,{d}/lc.tif,{d}/m.npy\n" for d in "ab")
    )
    with pytest.raises(
        m3rcr_xr.InputFileError,
        match="list.csv: patch ids .* repeated: 'cloudy' from a/cloudy.tif, b/cloudy.tif",
    ):
        m3rcr_xr.open_m3rcr(tmp_path, csv)


# ------------------------------------------------------------------------ wrong values
def _reflectance(dtype: str, seed: int = 0) -> np.ndarray:
    """(4, 30, 30) whole reflectance values in [1, 12000], as ``dtype``."""
    return np.random.default_rng(seed).integers(1, 12000, (4, 30, 30)).astype(dtype)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint32", "int64", "float32", "float64"])
def test_optical_values_that_fit_are_converted_exactly_and_lazily(tmp_path, dtype):
    data = _reflectance("uint8" if dtype == "uint8" else dtype)
    path = write_optical(tmp_path / "cloudy.tif", data)
    with raise_if_dask_computes():
        ds = m3rcr_xr.open_quartet(path, chunks=16)
    assert ds.cloudy.dtype == np.uint16
    np.testing.assert_array_equal(ds.cloudy.values, data.astype("uint16"))


@pytest.mark.parametrize(
    ("dtype", "nodata"), [("int16", -9999), ("float32", np.nan), ("uint16", 65535)]
)
def test_declared_optical_nodata_becomes_0(tmp_path, dtype, nodata):
    data = _reflectance(dtype)
    data[:, 2, :] = nodata
    ds = m3rcr_xr.open_quartet(write_optical(tmp_path / "c.tif", data, nodata=nodata))
    expected = data.copy()
    expected[:, 2, :] = 0
    np.testing.assert_array_equal(ds.cloudy.values, expected.astype("uint16"))


@pytest.mark.parametrize(
    ("dtype", "bad", "found"),
    [
        ("int16", -4630, "-4630"),  # a cast would give 61066
        ("uint32", 70530, "70530"),  # a cast would give 4994
        ("float32", 12.5, "12.5"),
        ("float32", np.inf, "inf"),
    ],
)
def test_optical_values_outside_uint16_are_refused_never_wrapped(tmp_path, dtype, bad, found):
    data = _reflectance(dtype)
    data[1, 20, 7] = bad
    path = write_optical(tmp_path / "cloudy.tif", data)
    with raise_if_dask_computes():
        ds = m3rcr_xr.open_quartet(path, chunks=16)  # lazily: checked when read
    np.testing.assert_array_equal(ds.cloudy[:, :16].values, data[:, :16])  # clean chunks
    with pytest.raises(
        m3rcr_xr.InputFileError, match=rf"cloudy.tif: cloudy \(dtype {dtype}\): 1 value.*{found}"
    ):
        ds.cloudy.compute()


def test_optical_of_a_complex_dtype_is_refused_at_open(tmp_path):
    path = write_optical(tmp_path / "c.tif", _reflectance("complex64"))
    with pytest.raises(m3rcr_xr.InputFileError, match="c.tif: cloudy has dtype complex64"):
        m3rcr_xr.open_quartet(path)


def _sar_with_holes(tmp_path, nodata=None):
    """A 2-band 10 m SAR whose column 0 holds +inf, -inf, NaN (and ``nodata``)."""
    sar = np.random.default_rng(1).uniform(-25, 0, (2, 9, 9)).astype("float32")
    sar[:, 0, 0], sar[:, 1, 0], sar[:, 2, 0] = np.inf, -np.inf, np.nan
    if nodata is not None:
        sar[:, 3, 0] = nodata
    optical = write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    return optical, write_coarse(tmp_path / "sar.tif", sar, nodata=nodata), sar


@pytest.mark.parametrize("nodata", [None, -9999.0])
def test_infinite_sar_values_are_holes_filled_with_the_finite_mean(tmp_path, nodata):
    optical, path, raw = _sar_with_holes(tmp_path, nodata)
    with raise_if_dask_computes():
        ds = m3rcr_xr.open_quartet(optical, sar=path, chunks=16)
    sar = ds.sar.values
    assert np.isfinite(sar).all()
    holes = ~np.isfinite(raw) | (raw == nodata)
    means = [raw[b][~holes[b]].mean() for b in range(2)]
    # optical rows 0..2 lie in SAR row 0 (a 3 m pixel in a 10 m one)
    np.testing.assert_allclose(sar[:, 1, 1], means, rtol=1e-5)
    np.testing.assert_allclose(sar[:, 4, 0], means, rtol=1e-5)
    assert ds.sar.attrs["nan_fill"] == "band mean"


@pytest.mark.parametrize("chunks", [None, 4])
def test_a_sar_files_header_scale_and_offset_are_applied_after_its_nodata(tmp_path, chunks):
    """dB stored as int16 with a scale in the header (value = raw x scale + offset),
    bands described VH, VV, each with its own scale and offset: -12 and -19 dB, not
    -1200 and -900; the nodata is the stored value, a hole, not -327.68 dB."""
    raw = np.stack([np.full((9, 9), -900, np.int16), np.full((9, 9), -1200, np.int16)])
    raw[:, 4, 4] = -32768
    sar = write_raster(
        tmp_path / "sar.tif",
        raw,
        COARSE_GRID,
        CRS,
        nodata=-32768,
        descriptions=("VH", "VV"),
        scales=(0.02, 0.01),
        offsets=(-1.0, 0.0),
    )
    optical = write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    with raise_if_dask_computes() if chunks else nullcontext():
        ds = m3rcr_xr.open_quartet(optical, sar=sar, chunks=chunks)
    values = ds.sar.sel(polarization=["VV", "VH"]).values
    assert values.dtype == np.float32
    np.testing.assert_allclose(values[:, 0, 0], [-12, -19], rtol=1e-6)
    np.testing.assert_allclose(values[:, 13, 13], [-12, -19], rtol=1e-6)  # the hole


@pytest.mark.parametrize(
    ("layer", "scales", "offsets", "found"),
    [
        ("cloudy", (1.0,) * 4, (-1000.0,) * 4, "scale 1, offset -1000"),  # S2 L2A's
        ("cloudy", (0.01,) * 4, (0.0,) * 4, "scale 0.01, offset 0"),
        ("landcover", (2.0,), (0.0,), "scale 2, offset 0"),
        ("landcover", (1.0,), (10.0,), "scale 1, offset 10"),
    ],
)
def test_a_header_scale_or_offset_of_optical_or_land_cover_is_refused(
    tmp_path, layer, scales, offsets, found
):
    """Optical values are reflectance x10000 and land cover class codes, as stored: a
    header that scales them is refused at open, naming the file, not ignored."""
    optical = write_optical(tmp_path / "plain.tif", _reflectance("uint16"))
    if layer == "cloudy":
        data, grid = _reflectance("uint16"), OPTICAL_GRID
    else:
        data, grid = np.full((1, 9, 9), 10, np.uint8), COARSE_GRID
    path = write_raster(tmp_path / "scaled.tif", data, grid, CRS, scales=scales, offsets=offsets)
    files = {"cloudy": path} if layer == "cloudy" else {"cloudy": optical, layer: path}
    with pytest.raises(m3rcr_xr.InputFileError, match=f"scaled.tif: {layer} declares {found}"):
        m3rcr_xr.open_quartet(**files)


def test_an_optical_header_scale_of_0001_is_reflectance_x10000_as_stored(tmp_path):
    """uint16 with scale 0.0001 (HLS's, and what open_stac reads as stored)."""
    data = _reflectance("uint16")
    path = write_optical(tmp_path / "cloudy.tif", data)
    with rasterio.open(path, "r+") as dst:
        dst.scales = (1e-4,) * 4
    np.testing.assert_array_equal(m3rcr_xr.open_quartet(path).cloudy.values, data)


@pytest.mark.parametrize("chunks", [None, 16])
def test_sar_in_linear_power_is_refused_when_read_not_taken_for_db(tmp_path, chunks):
    """Power 0.003 to 0.3 read as dB is about 0 dB everywhere: VV normalised to 1.0."""
    db = np.random.default_rng(2).uniform(-25, -5, (2, 9, 9))
    sar = write_coarse(tmp_path / "linear.tif", (10 ** (db / 10)).astype(np.float32))
    optical = write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    message = r"linear.tif: sar: all 162 finite values of a chunk lie in \[0, 1.5\] \(found"
    if chunks is None:
        with pytest.raises(m3rcr_xr.InputFileError, match=message):
            m3rcr_xr.open_quartet(optical, sar=sar, chunks=None)
        return
    with raise_if_dask_computes():
        ds = m3rcr_xr.open_quartet(optical, sar=sar, chunks=chunks)
    with pytest.raises(m3rcr_xr.InputFileError, match=message):
        ds.sar.compute()


def test_sar_in_db_close_to_0_or_a_fill_of_zeros_is_not_taken_for_power(tmp_path):
    """Bright dB (above 1.5 somewhere in the chunk), a chunk of 0 (an undeclared fill),
    or fewer than SAR_UNIT_MIN_VALUES values in (0, 1.5] among zeros: all read as dB."""
    from m3rcr_xr.io import SAR_UNIT_MIN_VALUES

    optical = write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    bright = np.random.default_rng(3).uniform(0, 1.5, (2, 9, 9)).astype(np.float32)
    bright[0, 0, 0] = 1.6
    zeros = np.zeros((2, 9, 9), np.float32)
    few = zeros.copy()
    few.flat[: SAR_UNIT_MIN_VALUES - 1] = 0.5
    for name, db in (("bright", bright), ("zeros", zeros), ("few", few)):
        sar = write_coarse(tmp_path / f"{name}.tif", db)
        assert m3rcr_xr.open_quartet(optical, sar=sar).sar.max() <= 1.6


@pytest.mark.parametrize("quartet", ["train_quartet", "test_quartet"])
def test_the_real_quartets_sar_reads_in_small_chunks(request, quartet):
    files = request.getfixturevalue(quartet)
    sar = m3rcr_xr.open_quartet(files["cloudy"], sar=files["sar"], chunks=32).sar.values
    assert np.isfinite(sar).all() and sar.max() < 12


def test_landcover_codes_outside_worldcover_become_nodata_with_a_warning(tmp_path):
    codes = np.full((1, 9, 9), 40, dtype="uint8")
    codes[0, 0, :3] = [255, 7, 80]
    optical = write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    path = write_coarse(tmp_path / "lc.tif", codes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", m3rcr_xr.M3RCRWarning)
        with raise_if_dask_computes():
            ds = m3rcr_xr.open_quartet(optical, landcover=path)  # lazy: no warning yet
    with pytest.warns(m3rcr_xr.M3RCRWarning, match=r"lc.tif: landcover: code\(s\) 7, 255 are not"):
        landcover = ds.landcover.values
    assert landcover.dtype == np.uint8
    assert landcover[0, [0, 3, 7, 10]].tolist() == [0, 0, 80, 40]  # 3 m in 10 m cells


def test_landcover_of_another_dtype_is_never_cast_blindly(tmp_path):
    codes = np.full((1, 9, 9), 30, dtype="uint16")
    codes[0, 4, 4] = 266  # uint8 would make it 10, tree cover
    codes[0, 5, 5] = 65535  # the declared nodata: no warning for it
    optical = write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    path = write_coarse(tmp_path / "lc.tif", codes, nodata=65535)
    with pytest.warns(m3rcr_xr.M3RCRWarning, match=r"code\(s\) 266 are not") as record:
        landcover = m3rcr_xr.open_quartet(optical, landcover=path).landcover.values
    assert len({str(w.message) for w in record if w.category is m3rcr_xr.M3RCRWarning}) == 1
    assert landcover[13, 13] == 0 and landcover[16, 16] == 0 and landcover[0, 0] == 30
    assert set(np.unique(landcover)) == {0, 30}


# ---------------------------------------------------------------------- georeference
def test_rotated_or_sheared_grids_are_refused(tmp_path):
    rotated = Affine(3, 0.5, 500_000, 0.5, -3, 4_000_020)
    cloudy = write_raster(tmp_path / "rot.tif", _reflectance("uint16"), rotated, "EPSG:32632")
    with pytest.raises(m3rcr_xr.AlignmentError, match="rot.tif: cloudy: rotated or sheared"):
        m3rcr_xr.open_quartet(cloudy)
    sheared = Affine(10, 2, 500_000, 0, -10, 4_000_020)
    sar = write_raster(tmp_path / "shear.tif", np.zeros((2, 9, 9), "float32"), sheared, CRS)
    optical = write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    for align in ("coords", "shape"):
        with pytest.raises(m3rcr_xr.AlignmentError, match="shear.tif: sar: rotated or sheared"):
            m3rcr_xr.open_quartet(optical, sar=sar, align=align)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize(
    ("transform", "crs", "missing"),
    [(OPTICAL_GRID, None, "no CRS"), (None, None, "no CRS"), (None, CRS, "no geotransform")],
)
def test_optical_without_georeference_is_refused(tmp_path, transform, crs, missing):
    path = write_raster(tmp_path / "bare.tif", _reflectance("uint16"), transform, crs)
    with pytest.raises(m3rcr_xr.InputFileError, match=f"bare.tif: cloudy has {missing}"):
        m3rcr_xr.open_quartet(path)


def test_coarse_layer_without_crs_needs_shape_alignment(tmp_path):
    optical = write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    sar = write_raster(tmp_path / "s1.tif", np.zeros((2, 9, 9), "float32"), COARSE_GRID, None)
    with pytest.raises(
        m3rcr_xr.InputFileError,
        match=r"s1.tif: sar has no CRS; align='coords' needs one; pass align='shape'",
    ):
        m3rcr_xr.open_quartet(optical, sar=sar)
    assert m3rcr_xr.open_quartet(optical, sar=sar, align="shape").sar.shape == (2, 30, 30)


# ------------------------------------------------------------------------ bounded opens
def test_max_raster_bytes_option(copied):
    with (
        m3rcr_xr.set_options(max_raster_bytes=300 * 300 * 4 * 2 - 1),
        pytest.raises(m3rcr_xr.InputFileError, match="beyond the max_raster_bytes option"),
    ):
        m3rcr_xr.open_quartet(copied["cloudy"])
    with m3rcr_xr.set_options(max_raster_bytes=300 * 300 * 4 * 2):
        assert m3rcr_xr.open_quartet(copied["cloudy"]).sizes["x"] == 300
    with pytest.raises(OptionError, match="max_raster_bytes"):
        m3rcr_xr.set_options(max_raster_bytes=0)


def test_npy_cloudmask_declaring_a_huge_array_is_refused_unread(copied):
    with copied["cloudmask"].open("wb") as handle:
        header = {"descr": "|b1", "fortran_order": False, "shape": (200_000, 200_000)}
        np.lib.format.write_array_header_1_0(handle, header)
    with pytest.raises(m3rcr_xr.InputFileError, match="cloudmask_fall_1_p_457.npy: cloudmask"):
        m3rcr_xr.open_quartet(**copied)


def test_geotiff_cloudmask_is_shape_checked_before_it_is_read(copied, tmp_path):
    mask = write_raster(tmp_path / "mask.tif", np.ones((1, 90, 90), "uint8"), COARSE_GRID, CRS)
    with pytest.raises(m3rcr_xr.InputFileError, match=r"mask.tif: cloudmask has shape \(90, 90\)"):
        m3rcr_xr.open_quartet(copied["cloudy"], cloudmask=mask)
    values = np.random.default_rng(2).random((1, 300, 300)) < 0.3
    with rasterio.open(copied["cloudy"]) as src:
        grid, crs = src.transform, src.crs
    fits = write_raster(tmp_path / "fits.tif", values.astype("uint8"), grid, crs)
    with raise_if_dask_computes():
        ds = m3rcr_xr.open_quartet(copied["cloudy"], cloudmask=fits)
    np.testing.assert_array_equal(ds.cloudmask.values, values[0])


@pytest.fixture(scope="module")
def masked_scene(tmp_path_factory):
    """A 512 x 512 scene and its cloud mask (values 0, 1, 2) as .npy (C, and Fortran
    big-endian) and GeoTIFF (north-up, south-up); the mask as booleans."""
    folder = tmp_path_factory.mktemp("masked")
    side = 512
    cloudy = write_optical(folder / "cloudy.tif", np.full((4, side, side), 900, "uint16"))
    values = np.random.default_rng(5).integers(0, 3, (side, side), dtype="uint8")
    np.save(folder / "mask.npy", values)
    np.save(folder / "fortran.npy", np.asfortranarray(values.astype(">u2")))
    write_raster(folder / "mask.tif", values[None], OPTICAL_GRID, CRS)
    south_up = Affine(3, 0, OPTICAL_GRID.c, 0, 3, OPTICAL_GRID.f - 3 * side)
    write_raster(folder / "south_up.tif", values[None, ::-1], south_up, CRS)
    return cloudy, values != 0


@pytest.mark.parametrize("name", ["mask.npy", "fortran.npy", "mask.tif", "south_up.tif"])
@pytest.mark.parametrize("chunks", [128, {"y": 200, "x": 512}, {"y": 500, "x": 77}])
def test_a_cloudmask_is_read_chunk_by_chunk_when_computed(masked_scene, name, chunks):
    """Opening reads no mask value (the graph holds the path, not the values) and the
    chunks computed are the mask read whole."""
    cloudy, expected = masked_scene
    path = cloudy.parent / name
    with raise_if_dask_computes():
        ds = m3rcr_xr.open_quartet(cloudy, cloudmask=path, chunks=chunks)
    mask = ds.cloudmask
    assert mask.data.chunks == ds.cloudy.data.chunks[1:]
    assert len(cloudpickle.dumps(dict(mask.data.__dask_graph__()))) < expected.size // 4
    np.testing.assert_array_equal(mask.values, expected)
    eager = m3rcr_xr.open_quartet(cloudy, cloudmask=path, chunks=None).cloudmask
    assert isinstance(eager.variable._data, np.ndarray)
    np.testing.assert_array_equal(eager.values, expected)


def test_a_truncated_npy_cloudmask_is_refused_at_open(copied):
    data = copied["cloudmask"].read_bytes()
    copied["cloudmask"].write_bytes(data[:-10])
    with pytest.raises(m3rcr_xr.InputFileError, match="cloudmask is not a readable .npy file"):
        m3rcr_xr.open_quartet(**copied)


def _mask_on(tmp_path, name, transform, crs=CRS, rows=slice(0, 10)):
    """A cloud mask GeoTIFF for :data:`OPTICAL_GRID`'s scene, cloud over ``rows``."""
    values = np.zeros((1, 30, 30), "uint8")
    values[0, rows] = 1
    with warnings.catch_warnings():  # an unreferenced one: GDAL says so
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return write_raster(tmp_path / name, values, transform, crs)


def test_a_geotiff_cloudmask_must_lie_on_the_optical_grid(tmp_path):
    cloudy = write_optical(tmp_path / "cloudy.tif", np.full((4, 30, 30), 900, "uint16"))
    south_up = Affine(3, 0, OPTICAL_GRID.c, 0, 3, OPTICAL_GRID.f - 90)  # the same pixels
    mask = _mask_on(tmp_path, "south_up.tif", south_up, rows=slice(20, 30))
    ds = m3rcr_xr.open_quartet(cloudy, cloudmask=mask)
    assert ds.cloudmask.values[:10].all() and not ds.cloudmask.values[10:].any()
    east = OPTICAL_GRID * Affine.translation(300, 0)
    for path, match in [
        (_mask_on(tmp_path, "east.tif", east), "east.tif: grid .* differs from cloudy's"),
        (_mask_on(tmp_path, "utm33.tif", OPTICAL_GRID, "EPSG:32633"), "utm33.tif: CRS EPSG:32633"),
    ]:
        with pytest.raises(m3rcr_xr.AlignmentError, match=match):
            m3rcr_xr.open_quartet(cloudy, cloudmask=path)
    unreferenced = _mask_on(tmp_path, "plain.tif", None, crs=None)  # taken pixel for pixel
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
        assert m3rcr_xr.open_quartet(cloudy, cloudmask=unreferenced).cloudmask.values[:10].all()


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(("cwd", "root"), [("test", "."), ("test", "./"), ("test/S1_summer", "..")])
def test_split_label_of_a_relative_root(samples_dir, monkeypatch, cwd, root):
    monkeypatch.chdir(samples_dir / cwd)
    ds = m3rcr_xr.open_m3rcr(root, samples_dir / "one_test_sample.csv")
    assert ds.split.values.tolist() == ["test"]


@pytest.mark.parametrize("chunks", [True, "big", 16.0, [16, 16]])
def test_chunks_that_are_not_chunks_are_a_usage_error(tmp_path, chunks):
    path = write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    with pytest.raises(m3rcr_xr.UsageError, match="chunks: expected 'auto', an int, a dict"):
        m3rcr_xr.open_quartet(path, chunks=chunks)


# ------------------------------------------------------------------------ remote hrefs
def _as_urls(quartet: dict, root, base: str) -> dict[str, str]:
    return {name: f"{base}/{path.relative_to(root).as_posix()}" for name, path in quartet.items()}


def test_open_quartet_reads_https_as_it_reads_paths(samples_dir, test_quartet, monkeypatch):
    """Rasters and the .npy mask over HTTP (range requests, a server on loopback)."""
    from m3rcr_xr.testing import serve_directory

    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    local = m3rcr_xr.open_quartet(**test_quartet).compute()
    with serve_directory(samples_dir) as url:
        remote = m3rcr_xr.open_quartet(**_as_urls(test_quartet, samples_dir, url))
        assert remote.encoding["source"][0].startswith(f"{url}/test/planet_cloudy_summer")
        xr.testing.assert_identical(remote.compute(), local)
        missing = f"{url}/test/nothing.tif"
        with pytest.raises(m3rcr_xr.InputFileError, match=f"{missing}: cloudy cannot be read"):
            m3rcr_xr.open_quartet(missing)
        with pytest.raises(m3rcr_xr.MissingFileError, match=f"{url}/x.npy: cloudmask file"):
            m3rcr_xr.open_quartet(test_quartet["cloudy"], cloudmask=f"{url}/x.npy")


def test_presigned_urls_of_rasters_masks_and_file_lists(tmp_path, monkeypatch):
    """Each read with its query string as issued (the server requires it); an expired
    one fails naming the file without its credentials."""
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    np.save(tmp_path / "mask.npy", np.eye(30, dtype=bool))
    (tmp_path / "list.csv").write_text("a.tif,b.tif,S1.tif,lc.tif,mask.npy\n")
    local = m3rcr_xr.open_quartet(tmp_path / "cloudy.tif", cloudmask=tmp_path / "mask.npy")
    with serve_directory(tmp_path, query=PRESIGNED) as url:
        remote = m3rcr_xr.open_quartet(
            f"{url}/cloudy.tif?{PRESIGNED}", cloudmask=f"{url}/mask.npy?{PRESIGNED}", chunks=16
        )
        xr.testing.assert_identical(remote.compute(), local.compute())
        assert read_filelist(f"{url}/list.csv?{PRESIGNED}")[0].cloudmask == "mask.npy"
        for cloudy, mask in [("cloudy.tif", None), ("cloudy.tif", "mask.npy")]:
            with pytest.raises(m3rcr_xr.InputFileError, match=f"{mask or cloudy}.*: ") as err:
                m3rcr_xr.open_quartet(
                    f"{url}/{cloudy}?{PRESIGNED if mask else EXPIRED}",
                    cloudmask=mask and f"{url}/{mask}?{EXPIRED}",
                )
            assert_no_credential(err.value)


@pytest.mark.parametrize(("status", "phrase"), [(403, "Forbidden"), (401, "Unauthorized")])
def test_a_refused_raster_mask_or_file_list_is_access_denied_not_missing(
    tmp_path, monkeypatch, status, phrase
):
    """An expired presigned URL (S3's 403) or one without credentials (401): each reader
    says access was refused, naming the file and its role; a 404 is still missing."""
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    # a name of each case's own: GDAL caches a URL's answer, and the port may be reused
    name = f"cloudy-{status}.tif"
    write_optical(tmp_path / name, _reflectance("uint16"))
    np.save(tmp_path / "mask.npy", np.eye(30, dtype=bool))
    refused = f"cannot be read: access refused \\(HTTP {status} {phrase}\\)"
    expired = "; the URL is presigned: its signature may have expired$"
    with serve_directory(tmp_path, query=PRESIGNED, refuse=status) as url:
        cloudy, mask = f"{url}/{name}?{PRESIGNED}", f"{url}/mask.npy?{EXPIRED}"
        for call, needle in [
            (lambda: m3rcr_xr.open_quartet(f"{url}/{name}?{EXPIRED}"), f"cloudy {refused}"),
            (lambda: m3rcr_xr.open_quartet(cloudy, cloudmask=mask), f"cloudmask {refused}"),
            (lambda: read_filelist(f"{url}/list.csv?{EXPIRED}"), f"file list {refused}"),
        ]:
            with pytest.raises(m3rcr_xr.AccessDeniedError, match=needle + expired) as err:
                call()
            assert_no_credential(err.value)
        with pytest.raises(m3rcr_xr.AccessDeniedError, match=f"^{url}/{name}: cloudy {refused}$"):
            m3rcr_xr.open_quartet(f"{url}/{name}")  # not presigned: nothing to expire
        gone = f"{url}/gone.npy?{PRESIGNED}"
        with pytest.raises(m3rcr_xr.MissingFileError, match="gone.npy.*: cloudmask file does not"):
            m3rcr_xr.open_quartet(cloudy, cloudmask=gone)


def test_file_urls_are_the_paths_they_name(samples_dir, test_quartet):
    local = m3rcr_xr.open_quartet(**test_quartet)
    urls = {name: path.as_uri() for name, path in test_quartet.items()}
    from_urls = m3rcr_xr.open_quartet(**urls)
    xr.testing.assert_identical(from_urls.compute(), local.compute())
    collection = m3rcr_xr.open_m3rcr((samples_dir / "test").as_uri())
    assert collection.patch.values.tolist() == ["summer_33_p_1"]
    missing = (samples_dir / "test" / "nothing.tif").as_uri()
    with pytest.raises(m3rcr_xr.MissingFileError, match=f"^{re.escape(missing[7:])}: "):
        m3rcr_xr.open_quartet(missing)


def test_open_m3rcr_from_s3_with_a_filelist_under_its_root(samples_dir, bucket, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(str(samples_dir / "test"), f"{bucket}/test", recursive=True)
    fs.put(str(samples_dir / "one_test_sample.csv"), f"{bucket}/list.csv")
    local = m3rcr_xr.open_m3rcr(samples_dir / "test", samples_dir / "one_test_sample.csv")
    remote = m3rcr_xr.open_m3rcr(f"s3://{bucket}/test", f"s3://{bucket}/list.csv")
    # one thread: GDAL holds the GIL while it reads, and moto answers from this process
    xr.testing.assert_identical(remote.compute(scheduler="synchronous"), local.compute())
    assert m3rcr_xr.open_m3rcr(f"s3://{bucket}/test").patch.values.tolist() == ["summer_33_p_1"]
    line = (samples_dir / "one_test_sample.csv").read_text().splitlines()[0].split(",")
    line[0] = "../elsewhere/a.tif"
    fs.pipe_file(f"{bucket}/escape.csv", (",".join(line) + "\n").encode())
    with pytest.raises(m3rcr_xr.UnsafePathError, match="escapes the data root s3://"):
        m3rcr_xr.open_m3rcr(f"s3://{bucket}/test", f"s3://{bucket}/escape.csv")


def test_sar_is_nan_beyond_the_file_and_the_edge_value_half_a_pixel_on(tmp_path):
    """A SAR file covering the west of the scene only: NaN beyond it, the edge value
    half a 10 m pixel on, never the band mean."""
    optical = write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    db = np.full((2, 9, 4), -10.0, np.float32)
    db[:, 4, 2] = np.nan  # a hole inside: the mean of the file
    west = write_coarse(tmp_path / "west.tif", db)  # x 0 to 40 m
    sar = m3rcr_xr.open_quartet(optical, sar=west, chunks=16).sar.values
    np.testing.assert_array_equal(sar[:, :, :15], -10.0)  # centres up to 43.5 m
    assert np.isnan(sar[:, :, 15:]).all()


def test_a_geographic_optical_grid_takes_a_projected_sar(tmp_path, capsys):
    """Optical in EPSG:4326, SAR in UTM: the SAR on the optical y/x, by nearest; the
    CLI ingests it."""
    from pyproj import Transformer

    from m3rcr_xr.cli import main

    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(500_045, 3_999_975)
    step = 2e-5  # about 2 m: the scene lies inside the SAR's 90 m
    grid = Affine(step, 0, lon - 15 * step, 0, -step, lat + 15 * step)
    optical = write_raster(tmp_path / "cloudy.tif", _reflectance("uint16"), grid, "EPSG:4326")
    db = np.arange(2 * 9 * 9, dtype=np.float32).reshape(2, 9, 9) - 200
    sar = write_coarse(tmp_path / "sar.tif", db)
    ds = m3rcr_xr.open_quartet(optical, sar=sar, chunks=16)
    assert ds.sar.dims == ("polarization", "y", "x")
    np.testing.assert_array_equal(ds.sar.y.values, ds.cloudy.y.values)
    to_utm = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    x, y = to_utm.transform(*np.meshgrid(ds.x.values, ds.y.values))
    rows = np.floor((COARSE_GRID.f - y) / 10).astype(int)
    cols = np.floor((x - COARSE_GRID.c) / 10).astype(int)
    expected = db[:, rows, cols]
    agree = (ds.sar.values == expected).mean()
    assert agree > 0.99  # nearest: a pixel centre on a 10 m line may go either way
    assert main(["ingest", str(optical), str(tmp_path / "q.zarr"), "--sar", str(sar)]) == 0


def _described(tmp_path, optical=(), sar=()):
    """An optical and a SAR file whose bands hold their position (1, 2, ...) and are
    described by ``optical`` and ``sar``."""
    values = np.arange(1, 5, dtype=np.uint16)[:, None, None] * np.ones((4, 30, 30), np.uint16)
    cloudy = write_raster(tmp_path / "cloudy.tif", values, OPTICAL_GRID, CRS, descriptions=optical)
    db = -np.arange(1, 3, dtype=np.float32)[:, None, None] * np.ones((2, 9, 9), np.float32)
    return cloudy, write_raster(tmp_path / "sar.tif", db, COARSE_GRID, CRS, descriptions=sar)


@pytest.mark.parametrize(
    ("optical", "sar", "bands", "polarizations"),
    [
        (("Red", "green", "BLUE", "nir"), ("VH", "VV"), [3, 2, 1, 4], [-2, -1]),
        (("blue", "green", "red", "nir"), ("vv", "vh"), [1, 2, 3, 4], [-1, -2]),
        (("Band 1", "Band 2", "Band 3", "Band 4"), ("HH", "HV"), [1, 2, 3, 4], [-1, -2]),
        ((), (), [1, 2, 3, 4], [-1, -2]),  # no descriptions, as the M3R-CR files
    ],
)
def test_bands_named_by_their_descriptions_are_put_in_order(
    tmp_path, optical, sar, bands, polarizations
):
    cloudy, s1 = _described(tmp_path, optical, sar)
    with raise_if_dask_computes():
        ds = m3rcr_xr.open_quartet(cloudy, cloudfree=cloudy, sar=s1, chunks=16)
    for name in ("cloudy", "cloudfree"):
        assert ds[name].sel(band=["blue", "green", "red", "nir"])[:, 0, 0].values.tolist() == bands
    assert ds.sar.sel(polarization=["VV", "VH"])[:, 0, 0].values.tolist() == polarizations


@pytest.mark.parametrize(
    ("optical", "sar", "name"),
    [
        (("red", "red", "blue", "nir"), (), "cloudy.tif: cloudy"),
        (("red", "green", "blue", None), (), "cloudy.tif: cloudy"),
        (("red", "green", "blue", "alpha"), (), "cloudy.tif: cloudy"),
        ((), ("VV", "VV"), "sar.tif: sar"),
        ((), ("VH", None), "sar.tif: sar"),
    ],
)
def test_descriptions_naming_the_bands_but_not_each_once_are_refused(tmp_path, optical, sar, name):
    cloudy, s1 = _described(tmp_path, optical, sar)
    with pytest.raises(m3rcr_xr.InputFileError, match=f"{name} band descriptions .* exactly once"):
        m3rcr_xr.open_quartet(cloudy, sar=s1)


def test_shape_alignment_fills_sar_holes_with_the_mean_of_the_resampled_image(tmp_path):
    """As the published loader: nearest resampling to the optical shape, then one NaN
    mean over the resampled array (10 m pixels repeated 3 or 4 times), not the file's."""
    db = np.random.default_rng(3).uniform(-25, 0, (2, 9, 9)).astype("float32")
    db[:, 2:5, 1:3] = np.nan
    optical = write_optical(tmp_path / "cloudy.tif", _reflectance("uint16"))
    path = write_coarse(tmp_path / "sar.tif", db)
    with rasterio.open(path) as src:  # the published get_sar_image, upsampled
        reference = src.read(out_shape=(2, 30, 30), resampling=rasterio.enums.Resampling.nearest)
    holes = np.isnan(reference)
    reference[holes] = np.nanmean(reference)
    with raise_if_dask_computes():
        ds = m3rcr_xr.open_quartet(optical, sar=path, align="shape", chunks=16)
    sar = ds.sar.values
    np.testing.assert_array_equal(sar[~holes], reference[~holes])
    np.testing.assert_allclose(sar[holes], reference[holes], rtol=1e-6)
    assert ds.sar.attrs["nan_fill"] == "image mean"


def test_a_patch_whose_crs_has_no_epsg_code_is_refused_in_a_collection(tmp_path):
    """A collection stores each patch's CRS as an EPSG code: a LAEA proj string has none,
    and would have been stored as -1, its georeference lost."""
    from m3rcr_xr.io import stack_scenes

    laea = "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m"
    path = write_raster(tmp_path / "cloudy.tif", _reflectance("uint16"), OPTICAL_GRID, laea)
    scene = m3rcr_xr.open_quartet(path)
    meta = {name: ["p"] for name in ("patch", "season", "aoi", "split", "source")}
    with pytest.raises(m3rcr_xr.SchemaError, match=r"cloudy.tif: CRS .* has no EPSG code"):
        stack_scenes([scene], meta)
