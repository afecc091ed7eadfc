import json
import warnings

import numpy as np
import pytest

from m3rcr_xr import M3RCRWarning, UsageError, landcover


def test_eleven_classes_in_code_order():
    assert landcover.WORLDCOVER_CODES == (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
    assert len(landcover.class_names(2)) == 11
    assert all(c.startswith("#") and len(c) == 7 for c in landcover.colors(2))


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (1, {10: 0, 20: 1, 30: 1, 40: 2, 50: 3, 60: 4, 70: 6, 80: 5, 90: 5, 95: 6, 100: 6}),
        (2, {10: 0, 20: 1, 30: 2, 40: 3, 50: 4, 60: 5, 70: 6, 80: 7, 90: 8, 95: 9, 100: 10}),
    ],
)
def test_index_maps_match_the_reference_evaluation(level, expected):
    table = landcover.code_to_index(level)
    assert {code: int(table[code]) for code in expected} == expected
    others = np.setdiff1d(np.arange(256), list(expected))
    assert (table[others] == -1).all()


def test_class_lists_have_the_golden_lengths(shared_dir):
    golden = json.loads((shared_dir / "reference/golden/metrics.json").read_text())
    values = golden["fall_1_p_457"]["full300/identity_cloudy"]
    assert len(values["MAE_by_class_level1"]) == len(landcover.class_names(1))
    assert len(values["MAE_by_class_level2"]) == len(landcover.class_names(2))


def test_bad_level():
    with pytest.raises(UsageError, match="level=3: must be 1 or 2"):
        landcover.class_names(3)


def test_to_worldcover_keeps_codes_and_maps_the_rest_to_nodata():
    values = np.array([[10, 0, 95, 7], [266, 100, 255, 40]], dtype="uint16")
    with pytest.warns(M3RCRWarning, match=r"lc.tif: code\(s\) 7, 266 are not ESA WorldCover"):
        codes = landcover.to_worldcover(values, nodata=255, source="lc.tif")
    assert codes.dtype == np.uint8
    assert codes.tolist() == [[10, 0, 95, 0], [0, 100, 0, 40]]


def test_to_worldcover_of_floats_nan_is_nodata_silently():
    values = np.array([10.0, np.nan, 10.5, 30.0], dtype="float32")
    with pytest.warns(M3RCRWarning, match=r"code\(s\) 10.5 are not") as record:
        codes = landcover.to_worldcover(values)
    assert codes.tolist() == [10, 0, 0, 30] and len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert landcover.to_worldcover(np.array([0, 10, 50], "uint8")).tolist() == [0, 10, 50]


@pytest.mark.parametrize("level", [1, 2])
def test_worldcover_labels_ignore_nodata_unknown_codes_and_ignored_classes(level):
    import dask.array as da
    import xarray as xr

    codes = np.arange(256, dtype=np.uint8)
    labels = landcover.worldcover_labels(codes, level)
    index = landcover.code_to_index(level).astype(np.int16)
    ignored = [landcover.class_names(level).index(c) for c in landcover.ignored_classes(level)]
    expected = np.where((index < 0) | np.isin(index, ignored), landcover.IGNORE_INDEX, index)
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint8
    assert labels[0] == landcover.IGNORE_INDEX  # nodata
    assert (labels[70] == landcover.IGNORE_INDEX) == (level == 1)  # "unknown" at level 1
    lazy = landcover.worldcover_labels(da.from_array(codes, chunks=100), level)
    np.testing.assert_array_equal(lazy.compute(), labels)
    wrapped = landcover.worldcover_labels(xr.DataArray(codes, dims="x", name="lc"), level)
    assert wrapped.name == "lc" and (wrapped.values == labels).all()
    np.testing.assert_array_equal(
        landcover.worldcover_labels(np.array([300, -1]), level), landcover.IGNORE_INDEX
    )


def test_worldcover_labels_of_a_dataarray_carry_label_attrs_not_the_codes(tmp_path):
    """The land cover's nodata 0 is class index 0 (tree cover / forest land) among
    labels: carried over, a GeoTIFF of the labels masked every pixel of that class."""
    import rasterio
    import xarray as xr

    import m3rcr_xr

    codes = np.array([[10, 10, 0], [20, 30, 10]], dtype=np.uint8)
    landcover_ = xr.DataArray(
        codes,
        dims=("y", "x"),
        coords={"y": [15.0, 5.0], "x": [5.0, 15.0, 25.0]},
        attrs={"long_name": "ESA WorldCover class code", "nodata": 0},
        name="landcover",
    ).rio.write_crs(32633)
    labels = landcover.worldcover_labels(landcover_, 2)
    assert labels.attrs["nodata"] == landcover.IGNORE_INDEX and "long_name" in labels.attrs
    assert labels.attrs.keys() == landcover.label_attrs(2).keys() and labels.name == "landcover"
    assert labels.rio.crs == landcover_.rio.crs
    (written,) = m3rcr_xr.to_cog(labels, tmp_path / "labels.tif")
    with rasterio.open(written) as cog:
        assert cog.nodata == landcover.IGNORE_INDEX
        masked = cog.read_masks(1)[:2, :3] == 0
    np.testing.assert_array_equal(masked, codes == 0)
