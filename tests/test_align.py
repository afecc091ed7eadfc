import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling

import m3rcr_xr
from m3rcr_xr import align
from m3rcr_xr.align import (
    align_to,
    containing_index,
    fill_nan_with_mean,
    pixel_centers,
    shape_index,
)
from m3rcr_xr.testing import raise_if_dask_computes
from tests.rasters import write_raster


def test_containing_index_half_open_cells_and_edge_tolerance():
    # a coarse grid of 3 cells of 10 m starting at 100
    centres = np.array([94.0, 96.0, 100.0, 109.9, 110.0, 129.9, 134.9, 135.1])
    assert containing_index(centres, 100.0, 10.0, 3).tolist() == [-1, 0, 0, 0, 1, 2, 2, -1]
    # north-up rows: a negative step
    assert containing_index(np.array([99.0, 91.0, 89.0]), 100.0, -10.0, 2).tolist() == [0, 0, 1]


@pytest.mark.parametrize(("coarse", "fine"), [(90, 300), (7, 20), (300, 90)])
def test_shape_index_is_gdal_nearest(tmp_path, coarse, fine):
    values = np.arange(coarse * coarse, dtype="float32").reshape(1, coarse, coarse)
    path = write_raster(tmp_path / "a.tif", values, Affine(10, 0, 0, 0, -10, 0), "EPSG:32632")
    with rasterio.open(path) as src:
        expected = src.read(1, out_shape=(fine, fine), resampling=Resampling.nearest)
    index = shape_index(coarse, fine)
    np.testing.assert_array_equal(values[0][np.ix_(index, index)], expected)


def test_coordinate_alignment_matches_the_geotiff_transform(train_quartet, test_quartet):
    for quartet in (train_quartet, test_quartet):
        ds = m3rcr_xr.open_quartet(
            quartet["cloudy"], sar=quartet["sar"], landcover=quartet["landcover"]
        )
        rng = np.random.default_rng(0)
        rows = rng.integers(0, ds.sizes["y"], 400)
        cols = rng.integers(0, ds.sizes["x"], 400)
        xs, ys = ds.x.values[cols], ds.y.values[rows]
        with rasterio.open(quartet["sar"]) as src:
            raw = src.read()
            coarse = [src.index(x, y) for x, y in zip(xs, ys, strict=True)]
            height, width = src.height, src.width
        sar = ds.sar.values
        checked = 0
        for (r, c), row, col in zip(coarse, rows, cols, strict=True):
            if 0 <= r < height and 0 <= c < width:
                np.testing.assert_allclose(sar[:, row, col], raw[:, r, c].astype("float32"))
                checked += 1
        assert checked > 380  # all but centres in the 1-2 m strip beyond the 10 m grid
        with rasterio.open(quartet["landcover"]) as src:
            lc = src.read(1)
        landcover = ds.landcover.values
        for (r, c), row, col in zip(coarse, rows, cols, strict=True):
            if 0 <= r < height and 0 <= c < width:
                assert landcover[row, col] == lc[r, c]


def test_coordinates_differ_from_shape_alignment(train_quartet):
    by_coords = m3rcr_xr.open_quartet(train_quartet["cloudy"], sar=train_quartet["sar"])
    by_shape = m3rcr_xr.open_quartet(
        train_quartet["cloudy"], sar=train_quartet["sar"], align="shape"
    )
    differ = float((by_coords.sar != by_shape.sar).mean())
    assert 0.01 < differ < 0.5  # the 1-2 m offset moves some cell borders by a pixel
    assert by_shape.sar.attrs["align"] == "shape"


def _grid(crs: str, left: float, top: float, res: float, shape: tuple[int, int]) -> xr.DataArray:
    height, width = shape
    transform = Affine(res, 0, left, 0, -res, top)
    y = top - (np.arange(height) + 0.5) * res
    x = left + (np.arange(width) + 0.5) * res
    data = np.arange(height * width, dtype="float32").reshape(height, width)
    da = xr.DataArray(data, dims=("y", "x"), coords={"y": y, "x": x}, name="layer")
    return da.rio.write_crs(crs).rio.write_transform(transform)


def test_other_crs_is_reprojected_lazily_by_nearest():
    target = _grid("EPSG:32632", 699_000, 5_000_000, 3.0, (120, 150))
    # the same place in the next UTM zone, 10 m cells numbered row-major
    to33 = Transformer.from_crs("EPSG:32632", "EPSG:32633", always_xy=True)
    x0, y0 = to33.transform(699_000 - 200, 5_000_000 + 200)
    layer = _grid("EPSG:32633", np.floor(x0), np.ceil(y0), 10.0, (80, 90)).chunk(40)
    aligned = align_to(layer, target)
    assert aligned.chunks is not None
    xx, yy = np.meshgrid(target.x.values, target.y.values)
    lx, ly = to33.transform(xx, yy)
    transform = layer.rio.transform()
    col = np.floor((lx - transform.c) / transform.a).astype(int)
    row = np.floor((ly - transform.f) / transform.e).astype(int)
    expected = row * 90 + col
    assert (aligned.values == expected).mean() > 0.99


def test_no_overlap_is_an_error():
    target = _grid("EPSG:32632", 0, 1000, 3.0, (10, 10))
    layer = _grid("EPSG:32632", 5000, 1000, 10.0, (5, 5))
    with pytest.raises(m3rcr_xr.AlignmentError, match="does not overlap"):
        align_to(layer, target)


def test_crs_that_cannot_be_reprojected():
    target = _grid("EPSG:32632", 0, 1000, 3.0, (10, 10))
    layer = _grid("IAU_2015:49900", 0, 10, 0.1, (5, 5))  # a grid on Mars
    with pytest.raises(m3rcr_xr.AlignmentError, match="cannot reproject"):
        align_to(layer, target)


def test_nan_holes_filled_with_band_mean_lazily():
    data = np.array([[[1.0, np.nan], [3.0, 5.0]], [[np.nan, 2.0], [2.0, 2.0]]], "float32")
    sar = xr.DataArray(data, dims=("polarization", "y", "x")).chunk(1)
    filled = fill_nan_with_mean(sar)
    assert filled.chunks is not None
    np.testing.assert_allclose(filled.values[0, 0, 1], 3.0)
    np.testing.assert_allclose(filled.values[1, 0, 0], 2.0)
    assert filled.attrs["nan_fill"] == "band mean"
    image = fill_nan_with_mean(sar, per_band=False)
    np.testing.assert_allclose(image.values[0, 0, 1], 15 / 6)


def test_infinite_values_are_holes_and_left_out_of_the_mean():
    data = np.array([[[1.0, np.inf], [3.0, 5.0]], [[-np.inf, 2.0], [np.nan, 4.0]]], "float32")
    sar = xr.DataArray(data, dims=("polarization", "y", "x")).chunk(1)
    filled = fill_nan_with_mean(sar).values
    np.testing.assert_allclose(filled, [[[1.0, 3.0], [3.0, 5.0]], [[3.0, 2.0], [3.0, 4.0]]])
    np.testing.assert_allclose(fill_nan_with_mean(sar, per_band=False).values[0, 0, 1], 15 / 5)


def test_rotated_transform_is_refused_by_name():
    with pytest.raises(m3rcr_xr.AlignmentError, match="s1.tif: rotated or sheared"):
        align.check_north_up(Affine(10, 0, 0, 0.1, -10, 0), "s1.tif")
    with pytest.raises(m3rcr_xr.AlignmentError, match="grid: rotated or sheared"):
        align.pixel_centers(Affine(10, 1, 0, 0, -10, 0), 3, 3)
    align.check_north_up(Affine(10, 0, 0, 0, -10, 0))


def test_pixel_centres_is_a_deprecated_alias_of_pixel_centers():
    transform = Affine(10, 0, 100, 0, -10, 200)
    with pytest.warns(FutureWarning, match="use pixel_centers"):
        old = align.pixel_centres(transform, 2, 3)
    new = align.pixel_centers(transform, 2, 3)
    assert [a.tolist() for a in old] == [a.tolist() for a in new] == [[195, 185], [105, 115, 125]]


@pytest.mark.parametrize(
    ("method", "crs"), [("coords", "EPSG:32632"), ("coords", "EPSG:32633"), ("shape", "EPSG:32632")]
)
def test_the_result_is_georeferenced_as_the_target(method, crs):
    target = _grid("EPSG:32632", 699_000, 5_000_000, 3.0, (120, 150))
    left, top = (699_000 - 20, 5_000_000 + 20)
    if crs == "EPSG:32633":
        left, top = Transformer.from_crs("EPSG:32632", crs, always_xy=True).transform(left, top)
        left, top = np.floor(left) - 200, np.ceil(top) + 200
    layer = _grid(crs, left, top, 10.0, (60, 70))
    aligned = align_to(layer, target, method=method)
    assert aligned.rio.crs == target.rio.crs
    assert aligned.rio.transform() == target.rio.transform()
    assert aligned.rio.bounds() == target.rio.bounds()


def test_a_geographic_target_takes_the_layer_on_its_own_y_x():
    """odc-geo names a geographic grid's dims latitude/longitude: align_to gives the
    target's y/x back, its coordinates, and the layer's values by nearest."""
    step = 2.7e-5
    grid = Affine(step, 0, 9.12, 0, -step, 45.76)
    y, x = pixel_centers(grid, 60, 60)
    target = xr.DataArray(np.zeros((60, 60), np.uint16), coords={"y": y, "x": x})
    target = target.rio.write_crs("EPSG:4326").rio.write_transform(grid)
    layer = target.rio.reproject("EPSG:32632", resolution=10).astype("float32")
    layer = layer.copy(data=np.arange(layer.size, dtype="float32").reshape(layer.shape))
    out = align_to(layer.chunk(16), target.chunk(20))
    assert out.dims == ("y", "x")
    np.testing.assert_array_equal(out.y.values, y)
    np.testing.assert_array_equal(out.x.values, x)
    back = out.rio.reproject("EPSG:32632", shape=layer.shape, transform=layer.rio.transform())
    assert np.isin(out.values[np.isfinite(out.values)], layer.values).all()
    assert np.isfinite(back.values).any()


def test_holes_filled_only_where_covered_with_the_mean_over_it():
    sar = xr.DataArray(np.array([[-10.0, np.nan, -20.0, -60.0, np.nan]]), dims=("y", "x"))
    covered = xr.DataArray(np.array([[True, True, True, False, False]]), dims=("y", "x"))
    with raise_if_dask_computes():
        out = fill_nan_with_mean(sar.chunk(2), covered=covered)
    np.testing.assert_array_equal(out.values, [[-10.0, -15.0, -20.0, np.nan, np.nan]])
