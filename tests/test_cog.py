import errno
import logging
import os
import shutil
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from dask.callbacks import Callback
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.transform import Affine
from rio_cogeo.cogeo import cog_validate

import m3rcr_xr
from m3rcr_xr import cog, locks
from m3rcr_xr.cog import arrays, destinations
from m3rcr_xr.testing import raise_if_dask_computes
from tests.conftest import forbid_head_bucket, geotiff_scene, killed_writer, run_script, snapshot


def _scene(size: int, chunks: int = 256) -> xr.DataArray:
    """A lazy float decloud-like scene with a nodata (NaN) border on the left."""
    scene = m3rcr_xr.synthetic_scene((size, size), chunks=chunks)
    cloudy = scene["cloudy"].astype("float32")
    return cloudy.where(cloudy.x > cloudy.x[20]).rename("decloud")


def test_a_scene_becomes_a_valid_tiled_cog_with_overviews(tmp_path):
    scene = _scene(300, 128)
    path = tmp_path / "d.tif"
    assert m3rcr_xr.to_cog(scene, path, blocksize=128) == [path]
    assert cog_validate(str(path), strict=True)[0]
    with rasterio.open(path) as f:
        assert f.block_shapes == [(128, 128)] * 4
        assert f.interleaving == rasterio.enums.Interleaving.pixel  # a tile holds all bands
        assert f.overviews(1) == [2, 4]
        assert f.crs == scene.rio.crs and f.transform == scene.rio.transform()
        assert np.isnan(f.nodata)
        assert f.descriptions == ("blue", "green", "red", "nir")
        values = f.read()
    assert np.array_equal(values[:, :300, :300], scene.values, equal_nan=True)
    assert np.isnan(values[:, :, :21]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tif"]  # no partial left


def test_integer_bands_take_the_declared_nodata(tmp_path):
    cloudy = m3rcr_xr.synthetic_scene((64, 64))["cloudy"].assign_attrs(nodata=0)
    m3rcr_xr.to_cog(cloudy, tmp_path / "c.tif")
    with rasterio.open(tmp_path / "c.tif") as f:
        assert f.nodata == 0 and f.dtypes[0] == "uint16"


def _masked_read(tmp_path: Path) -> xr.DataArray:
    """A uint16 GeoTIFF with 100 pixels of nodata 0, read masked by rioxarray: float32,
    NaN where nodata, ``encoding`` uint16 with ``_FillValue`` 0."""
    cloudy = m3rcr_xr.synthetic_scene((64, 64))["cloudy"].load()
    cloudy[:, :10, :10] = 0
    cloudy.rio.write_nodata(0).rio.to_raster(tmp_path / "src.tif")
    return rioxarray.open_rasterio(tmp_path / "src.tif", masked=True, chunks={})


def test_a_masked_read_is_written_with_its_nodata_in_its_pixels(tmp_path):
    """As ``rio.to_raster`` writes it: NaN as the encoded nodata, in the encoded dtype
    (the file declared nodata 0 and held NaN, which GDAL took for valid pixels)."""
    masked = _masked_read(tmp_path)
    with raise_if_dask_computes():
        arrays.with_nodata(masked)
    m3rcr_xr.to_cog(masked, tmp_path / "c.tif", blocksize=32, progress=False)
    with rasterio.open(tmp_path / "c.tif") as f:
        assert f.dtypes[0] == "uint16" and f.nodata == 0
        nodata = f.read_masks(1) == 0
        values = f.read()
    assert np.array_equal(nodata, np.isnan(masked.values[0])) and nodata.sum() == 100
    np.testing.assert_array_equal(values, masked.fillna(0).values)


def test_values_the_encoded_dtype_cannot_hold_are_refused(tmp_path):
    masked = _masked_read(tmp_path)
    halves = masked.copy(data=masked.data / 2)  # keeps the encoding: uint16
    with pytest.raises(m3rcr_xr.UsageError, match="dtype uint16 cannot hold; drop encoding"):
        m3rcr_xr.to_cog(halves, tmp_path / "c.tif", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.tif"]


@pytest.mark.parametrize(
    ("long_name", "descriptions"),
    [(None, (None,) * 4), (("b", "g", "r", "n"), ("b", "g", "r", "n"))],
    ids=["name-tag", "one-a-band"],
)
def test_a_long_name_is_band_names_only_with_one_a_band(tmp_path, long_name, descriptions):
    """rioxarray reads the name a GeoTIFF was written with into ``long_name`` (a
    string, for four numbered bands): odc-geo took it for band names and refused."""
    m3rcr_xr.synthetic_scene((32, 32))["cloudy"].rio.to_raster(tmp_path / "src.tif")
    read = rioxarray.open_rasterio(tmp_path / "src.tif", chunks={})
    assert read.attrs["long_name"] == "cloudy" and read["band"].dtype.kind == "i"
    read = read if long_name is None else read.assign_attrs(long_name=long_name)
    m3rcr_xr.to_cog(read, tmp_path / "c.tif", progress=False)
    with rasterio.open(tmp_path / "c.tif") as f:
        assert f.descriptions == descriptions
        np.testing.assert_array_equal(f.read(), read.values)


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (40, 1), (1000, 3)])
def test_a_scene_one_or_few_pixels_across_is_written(tmp_path, shape):
    """odc-geo computed the grid of a level of a side of 0 pixels: ZeroDivisionError."""
    height, width = shape
    data = np.random.default_rng(0).random((2, *shape), dtype="float32")
    coords = {"y": 5e6 - 3.0 * (np.arange(height) + 0.5), "x": 4e5 + 3.0 * (np.arange(width) + 0.5)}
    scene = xr.DataArray(data, dims=("band", "y", "x"), coords=coords).rio.write_crs(32632)
    # one pixel across: its size is in the transform only
    scene = scene.rio.write_transform(Affine(3.0, 0.0, 4e5, 0.0, -3.0, 5e6)).chunk(16)
    m3rcr_xr.to_cog(scene, tmp_path / "s.tif", blocksize=16, progress=False)
    read = rioxarray.open_rasterio(tmp_path / "s.tif")
    assert read.rio.crs == scene.rio.crs and read.rio.transform() == scene.rio.transform()
    np.testing.assert_array_equal(read.values[:, :height, :width], scene.values)
    assert np.isnan(read.values[:, height:]).all() and np.isnan(read.values[:, :, width:]).all()
    assert min(read.shape[1:]) >= 2


def test_a_single_band_is_written_too(tmp_path):
    band = _lazy_band(64)
    m3rcr_xr.to_cog(band, tmp_path / "b.tif", blocksize=32)
    with rasterio.open(tmp_path / "b.tif") as f:
        assert f.count == 1 and f.descriptions == ("b",)
        np.testing.assert_array_equal(f.read(), band.values)


def test_a_bool_mask_is_written_as_zeros_and_ones(tmp_path):
    mask = m3rcr_xr.synthetic_scene((100, 70), chunks=64)["cloudmask"]
    m3rcr_xr.to_cog(mask, tmp_path / "m.tif", blocksize=16, progress=False)
    with rasterio.open(tmp_path / "m.tif") as src:  # grown to 104 x 72 for 3 overviews
        assert src.dtypes[0] == "uint8" and src.shape == (104, 72)
        np.testing.assert_array_equal(src.read(1)[:100, :70], mask.values.astype("uint8"))
    assert cog_validate(str(tmp_path / "m.tif"))[0]


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_four_bands_are_bands_not_red_green_blue_alpha(tmp_path, dtype):
    scene = m3rcr_xr.synthetic_scene((64, 64), chunks=64)["cloudy"].astype(dtype)
    m3rcr_xr.to_cog(scene, tmp_path / "c.tif", progress=False)
    with rasterio.open(tmp_path / "c.tif") as src:
        assert ColorInterp.alpha not in src.colorinterp and ColorInterp.red not in src.colorinterp
        assert all(flags != [MaskFlags.alpha] for flags in src.mask_flag_enums)
        assert (src.read_masks(1) == 255).all()  # the NIR band masks nothing


def test_a_band_selected_by_label_is_one_band(tmp_path):
    red = _scene(64).sel(band="red")
    m3rcr_xr.to_cog(red, tmp_path / "r.tif", progress=False)
    with rasterio.open(tmp_path / "r.tif") as src:
        assert src.count == 1 and src.descriptions == ("red",)
        np.testing.assert_array_equal(src.read(1), red.values)


@pytest.mark.parametrize("long_name", [None, "Sentinel-1 backscatter"])
def test_sar_is_written_as_its_polarizations_named(tmp_path, long_name):
    """A scene's ``sar`` (dims polarization, y, x): odc-geo's raw ValueError "Found 1
    band names (['Sentinel-1 backscatter']), expected 2 bands", and two bands without
    names, one after the other, where it has no ``long_name``."""
    sar = m3rcr_xr.synthetic_scene((64, 64), chunks=32)["sar"]
    sar = sar if long_name is None else sar.assign_attrs(long_name=long_name)
    m3rcr_xr.to_cog(sar, tmp_path / "s.tif", blocksize=32, progress=False)
    with rasterio.open(tmp_path / "s.tif") as src:
        assert src.descriptions == ("VV", "VH") and src.interleaving.name == "pixel"
        np.testing.assert_array_equal(src.read(), sar.values)


def test_a_collections_sar_is_one_cog_of_named_polarizations_per_patch(tmp_path):
    collection = m3rcr_xr.synthetic_collection(2, 32)
    written = m3rcr_xr.to_cog(collection, tmp_path / "out", variable="sar", progress=False)
    for index, path in enumerate(written):
        with rasterio.open(path) as src:
            assert src.descriptions == ("VV", "VH")
            np.testing.assert_array_equal(src.read(), collection["sar"][index].values)


@pytest.mark.parametrize(
    ("change", "options", "match"),
    [
        (lambda a: a, {"compress": "jpeg"}, "compress='jpeg': not for 4 band.s. of uint16"),
        (
            lambda a: a.expand_dims(time=2),
            {},
            r"cloudy: dims \('time', 'band', 'y', 'x'\), bands along time and band; to_cog writes",
        ),
        (lambda a: a.rename(x="lon"), {}, r"cloudy: dims \('band', 'y', 'lon'\), not both y and x"),
        (lambda a: a, {"compress": "foo"}, "compress='foo': not a compression to_cog"),
        (lambda a: a, {"compress": "none"}, "compress='none': not a compression to_cog"),
        (lambda a: a, {"overview_resampling": "bogus"}, "overview_resampling='bogus': not a"),
        (lambda a: a.assign_attrs(nodata=-1), {}, "cloudy: its nodata is no value of its dtype"),
        (lambda a: a.drop_vars("spatial_ref"), {}, "cloudy: has no CRS"),
    ],
    ids=[
        "lossy",
        "two-band-dims",
        "no-x",
        "unknown-codec",
        "uncompressed",
        "resampling",
        "nodata",
        "no-crs",
    ],
)
def test_what_a_cog_cannot_hold_is_refused_before_any_work(tmp_path, change, options, match):
    scene = m3rcr_xr.synthetic_scene((64, 64), chunks=64)["cloudy"]
    with raise_if_dask_computes(), pytest.raises(m3rcr_xr.UsageError, match=match):
        m3rcr_xr.to_cog(change(scene), tmp_path / "c.tif", progress=False, **options)
    assert list(tmp_path.iterdir()) == []


def test_a_collection_becomes_one_cog_per_patch_named_by_patch(tmp_path):
    collection = m3rcr_xr.synthetic_collection(2, 48)
    written = collection.m3rcr.to_cog(tmp_path / "out", variable="cloudy")
    assert [p.name for p in written] == ["synthetic_0_p_0.tif", "synthetic_1_p_0.tif"]
    for index, path in enumerate(written):
        patch = collection["cloudy"].isel(patch=index)
        with rasterio.open(path) as f:
            assert f.crs.to_epsg() == int(patch["epsg"])
            assert f.transform.c == float(patch.x[0]) - 1.5  # pixel centres, 3 m
            assert np.array_equal(f.read(), patch.values)


def test_a_patch_stored_without_an_epsg_code_is_refused_before_any_work(tmp_path):
    """Earlier versions stored a CRS without an EPSG code as epsg -1: no GeoTIFF can be
    georeferenced from it."""
    collection = m3rcr_xr.synthetic_collection(2, 32)
    collection = collection.assign_coords(epsg=("patch", np.array([32632, -1], np.int32)))
    with pytest.raises(m3rcr_xr.SchemaError, match="patch synthetic_1_p_0: epsg -1 is no EPSG"):
        collection.m3rcr.to_cog(tmp_path / "out", variable="cloudy")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        (["a", "b", "a"], m3rcr_xr.SchemaError, "repeated: 'a'"),
        (["a", "b", "A"], m3rcr_xr.StoreError, "a.tif, A.tif: file names that differ only by case"),
    ],
)
def test_patch_ids_that_give_one_file_are_refused_before_any_work(tmp_path, ids, error, match):
    cloudy = m3rcr_xr.synthetic_collection(3, 32)["cloudy"].assign_coords(patch=ids)
    with pytest.raises(error, match=match):
        m3rcr_xr.to_cog(cloudy, tmp_path / "cogs", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_dataarray_accessor_writes_too(tmp_path):
    scene = _scene(64)
    assert scene.m3rcr.to_cog(tmp_path / "a.tif") == [tmp_path / "a.tif"]


def test_each_block_of_the_source_is_computed_once(tmp_path):
    computed = []

    def counted(block):
        computed.append(block.shape)
        return block

    scene = _scene(128, chunks=32)
    source = scene.copy(data=scene.data.map_blocks(counted, meta=np.array((), scene.dtype)))
    with dask.config.set(scheduler="synchronous"):
        m3rcr_xr.to_cog(source, tmp_path / "once.tif", blocksize=32)
    assert len(computed) == scene.data.npartitions  # a lazy decloud runs its network once


def test_an_existing_file_is_kept_without_overwrite(tmp_path):
    path = tmp_path / "mine.tif"
    m3rcr_xr.to_cog(_scene(32), path)
    before = snapshot(tmp_path)
    with pytest.raises(m3rcr_xr.StoreError, match="exists; pass overwrite=True"):
        m3rcr_xr.to_cog(_scene(64), path)
    assert snapshot(tmp_path) == before
    m3rcr_xr.to_cog(_scene(64), path, overwrite=True)
    assert cog_validate(str(path))[0]
    with rasterio.open(path) as cog:
        assert cog.shape == (64, 64)


@pytest.mark.parametrize("sidecar", [".msk", ".OVR"])
def test_a_gdal_mask_or_overviews_beside_a_destination_is_refused(tmp_path, sidecar):
    """GDAL reads OUT.tif.msk as the mask of whatever OUT.tif is: one left by a user's
    gdal_translate masked every pixel of the GeoTIFF written in its place (and a stale
    .ovr shows the old pixels when zoomed out). Refused before any work, replacing or
    not; the sidecar is not the library's to remove."""
    path = tmp_path / "d.tif"
    m3rcr_xr.to_cog(_scene(64), path)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(path, "r+") as f:
        f.write_mask(np.zeros((64, 64), "uint8"))  # as gdal_translate -mask does
    (tmp_path / "d.tif.msk").rename(tmp_path / f"d.tif{sidecar}")
    before = snapshot(tmp_path)
    with pytest.raises(m3rcr_xr.StoreError, match=rf"d\.tif\{sidecar}: GDAL's external"):
        m3rcr_xr.to_cog(_scene(64) * 2, path, overwrite=True)
    path.unlink()  # a new file there: the same
    with pytest.raises(m3rcr_xr.StoreError, match=rf"d\.tif\{sidecar}: GDAL's external"):
        m3rcr_xr.to_cog(_scene(64), path)
    assert snapshot(tmp_path) == {k: v for k, v in before.items() if k != "d.tif"}
    (tmp_path / f"d.tif{sidecar}").unlink()
    m3rcr_xr.to_cog(_scene(64), path)
    with rasterio.open(path) as cog:
        assert cog.dataset_mask().any()


def test_a_gdal_sidecar_of_a_replaced_file_is_kept_and_warned_of(tmp_path, caplog):
    """GDAL keeps the statistics it computed of d.tif in d.tif.aux.xml, and shows them
    for the file that replaces d.tif: not the library's to remove, so it says so."""
    path, sidecar = tmp_path / "d.tif", tmp_path / "d.tif.aux.xml"
    m3rcr_xr.to_cog(_scene(32), path)
    with rasterio.open(path) as f:  # as gdalinfo -stats or QGIS do
        f.stats()
    kept = sidecar.read_bytes()
    with caplog.at_level(logging.WARNING, logger="m3rcr_xr.cog"):
        assert m3rcr_xr.to_cog(_scene(32) * 2, path, overwrite=True) == [path]
    assert sidecar.read_bytes() == kept
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        f"{sidecar}: a GDAL sidecar of {path}, which was just replaced: it describes the "
        "replaced file (statistics"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="m3rcr_xr.cog"):
        m3rcr_xr.to_cog(_scene(32), tmp_path / "new.tif")  # nothing replaced, no sidecar
        m3rcr_xr.to_cog(_scene(32), tmp_path / "new.tif", overwrite=True)
    assert not caplog.records


def _their_geotiff(path):
    _scene(32).rio.to_raster(path)  # rioxarray's GeoTIFF: no m3rcr_xr Software tag
    return path


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda path: path.write_bytes(b"not ours"), "was not written by m3rcr_xr .*tag: none"),
        (_their_geotiff, "was not written by m3rcr_xr"),
        (
            lambda path: path.symlink_to(m3rcr_xr.to_cog(_scene(32), path.with_name("o.tif"))[0]),
            "is a symbolic link",
        ),
    ],
    ids=["no-tiff", "rioxarray", "link"],
)
def test_overwrite_replaces_only_geotiffs_of_m3rcr(tmp_path, make, match):
    """A user's file of the same name is never replaced, ``overwrite`` or not."""
    path = tmp_path / "d.tif"
    make(path)
    before = snapshot(tmp_path)
    with pytest.raises(m3rcr_xr.StoreError, match=f"d.tif: {match}.*remove it yourself"):
        m3rcr_xr.to_cog(_scene(64), path, overwrite=True)
    assert snapshot(tmp_path) == before


#: a GeoTIFF of a store's cloudy bands written by another process: its record
COG_ELSEWHERE = """
import sys, tifffile, m3rcr_xr
m3rcr_xr.to_cog(m3rcr_xr.open_zarr(sys.argv[1])["cloudy"], sys.argv[2], progress=False)
with tifffile.TiffFile(sys.argv[2]) as tiff:
    print(tiff.pages.first.tags[270].value)
"""


def _record(path: Path) -> str:
    with rasterio.open(path) as f:  # GDAL reads it as the file's ImageDescription
        return f.tags()["TIFFTAG_IMAGEDESCRIPTION"]


def test_a_cog_records_what_it_was_written_from_the_same_in_every_process(tmp_path):
    """What ``written_from`` compares (a rerun of ``m3rcr decloud --cog`` keeps such a
    file): the store's fingerprint, not anything of the process that wrote it."""
    import subprocess
    import sys

    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((48, 40), seed=3), tmp_path / "s.zarr")
    cloudy = m3rcr_xr.open_zarr(tmp_path / "s.zarr")["cloudy"]
    here, there = tmp_path / "here.tif", tmp_path / "there.tif"
    m3rcr_xr.to_cog(cloudy, here)
    elsewhere = subprocess.run(
        [sys.executable, "-c", COG_ELSEWHERE, str(tmp_path / "s.zarr"), str(there)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert _record(here).startswith("m3rcr_xr source ")
    assert elsewhere.stdout.split("\n")[-2] == _record(here) == _record(there)
    assert cog.written_from(cloudy, there) and cog.written_from(
        cloudy.to_dataset(), here, variable="cloudy"
    )
    with rasterio.open(here) as f:  # what GDAL reads is as it was
        assert f.descriptions == ("blue", "green", "red", "nir") and f.nodata is None
        assert f.tags()["TIFFTAG_SOFTWARE"].startswith("m3rcr_xr")
    assert np.array_equal(rioxarray.open_rasterio(here).values, cloudy.values)
    cog.check_replaceable(here, overwrite=True)  # its Software tag is read as before


def test_a_scene_whose_file_changed_since_it_was_opened_is_refused(tmp_path):
    """Refused before any work, as by ``to_zarr``: the GeoTIFF could mix the rows of
    the old file read before (GDAL's cache) with the new one's."""
    files = geotiff_scene(tmp_path / "in", 100)
    scene = m3rcr_xr.open_quartet(**files)
    os.replace(files["sar"], tmp_path / "old.tif")
    shutil.copyfile(tmp_path / "old.tif", files["sar"])  # the same pixels, another file
    with pytest.raises(m3rcr_xr.InputFileError, match=r"sar\.tif: changed since it was opened"):
        m3rcr_xr.to_cog(scene, tmp_path / "c.tif", variable="sar")
    assert sorted(os.listdir(tmp_path)) == ["in", "old.tif"]


def _without_record(monkeypatch, array, path):
    """``array`` written as earlier versions wrote it: no ImageDescription."""
    graph = cog.cog_graph
    with monkeypatch.context() as patched:
        patched.setattr(cog, "cog_graph", lambda *args, description, **kw: graph(*args, **kw))
        m3rcr_xr.to_cog(array, path)


@pytest.mark.parametrize(
    ("write", "options"),
    [
        (lambda array, path: m3rcr_xr.to_cog(array, path, blocksize=256), {}),
        (lambda array, path: m3rcr_xr.to_cog(array, path), {"compress": "zstd"}),
        (lambda array, path: m3rcr_xr.to_cog(array, path), {"overview_resampling": "average"}),
        (lambda array, path: m3rcr_xr.to_cog(array + 1, path), {}),
        (lambda array, path: m3rcr_xr.to_cog(array.isel(x=slice(1, None)), path), {}),
        (lambda array, path: array.rio.to_raster(path), {}),
        (lambda array, path: path.write_bytes(b"not ours"), {}),
        (lambda array, path: None, {}),
    ],
    ids=[
        "blocksize",
        "compress",
        "resampling",
        "other-data",
        "other-grid",
        "rioxarray",
        "no-tiff",
        "none",
    ],
)
def test_a_file_of_other_data_or_options_is_not_written_from_them(tmp_path, write, options):
    array = _scene(64)
    path = tmp_path / "d.tif"
    write(array, path)
    assert not cog.written_from(array, path, **options)
    m3rcr_xr.to_cog(array, tmp_path / "ours.tif", **options)
    assert cog.written_from(array, tmp_path / "ours.tif", **options)


def test_a_cog_of_an_earlier_version_records_nothing_it_was_written_from(tmp_path, monkeypatch):
    array = _scene(32)
    _without_record(monkeypatch, array, tmp_path / "d.tif")
    assert not cog.written_from(array, tmp_path / "d.tif")
    cog.check_replaceable(tmp_path / "d.tif", overwrite=True)  # still ours to replace


def test_a_collection_is_written_from_its_data_only_with_every_patch(tmp_path):
    collection = m3rcr_xr.synthetic_collection(2, 32)
    m3rcr_xr.to_cog(collection, tmp_path / "cogs", variable="cloudy")
    assert cog.written_from(collection, tmp_path / "cogs", variable="cloudy")
    assert not cog.written_from(collection, tmp_path / "cogs", variable="cloudfree")
    first, second = sorted((tmp_path / "cogs").iterdir())
    first.rename(tmp_path / "aside.tif")
    assert not cog.written_from(collection, tmp_path / "cogs", variable="cloudy")
    second.rename(first)  # a patch's file under another patch's name
    (tmp_path / "aside.tif").rename(second)
    assert not cog.written_from(collection, tmp_path / "cogs", variable="cloudy")


def test_lazy_coordinates_are_computed_once_for_the_record_and_the_patches(tmp_path):
    """A collection ``.chunk()``-ed (or opened with ``xr.open_zarr``) has lazy ``y``, ``x``,
    ``epsg``...: the record computed each of its 7 coordinates, and each patch its
    ``epsg``, and its grid twice in odc-geo (14 graphs for 2 patches, 7 for
    ``written_from``): all are computed in one graph now, the write in another."""
    collection = m3rcr_xr.synthetic_collection(2, 32)["cloudy"].chunk()
    assert collection["epsg"].chunks is not None and collection["x"].chunks is not None
    with raise_if_dask_computes(2):
        m3rcr_xr.to_cog(collection, tmp_path / "cogs", progress=False)
    with raise_if_dask_computes(1):
        assert cog.written_from(collection, tmp_path / "cogs")
    loaded = collection.load()
    with raise_if_dask_computes(1):  # a collection in memory: the write alone
        m3rcr_xr.to_cog(loaded, tmp_path / "cogs", overwrite=True, progress=False)


def test_identities_given_are_not_taken_again(tmp_path, monkeypatch):
    """``m3rcr decloud --cog`` identifies its store once for all its GeoTIFFs (it was
    listed again for each one): given, the record is the same as where it is taken."""
    from m3rcr_xr import identity

    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((32, 32)), tmp_path / "s.zarr")
    cloudy = m3rcr_xr.open_zarr(tmp_path / "s.zarr")["cloudy"]
    identities = identity.source_identities(identity.sources(cloudy))
    with monkeypatch.context() as patched:
        patched.setattr(identity, "_listing_identity", _never_listed)
        m3rcr_xr.to_cog(cloudy, tmp_path / "c.tif", identities=identities)
        assert cog.written_from(cloudy, tmp_path / "c.tif", identities=identities)
    assert cog.written_from(cloudy, tmp_path / "c.tif")
    m3rcr_xr.to_cog(cloudy, tmp_path / "d.tif")
    assert _record(tmp_path / "d.tif") == _record(tmp_path / "c.tif")


def _never_listed(target):
    raise AssertionError(f"{target.path} listed again")


def test_a_malformed_tiff_is_refused_not_a_traceback(tmp_path, monkeypatch):
    """tifffile raises many kinds of error on a malformed file (TypeError among them):
    any is a file this library did not write."""
    import tifffile

    def malformed(*args, **kwargs):
        raise TypeError("int() argument must be a string")

    path = tmp_path / "d.tif"
    m3rcr_xr.to_cog(_scene(32), path)
    monkeypatch.setattr(tifffile, "TiffFile", malformed)
    with pytest.raises(m3rcr_xr.StoreError, match="d.tif: was not written by m3rcr_xr"):
        m3rcr_xr.to_cog(_scene(64), path, overwrite=True)


def test_a_file_that_comes_during_the_work_is_not_replaced(tmp_path, monkeypatch):
    """The destination was free when checked; the user's file written while the blocks
    were computed is kept, and nothing of this write is left."""
    import m3rcr_xr.cog as cog_module

    compute = cog_module.compute_with_progress

    def user_writes_meanwhile(*graphs, **kwargs):
        compute(*graphs, **kwargs)
        _their_geotiff(tmp_path / "d.tif")

    monkeypatch.setattr(cog_module, "compute_with_progress", user_writes_meanwhile)
    for overwrite in (False, True):
        (tmp_path / "d.tif").unlink(missing_ok=True)
        with pytest.raises(m3rcr_xr.StoreError, match="d.tif: (exists|was not written)"):
            m3rcr_xr.to_cog(_scene(64), tmp_path / "d.tif", overwrite=overwrite)
        assert sorted(os.listdir(tmp_path)) == ["d.tif"]
        with rasterio.open(tmp_path / "d.tif") as theirs:
            assert theirs.shape == (32, 32)


def test_a_file_that_comes_while_the_others_are_checked_is_not_replaced(tmp_path, monkeypatch):
    """The files there are checked before the first rename; one that comes then is
    checked as it is reached, and the renames done are undone."""
    out = tmp_path / "out"
    collection = m3rcr_xr.synthetic_collection(2, 16)
    m3rcr_xr.to_cog(collection.isel(patch=[0]), out, variable="cloudy")
    check = destinations.check_replaceable

    def user_writes_the_second(file, **kwargs):
        if Path(file).name == "synthetic_0_p_0.tif":
            _their_geotiff(out / "synthetic_1_p_0.tif")
        check(file, **kwargs)

    monkeypatch.setattr(destinations, "check_replaceable", user_writes_the_second)
    ours = (out / "synthetic_0_p_0.tif").read_bytes()
    with pytest.raises(m3rcr_xr.StoreError, match="synthetic_1_p_0.tif: was not written by"):
        m3rcr_xr.to_cog(collection, out, variable="cloudfree", overwrite=True)
    assert sorted(os.listdir(out)) == ["synthetic_0_p_0.tif", "synthetic_1_p_0.tif"]
    assert (out / "synthetic_0_p_0.tif").read_bytes() == ours
    with rasterio.open(out / "synthetic_1_p_0.tif") as theirs:
        assert theirs.shape == (32, 32)


def test_a_collection_folder_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "synthetic_0_p_0.tif").write_bytes(b"not ours")
    collection = m3rcr_xr.synthetic_collection(2, 16)
    before = snapshot(tmp_path)
    with pytest.raises(m3rcr_xr.StoreError, match="synthetic_0_p_0.tif: exists"):
        m3rcr_xr.to_cog(collection, out, variable="cloudy")
    with pytest.raises(m3rcr_xr.StoreError, match="synthetic_0_p_0.tif: was not written"):
        m3rcr_xr.to_cog(collection, out, variable="cloudy", overwrite=True)
    assert snapshot(tmp_path) == before
    (out / "synthetic_0_p_0.tif").unlink()
    m3rcr_xr.to_cog(collection, out, variable="cloudy")
    m3rcr_xr.to_cog(collection, out, variable="cloudy", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 3


@pytest.mark.parametrize(
    ("where", "match"),
    [
        ("missing/d.tif", "does not exist"),
        ("d.tif/", "is a folder"),
    ],
)
def test_unreachable_destinations_are_refused(tmp_path, where, match):
    if where.endswith("/"):
        (tmp_path / where).mkdir()
    target = where if "://" in where else tmp_path / where
    before = snapshot(tmp_path)
    with pytest.raises(m3rcr_xr.StoreError, match=match):
        m3rcr_xr.to_cog(_scene(64), target)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("folder", ["cogs/", "memory://bucket/cogs/"])
def test_a_scene_to_a_folder_path_is_refused(tmp_path, monkeypatch, folder):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(m3rcr_xr.StoreError, match="a scene is written to one GeoTIFF file"):
        m3rcr_xr.to_cog(_scene(64), folder)
    assert list(tmp_path.iterdir()) == []  # before: a file named "cogs"


def test_a_destination_inside_an_input_is_refused(tmp_path):
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 64)), tmp_path / "s.zarr")
    scene = m3rcr_xr.open_zarr(tmp_path / "s.zarr")
    with pytest.raises(m3rcr_xr.StoreError, match="lies inside the input"):
        m3rcr_xr.to_cog(scene, tmp_path / "s.zarr" / "d.tif", variable="cloudy")


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "new"
    with pytest.raises(m3rcr_xr.StoreError, match="No space left on device"):
        m3rcr_xr.to_cog(m3rcr_xr.synthetic_collection(2, 16), out, variable="cloudy")
    assert list(tmp_path.iterdir()) == []  # no partial file, no part folder, no folder


def test_a_failed_rename_puts_every_file_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    collection = m3rcr_xr.synthetic_collection(3, 16)
    m3rcr_xr.to_cog(collection.isel(patch=[0]), out, variable="cloudfree")  # replaced, put back
    before = snapshot(tmp_path)
    replace = os.replace

    def second_fails(src, dst):
        if str(src).endswith(".partial") and "synthetic_1_p_0" in str(dst):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(m3rcr_xr.StoreError, match="Disk quota exceeded"):
        m3rcr_xr.to_cog(collection, out, variable="cloudy", overwrite=True)
    assert snapshot(tmp_path) == before  # the first file is the user's again, no new one


def _pair(seed: int) -> xr.Dataset:
    """Two variables of a collection of two patches, as decloud and decloud_std."""
    return m3rcr_xr.synthetic_collection(2, 16, seed=seed)[["cloudy", "cloudfree"]]


def test_a_pair_failing_in_its_second_variable_replaces_neither(tmp_path, monkeypatch):
    """to_cog once a variable replaced the first before the second was written: a
    failure (Ctrl-C, a kill) in between left a pair of two writes. to_cogs renames
    both once both are written."""
    paths = {"cloudy": tmp_path / "a", "cloudfree": tmp_path / "b"}
    assert cog.to_cogs(_pair(1), paths) == {
        name: [path / "synthetic_1_p_0.tif", path / "synthetic_2_p_0.tif"]
        for name, path in paths.items()
    }
    before = snapshot(tmp_path)
    graph = cog.cog_graph

    def second_fails(array, dst, *args, **kwargs):
        if dst.parent == paths["cloudfree"]:
            raise KeyboardInterrupt
        return graph(array, dst, *args, **kwargs)

    monkeypatch.setattr(cog, "cog_graph", second_fails)
    with pytest.raises(KeyboardInterrupt):
        cog.to_cogs(_pair(1).map(lambda v: v // 2), paths, overwrite=True)
    assert snapshot(tmp_path) == before  # no partial left either


def test_a_pair_another_run_wrote_meanwhile_is_kept_whole(tmp_path, monkeypatch):
    """Two runs writing the same pair with overwrite=True: the second to end replaced
    the first's files one by one, and its renames could interleave with the first's,
    ending with one run's d.tif beside the other's d_std.tif. A file written while a
    run computed is refused now, the other run's pair kept whole."""
    paths = {"cloudy": tmp_path / "d.tif", "cloudfree": tmp_path / "d_std.tif"}
    scene = m3rcr_xr.synthetic_scene((32, 32))[["cloudy", "cloudfree"]]
    cog.to_cogs(scene, paths)
    compute = cog.compute_with_progress
    other = scene.map(lambda v: v // 2)

    def another_run_ends_first(*graphs, **kwargs):
        compute(*graphs, **kwargs)
        monkeypatch.setattr(cog, "compute_with_progress", compute)
        cog.to_cogs(other, paths, overwrite=True)

    monkeypatch.setattr(cog, "compute_with_progress", another_run_ends_first)
    with pytest.raises(m3rcr_xr.StoreError, match=r"d\.tif: written while this run computed"):
        cog.to_cogs(scene.map(lambda v: v * 2), paths, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["d.tif", "d_std.tif"]  # no partial left
    for name, path in paths.items():
        np.testing.assert_array_equal(rioxarray.open_rasterio(path).values, other[name].values)


def test_a_commit_while_another_run_renames_the_same_files_is_refused(tmp_path):
    """The renames hold the OS lock of the first file: another run's, at that moment,
    never interleave with them."""
    path = tmp_path / "d.tif"
    m3rcr_xr.to_cog(_scene(32), path)
    before = snapshot(tmp_path)
    with (
        locks.locked_file(path, "path", m3rcr_xr.StoreError),
        pytest.raises(m3rcr_xr.StoreError, match=r"another run is writing this file"),
    ):
        m3rcr_xr.to_cog(_scene(32) * 2, path, overwrite=True)
    assert snapshot(tmp_path) == before


KILLED_IN_THE_SECOND = """
import os, sys
from odc.geo.cog import _mpu_fs
from m3rcr_xr import cog, synthetic_collection

finalise = _mpu_fs.MPUFileSink.finalise

def killed_in_the_second(self, *args, **kwargs):  # as its first patch's parts are joined
    if self._dst.parent.name == "b":
        os._exit(9)
    return finalise(self, *args, **kwargs)

_mpu_fs.MPUFileSink.finalise = killed_in_the_second
pair = synthetic_collection(2, 16, seed=1)[["cloudy", "cloudfree"]].map(lambda v: v // 2)
cog.to_cogs(pair, {"cloudy": sys.argv[1], "cloudfree": sys.argv[2]}, overwrite=True)
"""


def test_a_pair_killed_in_its_second_variable_is_left_whole_and_the_rerun_cleans_up(
    tmp_path, fork_server
):
    """Killed as it joined the second variable's first file: the pair is the earlier
    write's, and the hidden files the kill left (the first variable's partial files,
    the second's parts) were there forever; the next write of those files removes them."""
    paths = {"cloudy": tmp_path / "a", "cloudfree": tmp_path / "b"}
    cog.to_cogs(_pair(1), paths)
    before = snapshot(tmp_path)
    args = (KILLED_IN_THE_SECOND, *map(str, paths.values()))
    process = fork_server.context.Process(
        target=run_script, args=args, kwargs={"stderr": tmp_path.parent / "err"}
    )
    process.start()
    process.join(60)
    assert process.exitcode == 9, (tmp_path.parent / "err").read_text()
    visible = {name: data for name, data in snapshot(tmp_path).items() if "/." not in name}
    assert visible == before
    left = {(path.parent.name, path.suffix) for path in tmp_path.glob("*/.*")}
    assert left == {("a", ".partial"), ("b", ".parts")}
    cog.to_cogs(_pair(1).map(lambda v: v // 2), paths, overwrite=True)
    assert list(tmp_path.glob("*/.*")) == []
    assert snapshot(tmp_path) != before


def test_what_a_killed_write_left_is_removed_by_the_next_write_of_the_file(tmp_path):
    """Its partial file, its parts, a copy of the file it was replacing: of a process
    of this machine gone (or named so by an earlier version, without the machine). A
    live process's (pid 1), another machine's and those of other files stay."""
    dead, here = killed_writer()["pid"], locks.machine_token()
    other = "0badc0de" if here != "0badc0de" else "0ddba11e"
    m3rcr_xr.to_cog(_scene(32), tmp_path / "d.tif")  # there: its copy aside is stale
    stale = [f".d.tif.{here}-{dead}.partial", f".d.tif.{here}-{dead}.previous"]
    stale += [f".d.tif.{dead}.partial"]  # an earlier version's
    kept = [f".d.tif.{here}-1.partial", f".e.tif.{here}-{dead}.partial"]
    kept += [f".e.tif.{here}-{dead}.previous", f".d.tif.{other}-{dead}.partial"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"left")
    for parts in [f"..d.tif.{here}-{dead}.partial.parts", f"..d.tif.{dead}.partial.parts"]:
        (tmp_path / parts).mkdir()
        (tmp_path / parts / "p0001.bin").write_bytes(b"left")
    kept.append(f"..d.tif.{other}-{dead}.partial.parts")
    (tmp_path / kept[-1]).mkdir()
    m3rcr_xr.to_cog(_scene(64), tmp_path / "d.tif", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "d.tif"])


def test_a_copy_a_killed_write_set_aside_stays_while_its_file_is_missing(tmp_path, caplog):
    """Killed between its two renames, a write left the file only as its copy aside."""
    previous = tmp_path / f".d.tif.{locks.machine_token()}-{killed_writer()['pid']}.previous"
    previous.write_bytes(b"the file as it was")
    with caplog.at_level(logging.WARNING, logger="m3rcr_xr.files"):
        m3rcr_xr.to_cog(_scene(32), tmp_path / "d.tif")
    assert previous.read_bytes() == b"the file as it was"
    assert f"{previous}: d.tif as it was before a write of it was cut off" in caplog.text


def test_an_upload_removes_the_folders_killed_uploads_left(tmp_path, monkeypatch):
    """A killed upload left its folder in TMPDIR (``.m3rcr-cog-*``), full-size GeoTIFFs,
    for good. The next upload removes those of this machine's processes gone; another
    machine's (a TMPDIR shared), a live process's and an earlier version's stay."""
    import tempfile

    dead, here = killed_writer()["pid"], locks.machine_token()
    other = "0badc0de" if here != "0badc0de" else "0ddba11e"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = [f".m3rcr-cog-{here}-{dead}-abc123"]
    kept = [f".m3rcr-cog-{other}-{dead}-abc123", f".m3rcr-cog-{here}-1-abc123"]
    kept += [".m3rcr-cog-abc123", "mine"]
    for name in stale + kept:
        (tmp_path / name / "0").mkdir(parents=True)
        (tmp_path / name / "0" / "d.tif").write_bytes(b"a GeoTIFF")
    (written,) = m3rcr_xr.to_cog(_scene(32), f"memory://m3rcr-uploads-{dead}/d.tif")
    assert written.endswith(f"m3rcr-uploads-{dead}/d.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_destinations_written_together_are_apart_and_on_one_file_system(tmp_path):
    pair = _pair(1)
    with pytest.raises(m3rcr_xr.StoreError, match="the destination is the GeoTIFF of another"):
        cog.to_cogs(pair, {"cloudy": tmp_path / "a", "cloudfree": tmp_path / "a"})
    with pytest.raises(m3rcr_xr.UsageError, match="all local, or all on one object store"):
        cog.to_cogs(pair, {"cloudy": tmp_path / "a", "cloudfree": "memory://m3rcr-pair/b"})
    with pytest.raises(m3rcr_xr.UsageError, match="variables of a Dataset, not a DataArray"):
        cog.to_cogs(pair["cloudy"], {"cloudy": tmp_path / "a"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(m3rcr_xr.StoreError, match="is not writable"):
        m3rcr_xr.to_cog(_scene(64), locked / "d.tif")


@pytest.mark.parametrize("blocksize", [0, 100, 16.0])
def test_bad_blocksizes_are_usage_errors(tmp_path, blocksize):
    with pytest.raises(m3rcr_xr.UsageError, match="blocksize"):
        m3rcr_xr.to_cog(_scene(64), tmp_path / "d.tif", blocksize=blocksize)


def _lazy_band(side: int) -> xr.DataArray:
    """A lazy one-band float64 scene (8 bytes a pixel: few pixels for many bytes)."""
    data = da.ones((1, side, side), chunks=(1, 1024, 1024), dtype="float64")  # np.ones writes
    coords = {"band": ["b"], "y": 5e6 - 3.0 * np.arange(side), "x": 4e5 + 3.0 * np.arange(side)}
    return xr.DataArray(data, dims=("band", "y", "x"), coords=coords).rio.write_crs(32632)


class _HeldTiles(Callback):
    """The most blocks of pixels and compressed tiles that dask held at once."""

    peak = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        self.peak = max(self.peak, sum(map(_tiles, state["cache"].values())))


def _tiles(value) -> int:
    """Blocks of pixels (arrays) and compressed tiles (bytes) in a task's result."""
    if isinstance(value, np.ndarray | bytes):
        return 1
    return sum(map(_tiles, value)) if isinstance(value, list | tuple) else 0


def _held_tiles(height: int, width: int, tmp_path: Path) -> int:
    data = da.random.default_rng(0).random((4, height, width), chunks=(4, 16, 16))
    coords = {
        "band": list("bgrn"),
        "y": 5e6 - 3.0 * np.arange(height),
        "x": 4e5 + 3.0 * np.arange(width),
    }
    scene = xr.DataArray(data, dims=("band", "y", "x"), coords=coords).rio.write_crs(32632)
    with _HeldTiles() as held, dask.config.set(scheduler="synchronous"):
        m3rcr_xr.to_cog(scene, tmp_path / f"{height}x{width}.tif", blocksize=16, progress=False)
    return held.peak


def test_the_tiles_held_do_not_grow_with_the_height(tmp_path):
    """While the overviews are built, blocks wait for the next row of blocks: a band
    as wide as the scene is held at each overview level, whatever its height
    (compressed tiles used to wait for the seed task of their part of the file, and
    piled up with the height too: 48 more blocks here)."""
    low, tall = _held_tiles(64, 64, tmp_path), _held_tiles(256, 64, tmp_path)
    extra_levels = 2  # 4 and 16 blocks high: 2 and 4 overview levels
    assert tall <= low + 2 * extra_levels, (low, tall)


@pytest.mark.slow
def test_a_workers_memory_does_not_grow_with_the_scene(tmp_path):
    """One worker writes a scene and one 4x as large (512 MiB): its peak grows by half
    the raw growth at most (it grows with the width: about two rows of blocks wait for
    the overviews, see the README's COG section; 52-130 MiB in ten runs, where holding
    the scene would take 384) and stays under the scene. Spilling, pause and termination
    are off, so that held blocks show in the peak, not on disk or as a hang; peaks are
    counted from the worker's own start (the libraries it loads, ~200 MiB, vary between
    machines)."""
    import dask
    from distributed import Client, LocalCluster

    unbounded = {
        f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause", "terminate")
    }
    peaks = []
    for side in (4096, 8192):  # a fresh worker process for each: its own peak
        with (
            dask.config.set(unbounded),
            LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            (start,) = client.run(_peak_rss).values()
            m3rcr_xr.to_cog(_lazy_band(side), tmp_path / f"{side}.tif", blocksize=1024)
            (peak,) = client.run(_peak_rss).values()
            peaks.append(peak - start)
    scene = _lazy_band(8192).nbytes
    assert peaks[1] < scene and peaks[1] - peaks[0] < 192 * 2**20, peaks
    with rasterio.open(tmp_path / "8192.tif") as f:
        assert f.shape == (8192, 8192) and f.overviews(1) == [2, 4, 8]


def _peak_rss() -> int:
    """This process's peak resident memory. ``VmHWM`` (Linux) starts afresh at ``exec``,
    where ``ru_maxrss`` keeps the parent's peak: a worker spawned by a big test process
    would report the test process's."""
    import resource

    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _objects(bucket: str) -> dict[str, bytes]:
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    return {key: fs.cat_file(key) for key in fs.find(bucket)}


def test_a_scene_is_uploaded_to_object_storage_as_a_valid_cog(bucket, tmp_path):
    url = f"s3://{bucket}/out/d.tif"
    assert m3rcr_xr.to_cog(_scene(64), url) == [url]
    (key,) = _objects(bucket)
    assert key == f"{bucket}/out/d.tif"
    with rasterio.open(f"/vsis3/{bucket}/out/d.tif") as f:
        assert np.isnan(f.nodata) and f.descriptions == ("blue", "green", "red", "nir")
    local = tmp_path / "d.tif"
    local.write_bytes(_objects(bucket)[key])
    assert cog_validate(str(local), strict=True)[0]


def test_an_existing_object_is_kept_without_overwrite(bucket, tmp_path):
    import s3fs

    s3fs.S3FileSystem().pipe_file(f"{bucket}/theirs.tif", b"not ours")
    with pytest.raises(m3rcr_xr.StoreError, match=f"s3://{bucket}/theirs.tif: exists; pass"):
        m3rcr_xr.to_cog(_scene(64), f"s3://{bucket}/theirs.tif")
    with pytest.raises(m3rcr_xr.StoreError, match=f"s3://{bucket}/theirs.tif: was not written"):
        m3rcr_xr.to_cog(_scene(64), f"s3://{bucket}/theirs.tif", overwrite=True)
    assert _objects(bucket) == {f"{bucket}/theirs.tif": b"not ours"}
    m3rcr_xr.to_cog(_scene(32), f"s3://{bucket}/mine.tif")
    m3rcr_xr.to_cog(_scene(64), f"s3://{bucket}/mine.tif", overwrite=True)
    objects = _objects(bucket)  # the copy of the one replaced, kept while uploading, is gone
    assert sorted(objects) == [f"{bucket}/mine.tif", f"{bucket}/theirs.tif"]
    local = tmp_path / "mine.tif"
    local.write_bytes(objects[f"{bucket}/mine.tif"])
    with rasterio.open(local) as cog:
        assert cog.shape == (64, 64)  # replaced


def test_a_gdal_sidecar_of_a_replaced_object_is_kept_and_warned_of(bucket, caplog):
    import s3fs

    url = f"s3://{bucket}/mine.tif"
    m3rcr_xr.to_cog(_scene(32), url)
    s3fs.S3FileSystem().pipe_file(f"{bucket}/mine.tif.aux.xml", b"<PAMDataset/>")
    with caplog.at_level(logging.WARNING, logger="m3rcr_xr.cog"):
        assert m3rcr_xr.to_cog(_scene(64), url, overwrite=True) == [url]
    assert _objects(bucket)[f"{bucket}/mine.tif.aux.xml"] == b"<PAMDataset/>"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"{url}.aux.xml: a GDAL sidecar of {url}, which was just")


def test_a_gdal_mask_beside_a_destination_object_is_refused(bucket):
    import s3fs

    m3rcr_xr.to_cog(_scene(32), f"s3://{bucket}/cogs/mine.tif")
    s3fs.S3FileSystem().pipe_file(f"{bucket}/cogs/mine.tif.msk", b"II*\x00")
    before = _objects(bucket)
    with pytest.raises(m3rcr_xr.StoreError, match=rf"s3://{bucket}/cogs/mine\.tif\.msk: GDAL's"):
        m3rcr_xr.to_cog(_scene(64), f"s3://{bucket}/cogs/mine.tif", overwrite=True)
    assert _objects(bucket) == before
    m3rcr_xr.to_cog(_scene(64), f"s3://{bucket}/cogs/other.tif")  # its own name: written


def test_a_pair_another_run_uploaded_meanwhile_is_kept_whole(bucket, monkeypatch):
    """As on a local disk (test_a_pair_another_run_wrote_meanwhile_is_kept_whole): the
    objects another run uploaded while this one computed are kept, this run's refused."""
    paths = {"cloudy": f"s3://{bucket}/d.tif", "cloudfree": f"s3://{bucket}/d_std.tif"}
    scene = m3rcr_xr.synthetic_scene((32, 32))[["cloudy", "cloudfree"]]
    cog.to_cogs(scene, paths)
    compute = cog.compute_with_progress

    def another_run_ends_first(*graphs, **kwargs):
        compute(*graphs, **kwargs)
        monkeypatch.setattr(cog, "compute_with_progress", compute)
        cog.to_cogs(scene.map(lambda v: v // 2), paths, overwrite=True)

    monkeypatch.setattr(cog, "compute_with_progress", another_run_ends_first)
    before = None

    def snapshot_after_the_other(*args, **kwargs):
        nonlocal before
        before = _objects(bucket)
        return check(*args, **kwargs)

    check = destinations.check_replaceable
    monkeypatch.setattr(cog.uploads, "check_replaceable", snapshot_after_the_other)
    with pytest.raises(m3rcr_xr.StoreError, match=r"d\.tif: written while this run computed"):
        cog.to_cogs(scene.map(lambda v: v * 2), paths, overwrite=True)
    assert before is not None and _objects(bucket) == before


def _upload_fails(monkeypatch, at: int) -> list[str]:
    """s3fs's upload number ``at`` fails, as a connection reset would; returns the
    objects whose upload was asked for."""
    import s3fs

    put_file = s3fs.S3FileSystem._put_file  # the sync put_file calls it
    calls: list[str] = []

    async def fails(self, lpath, rpath, **kwargs):
        calls.append(rpath)
        if len(calls) == at:
            raise OSError(errno.EIO, "connection reset")
        return await put_file(self, lpath, rpath, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", fails)
    s3fs.S3FileSystem.clear_instance_cache()  # instances bind their sync methods when made
    return calls


def test_a_failed_upload_leaves_no_object(bucket, monkeypatch):
    """The second patch's upload fails: the first, already uploaded, is removed."""
    calls = _upload_fails(monkeypatch, at=2)
    with pytest.raises(OSError, match="connection reset"):
        m3rcr_xr.to_cog(m3rcr_xr.synthetic_collection(2, 16), f"s3://{bucket}/c", variable="cloudy")
    assert len(calls) == 2 and _objects(bucket) == {}


def test_a_failed_overwrite_on_object_storage_puts_every_object_back(bucket, monkeypatch):
    """As locally, all or none: the third upload fails; the first object, which
    replaced one, is put back as it was; the second, new, is removed; no copy is left
    (nor after a write that succeeds: test_an_existing_object_is_kept_without_overwrite)."""
    import s3fs

    url = f"s3://{bucket}/c"
    collection = m3rcr_xr.synthetic_collection(3, 16, seed=1)
    m3rcr_xr.to_cog(collection, url, variable="cloudy")
    s3fs.S3FileSystem().rm_file(f"{bucket}/c/synthetic_2_p_0.tif")
    before = _objects(bucket)
    changed = collection.assign(cloudy=collection["cloudy"] // 2)
    with monkeypatch.context() as patch, pytest.raises(OSError, match="connection reset"):
        calls = _upload_fails(patch, at=3)
        m3rcr_xr.to_cog(changed, url, variable="cloudy", overwrite=True)
    assert len(calls) == 3 and _objects(bucket) == before


def test_a_missing_bucket_is_refused_before_any_work(bucket):
    with pytest.raises(m3rcr_xr.StoreError, match="bucket no-such-bucket does not exist"):
        m3rcr_xr.to_cog(_scene(64), "s3://no-such-bucket/d.tif")


def test_no_credentials_are_named_as_such_not_as_a_missing_bucket(bucket, monkeypatch):
    import s3fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # nothing leaves this machine
    s3fs.S3FileSystem.clear_instance_cache()
    url = f"s3://{bucket}/d.tif"
    message = rf"^{url}: cannot reach bucket {bucket} \(Unable to locate credentials\)$"
    with pytest.raises(m3rcr_xr.StoreError, match=message):
        m3rcr_xr.to_cog(_scene(64), url)


def test_a_principal_that_may_not_query_the_bucket_uploads_under_its_prefix(bucket, monkeypatch):
    forbid_head_bucket(monkeypatch)
    url = f"s3://{bucket}/team-a/d.tif"
    assert m3rcr_xr.to_cog(_scene(64), url) == [url]
    assert list(_objects(bucket)) == [f"{bucket}/team-a/d.tif"]


def test_a_failed_put_back_does_not_stop_the_rollback_nor_hide_the_error(bucket, monkeypatch):
    """The third upload fails, then putting back the second object's copy fails (the
    rollback goes from the last): the first is put back all the same, the upload's
    error is the one raised, and it names the object not put back and where its copy
    is."""
    import s3fs

    url = f"s3://{bucket}/c"
    collection = m3rcr_xr.synthetic_collection(3, 16, seed=1)
    m3rcr_xr.to_cog(collection, url, variable="cloudy")
    before = _objects(bucket)
    changed = collection.assign(cloudy=collection["cloudy"] // 2)
    cp_file = s3fs.S3FileSystem._cp_file
    put_back: list[str] = []

    async def fails_once(self, path1, path2, **kwargs):
        if path1.endswith(".previous"):
            put_back.append(path1)
            if len(put_back) == 2:
                raise OSError(errno.EHOSTUNREACH, "network is unreachable")
        return await cp_file(self, path1, path2, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(OSError, match="connection reset") as err:
        _upload_fails(patch, at=3)
        patch.setattr(s3fs.S3FileSystem, "_cp_file", fails_once)
        m3rcr_xr.to_cog(changed, url, variable="cloudy", overwrite=True)
    assert len(put_back) == 3
    copy = put_back[1]
    name = copy.split("/")[-1].split(".")[1]  # .NAME.tif.MACHINE-PID.previous
    assert copy == f"s3://{bucket}/c/.{name}.tif.{locks.machine_token()}-{os.getpid()}.previous"
    (note,) = err.value.__notes__
    assert note == (
        f"not rolled back: s3://{bucket}/c/{name}.tif: not put back from {copy} "
        "(network is unreachable)"
    )
    after = _objects(bucket)
    key, kept = f"{bucket}/c/{name}.tif", copy.removeprefix("s3://")
    assert after[kept] == before[key] != after[key]  # uploaded; the earlier one is aside
    assert {k: v for k, v in after.items() if k not in (key, kept)} == {
        k: v for k, v in before.items() if k != key
    }


def test_a_file_url_is_a_local_path(tmp_path):
    """As to_zarr takes it: file:///... names the local file."""
    url = (tmp_path / "d.tif").as_uri()
    assert m3rcr_xr.to_cog(_scene(64), url) == [tmp_path / "d.tif"]
    assert cog_validate(str(tmp_path / "d.tif"), strict=True)[0]
    with pytest.raises(m3rcr_xr.StoreError, match="d.tif: exists; pass overwrite=True"):
        m3rcr_xr.to_cog(_scene(64), url)


def test_a_pair_of_collections_is_uploaded_together(bucket, monkeypatch):
    """Their files have the same names (cogs/, cogs_std/): each is staged in a folder of
    its own. The last upload fails: none of the pair is left."""
    urls = {"cloudy": f"s3://{bucket}/cogs", "cloudfree": f"s3://{bucket}/cogs_std"}
    written = cog.to_cogs(_pair(1), urls)
    assert written["cloudfree"] == [
        f"{urls['cloudfree']}/synthetic_1_p_0.tif",
        f"{urls['cloudfree']}/synthetic_2_p_0.tif",
    ]
    objects = _objects(bucket)
    assert len(objects) == 4
    key = f"{bucket}/cogs_std/synthetic_2_p_0.tif"
    with rasterio.MemoryFile(objects[key]) as memory, memory.open() as f:
        np.testing.assert_array_equal(f.read(), _pair(1)["cloudfree"].isel(patch=1).values)
    with monkeypatch.context() as patch, pytest.raises(OSError, match="connection reset"):
        calls = _upload_fails(patch, at=4)
        cog.to_cogs(_pair(1).map(lambda v: v // 2), urls, overwrite=True)
    assert len(calls) == 4 and _objects(bucket) == objects


def test_a_collection_to_an_object_store_is_checked_by_listings_not_per_object(bucket, monkeypatch):
    """Asking for each object (a HEAD, and a LIST after it where there is none) cost 6
    requests a patch before a fresh upload (385 for 64 patches): one listing of the
    folder tells what is there, its versions and its sidecars."""
    import s3fs

    asked: list[str] = []
    info = s3fs.S3FileSystem._info

    async def counted(self, path, *args, **kwargs):
        asked.append(path)
        return await info(self, path, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_info", counted)
    collection = m3rcr_xr.synthetic_collection(8, 16)
    m3rcr_xr.to_cog(collection, f"s3://{bucket}/cogs", variable="cloudy")
    assert len(asked) <= 2, asked  # the bucket's; none an object
    assert len(_objects(bucket)) == 8
