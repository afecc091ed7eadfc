"""Scenes from STAC (m3rcr_xr.stac): the same scene as open_quartet on the same files,
by path, over HTTP (a range-serving server on loopback) and on S3 (moto)."""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import s3fs
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio import open as rasterio_open

import m3rcr_xr
from m3rcr_xr import stac
from m3rcr_xr.cli import main
from m3rcr_xr.exceptions import AlignmentError, InputFileError, UsageError
from m3rcr_xr.store import layout, writing
from m3rcr_xr.testing import raise_if_dask_computes, serve_directory, stac_item
from tests.conftest import EXPIRED, PRESIGNED, assert_no_credential, snapshot
from tests.rasters import write_raster

#: 96 x 96 px at 3 m and 30 x 30 px at 10 m over the same corner, UTM 32N near 12 E
ZONE32 = "EPSG:32632"
OPTICAL = Affine(3, 0, 735_000, 0, -3, 4_985_010)
COARSE = Affine(10, 0, 735_000, 0, -10, 4_985_010)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return scene_files(tmp_path_factory.mktemp("stac-files"))


def scene_files(root: Path) -> dict[str, Path]:
    """The GeoTIFFs of one scene: as a quartet (SAR in dB) and as STAC assets (vv, vh
    in linear power, with a hole and a zero), plus a UDM2."""
    rng = np.random.default_rng(0)
    cloudy = rng.integers(1, 10_000, (4, 96, 96), dtype=np.uint16)
    db = rng.uniform(-30, 0, (2, 30, 30)).astype(np.float32)
    db[0, 3, 4] = np.nan  # a hole: filled with the band mean
    db[1, 7, 8] = -50.0  # zero power: the -50 dB floor
    power = np.where(np.isnan(db), np.nan, 10 ** (db.astype(np.float64) / 10)).astype(np.float32)
    power[1, 7, 8] = 0.0
    codes = rng.choice(np.array([10, 20, 30, 40, 50, 80], dtype=np.uint8), (1, 30, 30))
    udm2 = rng.integers(0, 2, (8, 96, 96), dtype=np.uint8)
    return {
        "cloudy": write_raster(root / "cloudy.tif", cloudy, OPTICAL, ZONE32, nodata=0),
        "udm2": write_raster(root / "udm2.tif", udm2, OPTICAL, ZONE32),
        "sar": write_raster(root / "s1_db.tif", db, COARSE, ZONE32),
        "vv": write_raster(root / "vv.tif", power[:1], COARSE, ZONE32),
        "vh": write_raster(root / "vh.tif", power[1:], COARSE, ZONE32),
        "landcover": write_raster(root / "map.tif", codes, COARSE, ZONE32),
    }


def write_catalog(root: Path, files: dict[str, Path]) -> Path:
    """A static catalog with sub-catalogs planet/, s1/, worldcover/, one item each,
    asset hrefs relative (so that it serves as well over HTTP as from disk)."""
    catalog = pystac.Catalog("m3rcr", "test scene")
    layouts = {
        "planet": {"ortho_analytic_4b_sr": files["cloudy"], "ortho_udm2": files["udm2"]},
        "s1": {"vv": files["vv"], "vh": files["vh"]},
        "worldcover": {"map": files["landcover"]},
    }
    for name, assets in layouts.items():
        child = pystac.Catalog(name, name)
        copied = {}
        for asset, path in assets.items():
            target = root / name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            copied[asset] = target
        child.add_item(stac_item(f"{name}-1", copied))
        catalog.add_child(child)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


@pytest.fixture(scope="module")
def catalog(files, tmp_path_factory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("catalog"), files)


@pytest.fixture(scope="module")
def quartet(files) -> xr.Dataset:
    """The same files through open_quartet, the UDM2 as its cloud mask."""
    return m3rcr_xr.open_quartet(
        files["cloudy"], sar=files["sar"], landcover=files["landcover"], cloudmask=files["udm2"]
    ).compute()


def open_catalog(base: str | Path, **kwargs) -> xr.Dataset:
    return m3rcr_xr.open_stac(
        f"{base}/planet/catalog.json",
        sar_items=f"{base}/s1/catalog.json",
        landcover_items=f"{base}/worldcover/catalog.json",
        **kwargs,
    )


def assert_same_scene(scene: xr.Dataset, quartet: xr.Dataset) -> None:
    """Bit-equal optical and land cover, SAR within 1e-5 dB, one grid and CRS."""
    scene = scene.compute()
    assert scene.rio.crs == quartet.rio.crs
    assert scene.rio.transform() == quartet.rio.transform()
    np.testing.assert_array_equal(scene["cloudy"].values, quartet["cloudy"].values)
    np.testing.assert_array_equal(scene["landcover"].values, quartet["landcover"].values)
    np.testing.assert_array_equal(scene["cloudmask"].values, quartet["cloudmask"].values)
    np.testing.assert_allclose(scene["sar"].values, quartet["sar"].values, rtol=0, atol=1e-5)
    for name in ("cloudy", "sar", "landcover"):
        assert scene[name].dtype == quartet[name].dtype
        assert scene[name].attrs == quartet[name].attrs


def test_a_scene_from_a_stac_catalog_is_the_quartet(catalog, quartet, files):
    with raise_if_dask_computes():
        scene = open_catalog(catalog.parent, chunks=32)
    assert scene["cloudy"].chunks[1] == (32, 32, 32)
    assert_same_scene(scene, quartet)
    udm2 = _read(files["udm2"])  # cloud (6), heavy haze (5), shadow (3); blackfill: bit 0 of 8
    np.testing.assert_array_equal(scene["cloudmask"].values, udm2[[2, 4, 5]].any(axis=0))
    np.testing.assert_array_equal(scene["cloudy"].values[:, udm2[7] & 1 == 1], 0)
    assert "udm2" not in scene
    assert {Path(s).name for s in scene.encoding["source"]} == {
        "cloudy.tif",
        "udm2.tif",
        "vv.tif",
        "vh.tif",
        "map.tif",
    }
    assert float(scene["sar"].sel(polarization="VH")[24, 27]) == pytest.approx(-50.0)


def _read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def test_a_scene_whose_asset_changed_since_it_was_opened_is_refused(files, tmp_path):
    """Each asset's file is identified as its header is read, as open_quartet's files
    are: one replaced since (the same pixels, another file) is refused before any write."""
    scene = open_catalog(write_catalog(tmp_path / "catalog", files).parent, chunks=32)
    vv = tmp_path / "catalog" / "s1" / "vv.tif"
    vv.rename(tmp_path / "old.tif")
    vv.write_bytes((tmp_path / "old.tif").read_bytes())
    with pytest.raises(InputFileError, match=r"s1/vv\.tif: changed since it was opened"):
        m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_the_same_catalog_over_http(catalog, quartet, monkeypatch):
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")  # no folder listings
    with serve_directory(catalog.parent) as url:
        scene = open_catalog(url)
        assert all(s.startswith(url) for s in scene.encoding["source"])
        assert_same_scene(scene, quartet)


def test_the_same_catalog_on_s3(catalog, quartet, bucket):
    s3fs.S3FileSystem().put(str(catalog.parent), f"{bucket}/stac", recursive=True)
    assert_same_scene(open_catalog(f"s3://{bucket}/stac"), quartet)


def test_presigned_items_and_assets_over_http(files, quartet, tmp_path, monkeypatch):
    """Item JSON and GeoTIFFs behind presigned URLs (the query string required as
    issued); an expired one: test_a_refused_item_or_asset_is_access_denied."""
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    layers = {
        "planet": {"ortho_analytic_4b_sr": "cloudy", "ortho_udm2": "udm2"},
        "s1": {"vv": "vv", "vh": "vh"},
        "worldcover": {"map": "landcover"},
    }
    for path in files.values():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    with serve_directory(tmp_path, query=PRESIGNED) as url:
        for layer, assets in layers.items():
            item = stac_item(layer, {asset: files[name] for asset, name in assets.items()})
            for asset in item.assets.values():
                asset.href = f"{url}/{Path(asset.href).name}?{PRESIGNED}"
            (tmp_path / f"{layer}.json").write_text(json.dumps(item.to_dict()))
        scene = m3rcr_xr.open_stac(
            f"{url}/planet.json?{PRESIGNED}",
            sar_items=f"{url}/s1.json?{PRESIGNED}",
            landcover_items=f"{url}/worldcover.json?{PRESIGNED}",
        )
        assert_same_scene(scene, quartet)


@pytest.mark.parametrize(("status", "phrase"), [(403, "Forbidden"), (401, "Unauthorized")])
def test_a_refused_item_or_asset_is_access_denied(files, tmp_path, monkeypatch, status, phrase):
    """An expired presigned URL (S3's 403) or one without credentials (401), of the item
    JSON or of an asset: access refused, naming it without its credentials."""
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    # a name of each case's own: GDAL caches a URL's answer, and the port may be reused
    name = f"cloudy-{status}.tif"
    (tmp_path / name).write_bytes(files["cloudy"].read_bytes())
    item = stac_item("expired", {"ortho_analytic_4b_sr": files["cloudy"]})
    (tmp_path / "planet.json").write_text(json.dumps(item.to_dict()))
    refused = f"cannot be read: access refused \\(HTTP {status} {phrase}\\); the URL is presigned"
    with serve_directory(tmp_path, query=PRESIGNED, refuse=status) as url:
        item.assets["ortho_analytic_4b_sr"].href = f"{url}/{name}?{EXPIRED}"
        for expired, what in [
            (f"{url}/planet.json?{EXPIRED}", "STAC JSON"),
            ([item], "STAC item 'expired' asset 'ortho_analytic_4b_sr'"),
        ]:
            with pytest.raises(m3rcr_xr.AccessDeniedError, match=f"{what} {refused}") as err:
                m3rcr_xr.open_stac(expired)
            assert_no_credential(err.value)


def test_items_in_memory_and_an_item_collection(catalog, quartet, tmp_path):
    sar = stac.read_items(catalog.parent / "s1" / "catalog.json")
    collection = pystac.ItemCollection(sar)
    collection.save_object(dest_href=str(tmp_path / "s1.json"))
    scene = m3rcr_xr.open_stac(
        pystac.Catalog.from_file(str(catalog.parent / "planet" / "catalog.json")),
        sar_items=str(tmp_path / "s1.json"),
    )
    np.testing.assert_allclose(scene["sar"].values, quartet["sar"].values, atol=1e-5)


def test_asset_names_can_be_overridden(files):
    item = stac_item("p", {"analytic_sr": files["cloudy"]})
    scene = m3rcr_xr.open_stac([item], assets={"optical": "analytic_sr"})
    np.testing.assert_array_equal(scene["cloudy"].values, _read(files["cloudy"]))
    assert "cloudmask" not in scene  # no UDM2 asset
    with pytest.raises(InputFileError, match="STAC item 'p': no asset 'ortho_udm2'"):
        m3rcr_xr.open_stac([item], assets={"optical": "analytic_sr", "udm2": "ortho_udm2"})
    with pytest.raises(UsageError, match="unknown layer 'clouds'"):
        m3rcr_xr.open_stac([item], assets={"clouds": "x"})


def test_items_in_two_utm_zones_make_one_mosaic(tmp_path, files):
    """A second item in zone 33 east of the first: one scene in the first's CRS, the
    first item's pixels where it has data, the second's beyond."""
    from odc.geo.geobox import GeoBox

    west = _read(files["cloudy"])
    west[:, :, -10:] = 0  # nodata: the mosaic takes the next item's pixels there
    write_raster(tmp_path / "west.tif", west, OPTICAL, ZONE32, nodata=0)
    first = GeoBox((96, 96), OPTICAL, ZONE32)
    east_box = GeoBox.from_bbox(
        first.extent.to_crs("EPSG:32633").boundingbox, "EPSG:32633", resolution=3
    )
    shifted = east_box.translate_pix(60, 0)  # ~180 m east of the first's left edge
    east = np.full((4, *shifted.shape), 777, np.uint16)
    write_raster(tmp_path / "east.tif", east, shifted.transform, "EPSG:32633", nodata=0)
    items = [
        stac_item("west", {"ortho_analytic_4b_sr": tmp_path / "west.tif"}),
        stac_item("east", {"ortho_analytic_4b_sr": tmp_path / "east.tif"}),
    ]
    scene = m3rcr_xr.open_stac(items).compute()
    assert scene.rio.crs == ZONE32
    assert scene.sizes["x"] > 96 + 40
    col, row = (~scene.rio.transform()) * (OPTICAL.c, OPTICAL.f)  # the first's corner
    assert (col, row) == (int(col), int(row))  # on the first item's pixel grid
    cloudy = scene["cloudy"].values[:, int(row) :, int(col) :]
    np.testing.assert_array_equal(cloudy[:, :96, :86], west[:, :, :86])
    assert (cloudy[:, 30:70, 88:96] == 777).all()  # the first's nodata, from "east"
    assert (cloudy[:, 30:70, 100:140] == 777).all()
    in_33 = m3rcr_xr.open_stac(items, crs="EPSG:32633")
    assert in_33.rio.crs == "EPSG:32633"


@pytest.mark.parametrize("zone", [ZONE32, "EPSG:32633"])
def test_sar_is_nan_beyond_its_items_in_any_crs(tmp_path, files, zone):
    """SAR items covering the scene's western half: NaN beyond them, as open_quartet
    leaves it, whether they are loaded on their own grid (the scene's CRS) or onto the
    scene's (another CRS: the band mean filled all there before)."""
    from odc.geo.geobox import GeoBox

    half = GeoBox((30, 15), COARSE, ZONE32)
    if zone != ZONE32:
        half = GeoBox.from_bbox(half.extent.to_crs(zone).boundingbox, zone, resolution=10)
    power = np.full((1, *half.shape), 0.01, np.float32)  # -20 dB
    sar = {name: tmp_path / f"{name}.tif" for name in ("vv", "vh")}
    for path in sar.values():
        write_raster(path, power, half.transform, zone)
    optical = [stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})]
    with raise_if_dask_computes():
        scene = m3rcr_xr.open_stac(optical, sar_items=[stac_item("s", sar)])
    values = scene["sar"].values
    # the items end 150 m (50 px) east of the scene's west edge; in zone 33 their grid is
    # turned by the zones' convergence, and its bounding box reaches some pixels further
    assert np.isnan(values[:, :, 60:]).all()
    np.testing.assert_array_equal(values[:, :, :45], -20.0)


def test_an_item_without_the_asset_or_a_crs_is_refused(files):
    item = stac_item("no-proj", {"ortho_analytic_4b_sr": files["cloudy"]})
    for key in ("proj:code", "proj:epsg"):
        item.properties.pop(key, None)
    with pytest.raises(InputFileError, match="STAC item 'no-proj'.*no CRS"):
        m3rcr_xr.open_stac([item])
    sar = stac_item("s1", {"vv": files["vv"]})
    optical = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"]})
    with pytest.raises(InputFileError, match="STAC item 's1': no asset 'vh'"):
        m3rcr_xr.open_stac([optical], sar_items=[sar])


def test_items_that_do_not_overlap_are_refused(files, tmp_path):
    far = Affine(10, 0, 200_000, 0, -10, 4_985_010)
    write_raster(tmp_path / "vv.tif", _read(files["vv"]), far, ZONE32)
    write_raster(tmp_path / "vh.tif", _read(files["vh"]), far, ZONE32)
    sar = stac_item("far-s1", {"vv": tmp_path / "vv.tif", "vh": tmp_path / "vh.tif"})
    optical = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"]})
    with pytest.raises(
        AlignmentError, match="sar STAC item 'far-s1': none overlaps the scene's extent"
    ):
        m3rcr_xr.open_stac([optical], sar_items=[sar])
    with pytest.raises(
        AlignmentError,
        match=r"bbox=\(0.0, 0.0, 0.1, 0.1\): does not overlap the optical items \(their "
        r"extent in degrees, west, south, east, north: 11.98046, 44.97694, 11.98424, 44.97963\)",
    ):
        m3rcr_xr.open_stac([optical], bbox=(0.0, 0.0, 0.1, 0.1))


def far_items(tmp_path: Path, files: dict[str, Path]) -> dict[str, pystac.Item]:
    """Items of each layer 65 km east of the scene's files: optical without a UDM2."""
    far, coarse = Affine(3, 0, 800_000, 0, -3, 4_985_010), Affine(10, 0, 800_000, 0, -10, 4_985_010)
    paths = {"far.tif": ("cloudy", far), "far-vv.tif": ("vv", coarse)}
    paths |= {"far-vh.tif": ("vh", coarse), "far-map.tif": ("landcover", coarse)}
    for name, (layer, transform) in paths.items():
        nodata = 0 if layer == "cloudy" else None
        write_raster(tmp_path / name, _read(files[layer]), transform, ZONE32, nodata=nodata)
    return {
        "optical": stac_item("far", {"ortho_analytic_4b_sr": tmp_path / "far.tif"}),
        "sar": stac_item("far-s1", {"vv": tmp_path / "far-vv.tif", "vh": tmp_path / "far-vh.tif"}),
        "landcover": stac_item("far-wc", {"map": tmp_path / "far-map.tif"}),
    }


def test_items_outside_a_bbox_are_left_out(files, tmp_path, caplog):
    """The items of a search over a larger area than ``bbox``: those outside it give no
    pixel and are left out, logged (before: "STAC item 'far': does not overlap bbox=..."
    for the optical ones, "does not overlap the scene's extent" for SAR and land cover).
    A far optical item without a UDM2 does not take the cloud mask from the scene, and
    its files are no source of it (the store's fingerprint)."""
    near = {
        "optical": stac_item(
            "near", {"ortho_analytic_4b_sr": files["cloudy"], "ortho_udm2": files["udm2"]}
        ),
        "sar": stac_item("s1", {"vv": files["vv"], "vh": files["vh"]}),
        "landcover": stac_item("wc", {"map": files["landcover"]}),
    }
    far = far_items(tmp_path, files)
    bbox = list(near["optical"].bbox)

    def scene(layers: dict[str, list[pystac.Item]]) -> xr.Dataset:
        return m3rcr_xr.open_stac(
            layers["optical"],
            sar_items=layers["sar"],
            landcover_items=layers["landcover"],
            bbox=bbox,
            assets={"udm2": "ortho_udm2"},  # asked for by name: a far item lacks it
            chunks=None,
        )

    with caplog.at_level("INFO", logger="m3rcr_xr.stac"):
        mixed = scene({name: [item, far[name]] for name, item in near.items()})
    alone = scene({name: [item] for name, item in near.items()})
    xr.testing.assert_identical(mixed, alone)
    assert "cloudmask" in mixed
    assert mixed.encoding["source"] == alone.encoding["source"]
    logged = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert logged == [
        f"1 {name} STAC item(s) left out, outside the scene's extent: '{far[name].id}'"
        for name in ("optical", "sar", "landcover")
    ]


@pytest.mark.parametrize(
    ("bbox", "match"),
    [
        ((735_000, 4_984_700, 735_288, 4_985_010), "out of range: a bbox is in degrees"),
        ((-181, 44, 12, 45), "out of range: a bbox is in degrees"),
        ((12, 44, 11, 45), "west 12 > east 11 is a box across the antimeridian"),
        ((11, 45, 12, 44), "south 45 must be less than north 44"),
        ((11, 44, 11, 45), "west 11 must be less than east 11"),
        ((11, 44, 12), "must be four finite numbers"),
        ((11, 44, float("nan"), 45), "must be four finite numbers"),
        ((True, 44, 12, 45), "must be four finite numbers"),
        ("11 44 12 45", "must be four finite numbers"),
    ],
    ids=[
        "metres",
        "longitude",
        "antimeridian",
        "south-north",
        "empty",
        "three",
        "nan",
        "bool",
        "str",
    ],
)
def test_a_bbox_not_in_degrees_nor_west_to_east_is_refused_before_any_item_is_read(
    files, bbox, match
):
    """West > east was swapped silently: (12, 45, 11, 44), STAC's box across the
    antimeridian, opened another region (the 11-12 E box, 37839 x 27633 pixels); a bbox in
    metres was "STAC item ...: does not overlap the scene's extent"."""
    with pytest.raises(UsageError, match=f"^bbox={re.escape(repr(bbox))}: {match}"):
        m3rcr_xr.open_stac("/nonexistent/items.json", bbox=bbox)
    item = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"]})
    with pytest.raises(UsageError, match=match):
        stac.optical_geobox([item], "ortho_analytic_4b_sr", bbox=bbox)


def test_an_unreachable_url_is_named_and_nothing_is_written(
    catalog, files, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    with serve_directory(catalog.parent) as url:
        missing = f"{url}/planet/nothing.json"
        with pytest.raises(InputFileError, match=f"{missing}: STAC JSON cannot be read"):
            m3rcr_xr.open_stac(missing)
        item = stac_item("gone", {"ortho_analytic_4b_sr": files["cloudy"]})
        item.assets["ortho_analytic_4b_sr"].href = f"{url}/planet/gone.tif"
        with pytest.raises(InputFileError, match=f"{url}/planet/gone.tif: .*'gone'.*cannot be"):
            m3rcr_xr.open_stac([item])
        dest = tmp_path / "out.zarr"
        assert main(["ingest", missing, str(dest)]) == 2
    assert f"m3rcr ingest: error: {missing}" in capsys.readouterr().err
    assert not dest.exists()


def test_the_command_line_ingests_a_stac_catalog(catalog, quartet, tmp_path):
    before = snapshot(catalog.parent)
    dest = tmp_path / "scene.zarr"
    base = catalog.parent
    code = main(
        [
            "ingest",
            str(base / "planet" / "catalog.json"),
            str(dest),
            "--sar",
            str(base / "s1" / "catalog.json"),
            "--landcover",
            str(base / "worldcover" / "catalog.json"),
        ]
    )
    assert code == 0
    assert_same_scene(m3rcr_xr.open_zarr(dest), quartet)
    assert snapshot(catalog.parent) == before


def test_quartet_options_with_stac_items_are_a_usage_error(catalog, tmp_path, capsys):
    items = str(catalog.parent / "planet" / "catalog.json")
    assert main(["ingest", items, str(tmp_path / "x.zarr"), "--cloudfree", "cf.tif"]) == 2
    assert "--cloudfree cf.tif: not with STAC items" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize(
    "doc",
    [
        '{"type": "Feature", "geometry": null, "properties": {}}',
        "{}",
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}}]}',
    ],
)
def test_json_that_is_not_stac_is_named(tmp_path, capsys, doc):
    path = tmp_path / "aoi.geojson"
    path.write_text(doc)
    with pytest.raises(InputFileError, match="aoi.geojson: not a STAC item, item collection"):
        m3rcr_xr.open_stac(path)
    dest = tmp_path / "never.zarr"
    assert main(["ingest", str(path), str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"m3rcr ingest: error: {path}: not a STAC") and err.count("\n") == 1
    assert not dest.exists()


def _planet_item(root: Path, name: str, optical, udm2, transform, crs=ZONE32):
    """A PlanetScope item: 4-band optical (nodata 0) and, unless None, an 8-band UDM2."""
    assets = {
        "ortho_analytic_4b_sr": write_raster(root / f"{name}.tif", optical, transform, crs, 0)
    }
    if udm2 is not None:
        assets["ortho_udm2"] = write_raster(root / f"{name}_udm2.tif", udm2, transform, crs)
    return stac_item(name, assets)


def _mosaic_dependencies(array: xr.DataArray) -> dict[tuple, set[int]]:
    """For each tile of a mosaic, the items (odc-stac's layer index) its choice reads."""
    from dask.core import get_dependencies

    graph = dict(array.data.__dask_graph__())
    tiles = {}
    for key in graph:
        if isinstance(key, tuple) and str(key[0]).startswith("stac-mosaic-index-"):
            tiles[key[1:]] = {dep[1] for dep in get_dependencies(graph, key)}
    return tiles


@pytest.mark.parametrize("chunks", [None, 7])
def test_a_mosaic_takes_each_pixel_whole_from_the_first_valid_item(tmp_path, chunks):
    """A's blackfill (UDM2 band 8, bit 0; optical 0) over B's data: B's pixels there,
    optical and UDM2 alike; where A is valid and clear, A's pixels and A's clear mask,
    though B is cloudy there (odc-stac fused each band on its own: A's blackfill won,
    and B's cloud flag landed on A's pixels)."""
    height = 6
    a = np.full((4, height, 20), 1000, np.uint16)
    a[:, :, 15:] = 0  # blackfill: not imaged
    a_udm2 = np.zeros((8, height, 20), np.uint8)
    a_udm2[0, :, :15] = 1  # clear
    a_udm2[7, :, 15:] = 1  # blackfill
    b = np.full((4, height, 20), 2000, np.uint16)
    b_udm2 = np.zeros((8, height, 20), np.uint8)
    b_udm2[5] = 1  # cloud: all of B (columns 10..29 of the scene)
    items = [
        _planet_item(tmp_path, "a", a, a_udm2, OPTICAL),
        _planet_item(tmp_path, "b", b, b_udm2, OPTICAL * Affine.translation(10, 0)),
    ]
    with raise_if_dask_computes():
        scene = m3rcr_xr.open_stac(items, chunks=chunks)
    if chunks is not None:  # a tile reads only the items that reach it
        tiles = _mosaic_dependencies(scene["cloudy"])  # 5 columns of tiles, 7 px wide
        assert (tiles[0, 0], tiles[0, 2], tiles[0, 4]) == ({0}, {0, 1}, {1})
    row = scene["cloudy"].sel(band="blue").values[0]
    np.testing.assert_array_equal(row, [1000] * 15 + [2000] * 15)
    np.testing.assert_array_equal(scene["cloudmask"].values[0], [False] * 15 + [True] * 15)


@pytest.mark.parametrize("chunks", [None, 4])
def test_a_dark_pixel_is_kept_whole_not_patched_from_the_next_item(tmp_path, chunks):
    """README, Nodata: a real dark pixel may read 0 in one band; only all bands 0 is
    missing. The first item's pixel stays whole, the next item fills its missing one."""
    a = np.full((4, 8, 8), 300, np.uint16)
    a[0, 5, 5] = 0  # water: blue 0, a valid pixel
    a[:, 2, 3] = 0  # missing
    b = np.full((4, 8, 8), 5000, np.uint16)
    items = [
        _planet_item(tmp_path, "a", a, None, OPTICAL),
        _planet_item(tmp_path, "b", b, None, OPTICAL),
    ]
    cloudy = m3rcr_xr.open_stac(items, chunks=chunks)["cloudy"].values
    np.testing.assert_array_equal(cloudy[:, 5, 5], [0, 300, 300, 300])
    np.testing.assert_array_equal(cloudy[:, 2, 3], [5000] * 4)
    assert (cloudy[:, :2] == 300).all()


def _south_up(path: Path, north_up: Path, out: Path) -> Path:
    """``north_up`` stored south-up (rows reversed, positive y step) at ``out``."""
    import rasterio

    with rasterio.open(north_up) as src:
        transform = src.transform * Affine.translation(0, src.height) * Affine.scale(1, -1)
        return write_raster(out, src.read()[:, ::-1], transform, src.crs, src.nodata)


def test_south_up_items_are_read_onto_the_north_up_grid(files, tmp_path):
    """Items stored south-up (proj:transform with e > 0): the scene is the north-up one
    of the same pixels (before: an empty one-row scene, and a false "does not overlap"
    for the land cover)."""
    optical = _south_up(tmp_path, files["cloudy"], tmp_path / "cloudy_s.tif")
    codes = _south_up(tmp_path, files["landcover"], tmp_path / "map_s.tif")
    items = [stac_item("south", {"ortho_analytic_4b_sr": optical})]
    assert items[0].properties["proj:transform"][4] == 3  # south-up
    with raise_if_dask_computes():
        scene = m3rcr_xr.open_stac(items, landcover_items=[stac_item("wc", {"map": codes})])
    north = m3rcr_xr.open_quartet(files["cloudy"], landcover=files["landcover"])
    assert scene.rio.transform() == OPTICAL
    np.testing.assert_array_equal(scene["cloudy"].values, north["cloudy"].values)
    np.testing.assert_array_equal(scene["landcover"].values, north["landcover"].values)


def test_a_rotated_item_is_refused_naming_it(files):
    item = stac_item("turned", {"ortho_analytic_4b_sr": files["cloudy"]})
    item.properties["proj:transform"] = [3, 0.5, 735_000, 0.5, -3, 4_985_010]
    with pytest.raises(AlignmentError, match="STAC item 'turned'.*rotated"):
        m3rcr_xr.open_stac([item])


def _sar_items(tmp_path: Path, name: str, box, zone: str, power: np.ndarray):
    paths = {pol: tmp_path / f"{name}-{pol}.tif" for pol in ("vv", "vh")}
    for path in paths.values():
        write_raster(path, power, box.transform, zone)
    return stac_item(name, paths)


def _in_zone(box, zone: str):
    from odc.geo.geobox import GeoBox

    if zone == ZONE32:
        return box
    return GeoBox.from_bbox(box.extent.to_crs(zone).boundingbox, zone, resolution=10)


@pytest.mark.parametrize("zone", [ZONE32, "EPSG:32633"])
def test_a_gap_between_sar_items_is_nan_not_their_mean(tmp_path, files, zone):
    """Two items (-20 dB west, -30 dB east), 100 m apart: the gap is no hole to fill."""
    from odc.geo.geobox import GeoBox

    items = []
    for name, x0, power in (("w", 735_000, 0.01), ("e", 735_200, 0.001)):
        box = _in_zone(GeoBox((30, 10), Affine(10, 0, x0, 0, -10, 4_985_010), ZONE32), zone)
        items.append(_sar_items(tmp_path, name, box, zone, np.full((1, *box.shape), power)))
    optical = [stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})]
    values = m3rcr_xr.open_stac(optical, sar_items=items)["sar"].values
    assert set(np.unique(values[np.isfinite(values)])) == {-20.0, -30.0}
    assert np.isnan(values[:, :, 45:55]).any(axis=2).all()  # x 735135 to 735165


def test_beyond_a_sar_items_edge_is_nan_not_the_band_mean(tmp_path, files):
    """An item in another CRS, -10 dB west to -30 dB east: its eastern edge ends at
    about -30 dB, and nothing beyond it takes the mean (-20 dB)."""
    from odc.geo.geobox import GeoBox

    box = _in_zone(GeoBox((30, 15), COARSE, ZONE32), "EPSG:32633")
    db = np.broadcast_to(np.linspace(-10, -30, box.shape[1]), box.shape)
    item = _sar_items(tmp_path, "s", box, "EPSG:32633", (10 ** (db / 10))[None])
    optical = [stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})]
    vv = m3rcr_xr.open_stac(optical, sar_items=[item])["sar"].values[0]
    last = [row[np.isfinite(row)][-1] for row in vv]
    assert max(last) < -28


def test_a_truncated_asset_is_refused_at_open_naming_it_and_nothing_is_written(
    files, tmp_path, capsys
):
    truncated = tmp_path / "cut.tif"
    raw = files["cloudy"].read_bytes()
    truncated.write_bytes(raw[: len(raw) - 3000])  # the header whole, the last strip cut
    item = stac_item("cut", {"ortho_analytic_4b_sr": truncated})
    (tmp_path / "item.json").write_text(json.dumps(item.to_dict()))
    what = f"{truncated}: STAC item 'cut' asset 'ortho_analytic_4b_sr' cannot be read"
    with pytest.raises(InputFileError, match=what):
        m3rcr_xr.open_stac([item], chunks=None)
    dest = tmp_path / "out.zarr"
    assert main(["ingest", str(tmp_path / "item.json"), str(dest)]) == 2
    assert f"m3rcr ingest: error: {what}" in capsys.readouterr().err
    assert not dest.exists()


@pytest.mark.parametrize("crs", ["EPSG:99999", "nonsense"])
def test_a_crs_that_is_not_one_is_a_usage_error(files, tmp_path, capsys, crs):
    item = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"]})
    with pytest.raises(UsageError, match=f"crs='{crs}': not a CRS"):
        m3rcr_xr.open_stac([item], crs=crs)
    (tmp_path / "item.json").write_text(json.dumps(item.to_dict()))
    dest = tmp_path / "out.zarr"
    assert main(["ingest", str(tmp_path / "item.json"), str(dest), "--crs", crs]) == 2
    assert f"m3rcr ingest: error: --crs {crs}: not a CRS" in capsys.readouterr().err
    assert not dest.exists()


def test_a_geographic_scene_from_an_item_stored_in_lon_lat(files, tmp_path):
    """An optical item stored in EPSG:4326 (its grid kept, y/x in degrees) and SAR items
    in UTM, reprojected onto it: written and read back through the command line."""
    grid = GeoBox((96, 96), OPTICAL, ZONE32).to_crs("EPSG:4326")
    cloudy = np.random.default_rng(1).integers(1, 10_000, (4, *grid.shape), dtype=np.uint16)
    path = write_raster(tmp_path / "ll.tif", cloudy, grid.transform, "EPSG:4326", nodata=0)
    optical = pystac.ItemCollection([stac_item("ll", {"ortho_analytic_4b_sr": path})])
    sar = pystac.ItemCollection([stac_item("s1", {"vv": files["vv"], "vh": files["vh"]})])
    optical.save_object(dest_href=str(tmp_path / "optical.json"))
    sar.save_object(dest_href=str(tmp_path / "sar.json"))
    dest = tmp_path / "out.zarr"
    args = [
        "ingest",
        str(tmp_path / "optical.json"),
        str(dest),
        "--sar",
        str(tmp_path / "sar.json"),
    ]
    assert main(args) == 0
    scene = m3rcr_xr.open_zarr(dest).compute()
    assert scene.rio.crs == "EPSG:4326" and scene.rio.transform() == grid.transform
    np.testing.assert_array_equal(scene["cloudy"].values, cloudy)
    assert scene["y"].attrs["units"] == "degrees_north"
    assert scene["sar"].dims == ("polarization", "y", "x") and scene["sar"].notnull().any()


def test_a_geographic_crs_for_projected_items(files):
    item = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"]})
    scene = m3rcr_xr.open_stac([item], crs="EPSG:4326", chunks=None)
    assert scene.rio.crs == "EPSG:4326" and scene["cloudy"].dims == ("band", "y", "x")
    # 3 m in degrees at 45 N: 2.7e-5 of latitude, 3.8e-5 of longitude
    assert 2.7e-5 <= scene.rio.resolution()[0] <= 3.8e-5
    finer = m3rcr_xr.open_stac([item], crs="EPSG:4326", resolution=1e-5, chunks=None)
    assert finer.rio.resolution() == pytest.approx((1e-5, -1e-5))
    valid = scene["cloudy"].values[scene["cloudy"].values > 0]
    assert np.isin(valid, np.asarray(m3rcr_xr.open_quartet(files["cloudy"])["cloudy"])).all()


def test_credentials_in_urls_are_never_in_a_message(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    with serve_directory(tmp_path) as url:
        host = url.split("//")[1]
        item = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"]})
        item.assets["ortho_analytic_4b_sr"].href = f"http://alice:S3CRET@{host}/gone.tif"
        with pytest.raises(InputFileError, match=f"http://alice@{host}/gone.tif: ") as caught:
            m3rcr_xr.open_stac([item])
        presigned = f"{url}/missing.json?X-Amz-Credential=AKIDSECRET&X-Amz-Signature=S3CRET"
        for source in (f"http://alice:S3CRET@{host}/missing.json", presigned):
            assert main(["ingest", source, str(tmp_path / "out.zarr")]) == 2
    err = capsys.readouterr().err
    assert "X-Amz-Credential=...&X-Amz-Signature=...: STAC JSON cannot be read" in err
    for secret in ("S3CRET", "AKIDSECRET"):
        assert secret not in str(caught.value) and secret not in err


@pytest.mark.parametrize("chunks", [None, 4])
def test_a_band_lost_in_downlink_is_taken_from_the_next_item(tmp_path, chunks):
    """UDM2 band 8, bit 2: the first item's blue is missing at (5, 5) (it reads 0, like
    a dark pixel). The pixel comes whole from the next item; alone, it is nodata."""
    a = np.full((4, 8, 8), 1000, np.uint16)
    a[0, 5, 5] = 0
    a_udm2 = np.zeros((8, 8, 8), np.uint8)
    a_udm2[7, 5, 5] = 0b100
    b = np.full((4, 8, 8), 2000, np.uint16)
    a_item = _planet_item(tmp_path, "a", a, a_udm2, OPTICAL)
    b_item = _planet_item(tmp_path, "b", b, np.zeros((8, 8, 8), np.uint8), OPTICAL)
    cloudy = m3rcr_xr.open_stac([a_item, b_item], chunks=chunks)["cloudy"].values
    np.testing.assert_array_equal(cloudy[:, 5, 5], [2000] * 4)
    assert (cloudy[:, 4] == 1000).all()
    alone = m3rcr_xr.open_stac([a_item], chunks=chunks)["cloudy"].values
    np.testing.assert_array_equal(alone[:, 5, 5], [0] * 4)


def _declare(item: pystac.Item, asset: str, count: int = 1, **fields) -> pystac.Item:
    item.assets[asset].extra_fields["raster:bands"] = [dict(fields) for _ in range(count)]
    return item


@pytest.mark.parametrize("chunks", [None, 16])
def test_sar_stored_scaled_is_scaled_before_db(tmp_path, files, chunks):
    """raster:bands scale/offset (value = raw * scale + offset): linear power stored as
    uint16 x 10000 reads -20 and -30 dB, not 20 and 10 dB; lazily."""
    paths = {}
    for pol, raw in (("vv", 100), ("vh", 10)):
        paths[pol] = write_raster(
            tmp_path / f"{pol}.tif", np.full((1, 30, 30), raw, np.uint16), COARSE, ZONE32
        )
    item = stac_item("s1", paths)
    for pol in paths:
        _declare(item, pol, data_type="uint16", scale=0.0001, offset=0)
    optical = stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})
    with raise_if_dask_computes() if chunks else nullcontext():
        scene = m3rcr_xr.open_stac([optical], sar_items=[item], chunks=chunks)
    np.testing.assert_allclose(scene["sar"].values[:, 0, 0], [-20, -30], atol=1e-4)


def _power_x10000(tmp_path: Path, **header) -> dict[str, Path]:
    """vv and vh: linear power 0.01 and 0.001 stored as uint16 x10000, ``header`` the
    file header's ``scales``/``offsets``."""
    return {
        pol: write_raster(
            tmp_path / f"{pol}.tif", np.full((1, 30, 30), raw, np.uint16), COARSE, ZONE32, **header
        )
        for pol, raw in (("vv", 100), ("vh", 10))
    }


@pytest.mark.parametrize("chunks", [None, 16])
@pytest.mark.parametrize(
    ("key", "fields"),
    [
        (None, {}),  # no raster:bands: the header's layout and scale
        ("raster:bands", {"data_type": "uint16"}),  # declared, without a scale
        ("raster:bands", {"scale": 0.0001}),  # the header's scale, declared too
        ("bands", {"raster:scale": 0.0001, "data_type": "uint16"}),  # STAC 1.1
    ],
)
def test_a_files_header_scale_counts_where_the_item_declares_none(
    tmp_path, files, chunks, key, fields
):
    """Power x10000 with scale 0.0001 in the file header: -20 and -30 dB, not +20 and
    +10 (the raw values read as power), and the scale applied once."""
    item = stac_item("s1", _power_x10000(tmp_path, scales=(1e-4,)))
    for pol in ("vv", "vh"):
        if key:
            item.assets[pol].extra_fields[key] = [dict(fields)]
    optical = stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})
    with raise_if_dask_computes() if chunks else nullcontext():
        scene = m3rcr_xr.open_stac([optical], sar_items=[item], chunks=chunks)
    np.testing.assert_allclose(scene["sar"].values[:, 0, 0], [-20, -30], atol=1e-4)


@pytest.mark.parametrize(
    ("key", "fields", "declared"),
    [
        ("raster:bands", {"scale": 1}, "scale 1, offset 0 in 'raster:bands'"),
        ("raster:bands", {"offset": 0.5}, "scale 1, offset 0.5 in 'raster:bands'"),
        ("bands", {"raster:scale": 0.001}, "scale 0.001, offset 0 in 'bands'"),
    ],
)
def test_a_scale_declared_unlike_the_files_header_is_refused(
    tmp_path, files, key, fields, declared
):
    paths = _power_x10000(tmp_path, scales=(1e-4,))
    item = stac_item("s1", paths)
    item.assets["vv"].extra_fields[key] = [dict(fields)]
    optical = stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})
    what = f"{paths['vv']}: STAC item 's1' asset 'vv' declares {declared}, its file's header"
    with pytest.raises(InputFileError, match=f"{what} scale 0.0001, offset 0; they must agree"):
        m3rcr_xr.open_stac([optical], sar_items=[item])


def test_an_optical_files_header_offset_is_refused_and_its_0001_scale_read_as_stored(tmp_path):
    """Sentinel-2 L2A's offset -1000 (value = raw - 1000) in the header, no raster:bands:
    refused, not read as raw; scale 0.0001 is reflectance x10000 as stored."""
    data = np.full((4, 96, 96), 2000, np.uint16)
    shifted = write_raster(
        tmp_path / "o.tif", data, OPTICAL, ZONE32, nodata=0, offsets=(-1000.0,) * 4
    )
    item = stac_item("o", {"ortho_analytic_4b_sr": shifted})
    with pytest.raises(
        InputFileError, match="STAC item 'o' asset 'ortho_analytic_4b_sr': scale 1, offset -1000"
    ):
        m3rcr_xr.open_stac([item])
    scaled = write_raster(tmp_path / "r.tif", data, OPTICAL, ZONE32, nodata=0, scales=(1e-4,) * 4)
    scene = m3rcr_xr.open_stac([stac_item("r", {"ortho_analytic_4b_sr": scaled})])
    assert (scene["cloudy"].values == 2000).all()


@pytest.mark.parametrize("chunks", [None, 16])
def test_sar_assets_holding_db_are_refused_when_read_not_floored(tmp_path, files, chunks):
    """vv in dB (-25 to -5), vh in power: every dB value is below the power floor, and
    the scene's VV would be -50 dB throughout. The error names vv's file and asset."""
    db = np.random.default_rng(4).uniform(-25, -5, (1, 30, 30)).astype(np.float32)
    vv = write_raster(tmp_path / "vv_db.tif", db, COARSE, ZONE32)
    item = stac_item("s1", {"vv": vv, "vh": files["vh"]})
    optical = stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})
    message = rf"{vv}: STAC item 's1' asset 'vv': (\d+) of the \1 finite values of a chunk are"
    message += r".*not the linear power expected \(never negative\); pass sar_unit='dB' if the "
    if chunks is None:
        with pytest.raises(InputFileError, match=message):
            m3rcr_xr.open_stac([optical], sar_items=[item], chunks=None)
        return
    with raise_if_dask_computes():
        scene = m3rcr_xr.open_stac([optical], sar_items=[item], chunks=chunks)
    with pytest.raises(InputFileError, match=message):
        scene["sar"].compute()


def db_assets(root: Path, files: dict[str, Path]) -> dict[str, Path]:
    """vv and vh in dB: the quartet's SAR file (``files["sar"]``), one band each."""
    with rasterio_open(files["sar"]) as src:
        db = src.read()
    return {
        pol: write_raster(root / f"{pol}_db.tif", db[index : index + 1], COARSE, ZONE32)
        for index, pol in enumerate(("vv", "vh"))
    }


@pytest.mark.parametrize("chunks", [None, 16])
def test_sar_assets_in_db_are_read_as_they_are_with_sar_unit_db(tmp_path, files, quartet, chunks):
    """sar_unit="dB": no conversion, the quartet's SAR as open_quartet reads its dB file
    (before: refused as dB, not the linear power expected); lazily."""
    optical = stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})
    item = stac_item("s1", db_assets(tmp_path, files))
    with raise_if_dask_computes() if chunks else nullcontext():
        scene = m3rcr_xr.open_stac([optical], sar_items=[item], chunks=chunks, sar_unit="dB")
    np.testing.assert_allclose(scene["sar"].values, quartet["sar"].values, rtol=0, atol=1e-5)
    assert scene["sar"].dtype == np.float32 and scene["sar"].attrs == quartet["sar"].attrs


def test_sar_in_db_stored_scaled_is_scaled_with_sar_unit_db(tmp_path, files):
    """dB x100 stored as int16, scale 0.01 in raster:bands: -12 and -20.5 dB."""
    paths = {
        pol: write_raster(
            tmp_path / f"{pol}.tif", np.full((1, 30, 30), raw, np.int16), COARSE, ZONE32
        )
        for pol, raw in (("vv", -1200), ("vh", -2050))
    }
    item = stac_item("s1", paths)
    for pol in paths:
        _declare(item, pol, data_type="int16", scale=0.01, offset=0)
    optical = stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})
    scene = m3rcr_xr.open_stac([optical], sar_items=[item], sar_unit="dB")
    np.testing.assert_allclose(scene["sar"].values[:, 0, 0], [-12, -20.5], atol=1e-4)


@pytest.mark.parametrize("chunks", [None, 16])
def test_linear_power_given_as_db_is_refused_when_read(files, chunks):
    """Power read as dB is about 0 dB everywhere: refused as open_quartet refuses it,
    naming the asset and sar_unit='power'."""
    optical = stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})
    item = stac_item("s1", {"vv": files["vv"], "vh": files["vh"]})
    message = (
        rf"{files['vv'].parent}/v[vh].tif: STAC item 's1' asset 'v[vh]': all \d+ finite values "
        r"of a chunk lie in \[0, 1.5\].*-5 over land\); pass sar_unit='power' if the assets "
        "hold power$"
    )
    with pytest.raises(InputFileError, match=message):
        m3rcr_xr.open_stac([optical], sar_items=[item], chunks=chunks, sar_unit="dB").compute()


@pytest.mark.parametrize("unit", ["db", "", None, "linear"])
def test_a_sar_unit_other_than_power_or_db_is_refused_before_any_item_is_read(unit):
    with pytest.raises(UsageError, match=rf"^sar_unit={unit!r}: must be power or dB$"):
        m3rcr_xr.open_stac("/nonexistent/items.json", sar_unit=unit)


def test_a_store_written_with_one_sar_unit_is_not_resumed_with_the_other(
    tmp_path, files, monkeypatch
):
    """The same files read in the other unit are other data: the write cut off with
    sar_unit="dB" is refused with "power" (the default), and resumed with "dB"."""
    optical = stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})
    item = stac_item("s1", db_assets(tmp_path, files))
    write_step, target = writing._write_step, tmp_path / "s.zarr"

    def disk_went_away(ds, where, dim, region, show=False):
        if region.start:  # after the first step is written and recorded
            raise OSError("disk went away")
        write_step(ds, where, dim, region, show)

    def scene(**unit) -> xr.Dataset:
        return m3rcr_xr.open_stac([optical], sar_items=[item], chunks=32, **unit)

    monkeypatch.setattr(layout, "CHUNKS_PER_STEP", 1)  # three steps of 32 rows
    with m3rcr_xr.set_options(scene_chunk=32):
        with monkeypatch.context() as patch:
            patch.setattr(writing, "_write_step", disk_went_away)
            with pytest.raises(OSError, match="disk went away"):
                m3rcr_xr.to_zarr(scene(sar_unit="dB"), target)
        before = snapshot(target)
        with pytest.raises(m3rcr_xr.StoreError, match="an unfinished store of other data"):
            m3rcr_xr.to_zarr(scene(), target)
        assert snapshot(target) == before
        m3rcr_xr.to_zarr(scene(sar_unit="dB"), target)  # the same data: resumed
    xr.testing.assert_equal(m3rcr_xr.open_zarr(target).compute(), scene(sar_unit="dB").compute())


@pytest.mark.parametrize("quartet", ["train_quartet", "test_quartet"])
def test_the_real_quartets_sar_as_power_assets_is_read_and_as_db_refused(
    request, tmp_path, quartet
):
    """The real samples' SAR (dB) written as vv/vh linear power reads as open_quartet
    reads the dB file; the dB itself as assets is refused."""
    paths = request.getfixturevalue(quartet)
    with rasterio_open(paths["sar"]) as src:
        db, profile = src.read(), src.profile
    written = {}
    for unit, values in (("db", db), ("power", 10 ** (db / 10))):
        for index, pol in enumerate(("vv", "vh")):
            path = tmp_path / f"{pol}_{unit}.tif"
            with rasterio.open(path, "w", **{**profile, "count": 1}) as dst:
                dst.write(values[index : index + 1])
            written[pol, unit] = path
    optical = stac_item("o", {"ortho_analytic_4b_sr": paths["cloudy"]})
    power = stac_item("s1", {"vv": written["vv", "power"], "vh": written["vh", "power"]})
    scene = m3rcr_xr.open_stac([optical], sar_items=[power])
    expected = m3rcr_xr.open_quartet(paths["cloudy"], sar=paths["sar"])["sar"].values
    np.testing.assert_allclose(scene["sar"].values, expected, rtol=0, atol=1e-4)
    in_db = stac_item("s1", {"vv": written["vv", "db"], "vh": written["vh", "db"]})
    scene = m3rcr_xr.open_stac([optical], sar_items=[in_db])
    with pytest.raises(InputFileError, match=r"v[vh]_db.tif: STAC item 's1' asset 'v[vh]': "):
        scene["sar"].compute()


def test_land_cover_offset_is_applied_and_a_scale_refused(tmp_path, files):
    codes = np.full((1, 30, 30), 5, np.uint8)  # stored minus 5: 10, tree cover
    path = write_raster(tmp_path / "map.tif", codes, COARSE, ZONE32)
    optical = stac_item("o", {"ortho_analytic_4b_sr": files["cloudy"]})
    shifted = _declare(stac_item("wc", {"map": path}), "map", offset=5)
    scene = m3rcr_xr.open_stac([optical], landcover_items=[shifted])
    assert (scene["landcover"].values == 10).all()
    scaled = _declare(stac_item("wc", {"map": path}), "map", scale=2)
    with pytest.raises(InputFileError, match="STAC item 'wc' asset 'map': scale 2.*no class"):
        m3rcr_xr.open_stac([optical], landcover_items=[scaled])


@pytest.mark.parametrize("chunks", [None, 32])
def test_a_land_cover_offset_leaves_places_without_an_item_nodata(tmp_path, chunks):
    """Two land-cover items with a gap between them, stored 0 with offset 10 (tree
    cover), no nodata declared: the gap (odc-stac's empty fill) stays nodata 0."""
    optical = write_raster(
        tmp_path / "o.tif",
        np.full((4, 96, 96), 500, np.uint16),
        Affine(3, 0, 735_000, 0, -3, 4_985_010),
        ZONE32,
        nodata=0,
    )
    items = []
    for name, left in (("a", 735_000), ("b", 735_200)):
        tile = np.zeros((1, 30, 10), np.uint8)
        path = write_raster(
            tmp_path / f"{name}.tif", tile, Affine(10, 0, left, 0, -10, 4_985_010), ZONE32
        )
        items.append(_declare(stac_item(name, {"map": path}), "map", data_type="uint8", offset=10))
    scene = stac_item("o", {"ortho_analytic_4b_sr": optical})
    landcover = m3rcr_xr.open_stac([scene], landcover_items=items, chunks=chunks)["landcover"]
    landcover = landcover.values
    assert (landcover[:, :30] == 10).all() and (landcover[:, 70:] == 10).all()
    assert (landcover[:, 40:60] == 0).all()


def test_optical_scale_is_reflectance_x10000_or_refused(files):
    """PlanetScope SR declaring scale 0.0001 stores reflectance x10000: read as stored;
    any other scale or offset is refused rather than guessed at."""
    item = _declare(
        stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"]}),
        "ortho_analytic_4b_sr",
        4,
        scale=0.0001,
        offset=0,
    )
    with rasterio_open(files["cloudy"]) as src:
        expected = src.read()
    np.testing.assert_array_equal(m3rcr_xr.open_stac([item])["cloudy"].values, expected)
    for fields in ({"scale": 1, "offset": -1000}, {"scale": 0.01}):
        _declare(item, "ortho_analytic_4b_sr", 4, **fields)
        with pytest.raises(InputFileError, match="STAC item 'p' asset 'ortho_analytic_4b_sr'"):
            m3rcr_xr.open_stac([item])


def test_a_band_count_unlike_the_files_is_refused_in_one_line(tmp_path, files, capsys):
    """raster:bands of 1 entry on the 4-band optical asset (odc-stac: KeyError)."""
    item = _declare(
        stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"]}), "ortho_analytic_4b_sr"
    )
    with pytest.raises(InputFileError, match="asset 'ortho_analytic_4b_sr' declares 1 band"):
        m3rcr_xr.open_stac([item])
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item.to_dict()))
    dest = tmp_path / "out.zarr"
    assert main(["ingest", str(path), str(dest)]) == 2
    err = capsys.readouterr().err
    assert "declares 1 band(s) in 'raster:bands', the file has 4" in err
    assert err.count("\n") == 1 and not dest.exists()


RGBN = ("red", "green", "blue", "nir")
BGRN = ("blue", "green", "red", "nir")


def _rgbn(root: Path, name: str, descriptions: tuple[str, ...] = ()) -> Path:
    """An optical file storing red, green, blue, nir (3000, 2000, 1000, 4000)."""
    data = np.stack([np.full((8, 8), v, np.uint16) for v in (3000, 2000, 1000, 4000)])
    return write_raster(root / f"{name}.tif", data, OPTICAL, ZONE32, 0, descriptions)


def _name_bands(item: pystac.Item, key: str, names: tuple[str, ...]) -> pystac.Item:
    """The optical asset's bands named in ``key``: STAC 1.0's ``eo:bands`` (common
    names) or STAC 1.1's ``bands`` (``eo:common_name``)."""
    field = "common_name" if key == "eo:bands" else "eo:common_name"
    bands = [{"name": f"b{i}", field: name} for i, name in enumerate(names, start=1)]
    item.assets["ortho_analytic_4b_sr"].extra_fields[key] = bands
    return item


@pytest.mark.parametrize("chunks", [None, 4])
@pytest.mark.parametrize("named_in", ["file", "eo:bands", "bands"])
def test_optical_bands_are_put_in_order_by_their_names(tmp_path, named_in, chunks):
    """A file storing red, green, blue, nir, named so by its band descriptions (as
    open_quartet reads them) or by the item (eo:bands; STAC 1.1 bands): blue, green,
    red, nir in the scene (before: by position, red and blue swapped); lazily."""
    path = _rgbn(tmp_path, "o", RGBN if named_in == "file" else ())
    item = stac_item("o", {"ortho_analytic_4b_sr": path})
    if named_in != "file":
        _name_bands(item, named_in, RGBN)
    with raise_if_dask_computes() if chunks else nullcontext():
        cloudy = m3rcr_xr.open_stac([item], chunks=chunks)["cloudy"]
    np.testing.assert_array_equal(cloudy.values[:, 0, 0], [1000, 2000, 3000, 4000])
    if named_in == "file":
        quartet = m3rcr_xr.open_quartet(path, chunks=None)["cloudy"]
        np.testing.assert_array_equal(cloudy.values, quartet.values)


@pytest.mark.parametrize("chunks", [None, 4])
def test_items_of_a_mosaic_each_put_in_order_by_their_own_names(tmp_path, chunks):
    """A's file is BGRN by position (Planet's SR: no names), B's RGBN by its names: each
    item's bands in the library's order, where the mosaic takes A's pixels and B's."""
    a = np.stack([np.full((8, 8), v, np.uint16) for v in (100, 200, 300, 400)])
    a[:, :, 4:] = 0  # A has no data on the right: B's pixels there
    items = [
        stac_item(
            "a", {"ortho_analytic_4b_sr": write_raster(tmp_path / "a.tif", a, OPTICAL, ZONE32, 0)}
        ),
        stac_item("b", {"ortho_analytic_4b_sr": _rgbn(tmp_path, "b", RGBN)}),
    ]
    with raise_if_dask_computes() if chunks else nullcontext():
        cloudy = m3rcr_xr.open_stac(items, chunks=chunks)["cloudy"]
    np.testing.assert_array_equal(cloudy.values[:, 0, 0], [100, 200, 300, 400])
    np.testing.assert_array_equal(cloudy.values[:, 0, 7], [1000, 2000, 3000, 4000])


def test_band_names_that_disagree_or_name_bands_twice_are_refused(tmp_path):
    """The item's names against its file's: which band is which cannot be told, so
    refused naming the asset; names that name a band twice are refused as open_quartet
    refuses them; names that name no band (b1..b4) leave the bands by position."""
    described = _rgbn(tmp_path, "described", RGBN)
    item = _name_bands(stac_item("p", {"ortho_analytic_4b_sr": described}), "eo:bands", BGRN)
    with pytest.raises(InputFileError, match="STAC item 'p' asset 'ortho_analytic_4b_sr'.*file"):
        m3rcr_xr.open_stac([item])
    plain = _rgbn(tmp_path, "plain")
    twice = ("red", "red", "blue", "nir")
    item = _name_bands(stac_item("p", {"ortho_analytic_4b_sr": plain}), "eo:bands", twice)
    with pytest.raises(InputFileError, match="asset 'ortho_analytic_4b_sr'.*exactly once"):
        m3rcr_xr.open_stac([item])
    unnamed = ("b1", "b2", "b3", "b4")
    item = _name_bands(stac_item("p", {"ortho_analytic_4b_sr": described}), "eo:bands", unnamed)
    cloudy = m3rcr_xr.open_stac([item], chunks=None)["cloudy"]  # the file's names
    np.testing.assert_array_equal(cloudy.values[:, 0, 0], [1000, 2000, 3000, 4000])


@pytest.mark.parametrize(
    "udm2_grid",
    [
        OPTICAL * Affine.translation(0.5, 0),  # half a pixel east
        OPTICAL * Affine.translation(4, 0),  # 4 pixels east
        Affine(3, 0, 735_000, 0, -3, 4_985_010 + 3),  # a row north
    ],
)
def test_a_udm2_off_its_optical_grid_is_refused_as_open_quartet_refuses_it(tmp_path, udm2_grid):
    """odc-stac would resample it onto the scene: 4 pixels off, the first 4 columns took
    a UDM2 of zeros, read as clear and usable. Refused, naming the asset (the item's
    proj fields, from the optical file, say nothing of the UDM2's own grid)."""
    optical = write_raster(
        tmp_path / "o.tif", np.full((4, 96, 96), 1000, np.uint16), OPTICAL, ZONE32, 0
    )
    udm2 = write_raster(tmp_path / "u.tif", np.zeros((8, 96, 96), np.uint8), udm2_grid, ZONE32)
    with pytest.raises(AlignmentError, match="grid .* differs"):
        m3rcr_xr.open_quartet(optical, cloudmask=udm2)
    item = stac_item("o", {"ortho_analytic_4b_sr": optical, "ortho_udm2": udm2})
    with pytest.raises(AlignmentError, match=r"u\.tif: STAC item 'o' asset 'ortho_udm2': grid"):
        m3rcr_xr.open_stac([item])


def test_a_udm2_in_another_crs_is_refused_and_one_stored_south_up_read(files, tmp_path):
    """The same pixels stored south-up are the optical grid (as open_quartet reads
    them); another CRS is not."""
    south_up = _south_up(tmp_path, files["udm2"], tmp_path / "udm2_s.tif")
    item = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"], "ortho_udm2": south_up})
    north = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"], "ortho_udm2": files["udm2"]})
    scene, expected = (m3rcr_xr.open_stac([i], chunks=None) for i in (item, north))
    np.testing.assert_array_equal(scene["cloudmask"].values, expected["cloudmask"].values)
    other_crs = write_raster(tmp_path / "u33.tif", _read(files["udm2"]), OPTICAL, "EPSG:32633")
    item = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"], "ortho_udm2": other_crs})
    with pytest.raises(AlignmentError, match="asset 'ortho_udm2': CRS EPSG:32633 differs"):
        m3rcr_xr.open_stac([item])


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        (
            "proj:transform",
            [3, 0, 734_988, 0, -3, 4_985_010],  # 4 pixels west of the file
            r"grid \(shape \(96, 96\), transform \(3.0, 0.0, 735000.0, 0.0, -3.0, "
            r"4985010.0\)\) differs from its proj fields' \(shape \(96, 96\), "
            r"transform \(3.0, 0.0, 734988.0, 0.0, -3.0, 4985010.0\)\)",
        ),
        ("proj:shape", [96, 100], r"grid .* differs from its proj fields' \(shape \(96, 100\)"),
        ("proj:code", "EPSG:32633", "CRS EPSG:32632 differs from its proj fields' EPSG:32633"),
    ],
)
def test_an_optical_asset_off_its_items_proj_grid_is_refused(files, field, value, match):
    """The scene's grid is built from the proj fields, while odc-stac reads the pixels
    where the file says: 4 pixels off, the scene's first 4 columns were empty fill and
    the file's last 4 cut off. Refused, naming the file, item and asset and both grids."""
    item = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"]})
    item.properties[field] = value
    prefix = re.escape(f"{files['cloudy']}: STAC item 'p' asset 'ortho_analytic_4b_sr': ")
    with pytest.raises(AlignmentError, match=prefix + match):
        m3rcr_xr.open_stac([item])


def test_proj_fields_north_up_for_a_file_stored_south_up_are_its_grid(files, tmp_path):
    """The same pixels, the proj fields' lines in the other order: the same grid (as
    for a UDM2), read as the file stores them."""
    south_up = _south_up(tmp_path, files["cloudy"], tmp_path / "cloudy_s.tif")
    item = stac_item("p", {"ortho_analytic_4b_sr": south_up})
    item.properties["proj:transform"] = list(OPTICAL)[:6]
    scene = m3rcr_xr.open_stac([item], chunks=None)
    assert scene.rio.transform() == OPTICAL
    np.testing.assert_array_equal(scene["cloudy"].values, _read(files["cloudy"]))
