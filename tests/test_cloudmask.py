import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import m3rcr_xr
from benchmarks.cloudmask_agreement import agreement_table
from m3rcr_xr import cli, identity
from m3rcr_xr.cloudmask import (
    DEFAULT_CLASSES,
    UDM2_BANDS,
    estimate_cloudmask,
    mask_nodata,
    open_udm2,
    udm2_cloudmask,
    udm2_nodata,
)
from m3rcr_xr.exceptions import (
    AlignmentError,
    InputFileError,
    M3RCRWarning,
    SchemaError,
    UsageError,
)
from tests.conftest import raise_if_dask_computes
from tests.rasters import CRS, OPTICAL_GRID, write_optical, write_raster

SHAPE = (30, 30)
#: planted UDM2 classes, one per 5-row stripe: band number (1-based) of each stripe
STRIPES = {"clear": 1, "snow": 2, "shadow": 3, "light_haze": 4, "heavy_haze": 5, "cloud": 6}


def planted_udm2() -> tuple[np.ndarray, np.ndarray]:
    """An 8-band UDM2 of :data:`SHAPE`: one class per 5-row stripe, and blackfill in the
    first 4 columns (bit 0 of band 8, with another bit set elsewhere to be ignored)."""
    udm2 = np.zeros((8, *SHAPE), np.uint8)
    for row, band in enumerate(STRIPES.values()):
        udm2[band - 1, 5 * row : 5 * row + 5, 4:] = 1
    udm2[6] = 80  # confidence
    blackfill = np.zeros(SHAPE, bool)
    blackfill[:, :4] = True
    udm2[7][blackfill] = 1
    udm2[7, :, 10] = 2  # bit 1 (cloud in the legacy UDM): not nodata
    return udm2, blackfill


def stripes(*classes: str) -> np.ndarray:
    expected = np.zeros(SHAPE, bool)
    for row, name in enumerate(STRIPES):
        if name in classes:
            expected[5 * row : 5 * row + 5, 4:] = True
    return expected


@pytest.fixture
def udm2_scene(tmp_path):
    udm2, blackfill = planted_udm2()
    cloudy = write_optical(tmp_path / "cloudy.tif", np.full((4, *SHAPE), 1000, np.uint16))
    path = write_raster(tmp_path / "udm2.tif", udm2, OPTICAL_GRID, CRS)
    return cloudy, path, blackfill


@pytest.mark.parametrize(
    "classes",
    [("cloud", "heavy_haze", "shadow"), ("cloud", "heavy_haze", "shadow", "light_haze")],
)
def test_udm2_gives_the_planted_mask_and_nodata(udm2_scene, classes):
    cloudy, udm2, blackfill = udm2_scene
    ds = m3rcr_xr.open_quartet(cloudy, cloudmask=udm2, udm2_classes=classes, chunks=16)
    np.testing.assert_array_equal(ds["cloudmask"].values, stripes(*classes))
    # blackfill becomes optical nodata 0 in every band, nothing else changes
    expected = np.where(blackfill, 0, 1000)
    np.testing.assert_array_equal(ds["cloudy"].values, np.broadcast_to(expected, (4, *SHAPE)))
    assert ds["cloudy"].dtype == np.uint16
    assert ds["cloudmask"].attrs["udm2_classes"] == ", ".join(classes)


def test_udm2_nodata_is_blackfill_or_a_band_missing_or_suspect(tmp_path):
    """Band 8 (legacy UDM): bit 0 blackfill, bits 2-7 bands 1-6 lost in downlink or
    suspect. A 4-band image is unusable where bit 0 or bits 2-5 are set; bit 1 (legacy
    cloud) and bits 6-7 (bands it does not have) leave it usable. open_quartet then
    reads such pixels as nodata, 0 in every band, although their other bands hold data."""
    bits = np.array([0b1, 0b10, 0b100, 0b100000, 0b1000000, 0b10000000], np.uint8)
    udm2 = np.zeros((8, 1, bits.size), np.uint8)
    udm2[7, 0] = bits
    array = xr.DataArray(udm2, dims=("band", "y", "x"), coords={"band": list(UDM2_BANDS)})
    expected = [True, False, True, True, False, False]
    assert udm2_nodata(array).values[0].tolist() == expected
    cloudy = np.full((4, *SHAPE), 1000, np.uint16)
    cloudy[0, 0, :3] = 0  # blue lost in downlink where bit 2 is set
    full = np.zeros((8, *SHAPE), np.uint8)
    full[7, 0, : bits.size] = bits
    ds = m3rcr_xr.open_quartet(
        write_optical(tmp_path / "cloudy.tif", cloudy),
        cloudmask=write_raster(tmp_path / "udm2.tif", full, OPTICAL_GRID, CRS),
    )
    assert (ds["cloudy"].values[:, 0, : bits.size] == 0).all(axis=0).tolist() == expected


def test_udm2_default_classes(udm2_scene):
    cloudy, udm2, _ = udm2_scene
    ds = m3rcr_xr.open_quartet(cloudy, cloudmask=udm2)
    np.testing.assert_array_equal(ds["cloudmask"].values, stripes("cloud", "heavy_haze", "shadow"))


def test_udm2_open_is_lazy(udm2_scene):
    cloudy, udm2, _ = udm2_scene
    with raise_if_dask_computes():
        ds = m3rcr_xr.open_quartet(cloudy, cloudmask=udm2, chunks=16)
    assert ds["cloudmask"].chunks == ((16, 14), (16, 14))


@pytest.mark.parametrize(
    ("bands", "dtype", "match"),
    [(7, np.uint8, "7 band"), (8, np.uint16, "dtype uint16, expected uint8")],
)
def test_udm2_of_another_form_is_refused_naming_the_file(tmp_path, bands, dtype, match):
    path = write_raster(
        tmp_path / "bad_udm2.tif", np.zeros((bands, *SHAPE), dtype), OPTICAL_GRID, CRS
    )
    with pytest.raises(InputFileError, match=rf"bad_udm2\.tif.*{match}"):
        open_udm2(path)


def test_udm2_of_another_dtype_is_refused_by_open_quartet(tmp_path):
    cloudy = write_optical(tmp_path / "cloudy.tif", np.ones((4, *SHAPE), np.uint16))
    udm2 = write_raster(tmp_path / "udm2.tif", np.zeros((8, *SHAPE), np.int16), OPTICAL_GRID, CRS)
    with pytest.raises(InputFileError, match=r"udm2\.tif: udm2 has dtype int16"):
        m3rcr_xr.open_quartet(cloudy, cloudmask=udm2)


def test_udm2_on_another_grid_is_refused(tmp_path):
    cloudy = write_optical(tmp_path / "cloudy.tif", np.ones((4, *SHAPE), np.uint16))
    shifted = OPTICAL_GRID * Affine.translation(1, 0)
    udm2 = write_raster(tmp_path / "udm2.tif", planted_udm2()[0], shifted, CRS)
    with pytest.raises(AlignmentError, match=r"udm2\.tif: grid .* differs"):
        m3rcr_xr.open_quartet(cloudy, cloudmask=udm2)


def _scene_with_udm2(
    cloudy: Path, udm2_path: Path, variables: tuple[str, ...] = ("cloudmask", "cloudy")
) -> xr.Dataset:
    """A scene put together by hand: the optical file of ``open_quartet``, and the UDM2
    of ``open_udm2`` as its cloud mask and (or) as the optical layer's nodata."""
    ds = m3rcr_xr.open_quartet(cloudy, chunks=16)
    udm2 = open_udm2(udm2_path, chunks=16)
    made = {
        "cloudmask": udm2_cloudmask(udm2),
        "cloudy": mask_nodata(ds["cloudy"], udm2_nodata(udm2)),
    }
    return ds.assign({name: made[name] for name in variables})


def _rewritten_in_place(path: Path) -> None:
    """Other flags written into the UDM2 at ``path``, its inode kept."""
    with rasterio.open(path, "r+") as raster:
        raster.write(raster.read()[:, ::-1])


def _replaced(path: Path) -> None:
    """The UDM2 at ``path`` replaced by another, written beside it and renamed over it."""
    with rasterio.open(path) as raster:
        flipped = raster.read()[:, :, ::-1]
    os.replace(write_raster(path.with_suffix(".new.tif"), flipped, OPTICAL_GRID, CRS), path)


@pytest.mark.parametrize("variable", ["cloudmask", "cloudy"])
@pytest.mark.parametrize("change", [_rewritten_in_place, _replaced], ids=["in place", "replaced"])
def test_a_udm2_changed_since_open_udm2_is_refused(udm2_scene, tmp_path, variable, change):
    """Its top rows looked at (GDAL caches their blocks), then the file changed: the
    store held the old file's rows and the new one's (in place), or all old ones
    (replaced), complete and with no word. Refused now, nothing written, through the
    mask (``udm2_cloudmask``) as through the nodata (``udm2_nodata``, ``mask_nodata``)."""
    cloudy, path, _ = udm2_scene
    scene = _scene_with_udm2(cloudy, path, (variable,))
    scene[variable][..., :16, :].compute()
    change(path)
    with pytest.raises(InputFileError, match=r"udm2\.tif: changed since it was opened"):
        m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    opened_again = _scene_with_udm2(cloudy, path, (variable,))
    m3rcr_xr.to_zarr(opened_again, tmp_path / "s.zarr")


@pytest.mark.parametrize("chmod", [False, True], ids=["unchanged", "chmod"])
def test_a_udm2_unchanged_since_open_udm2_is_written(udm2_scene, tmp_path, chmod):
    """A ``chmod`` (read-only raw data) changes no data: the scene is written."""
    cloudy, path, blackfill = udm2_scene
    scene = _scene_with_udm2(cloudy, path)
    if chmod:
        path.chmod(0o444)
    m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    written = m3rcr_xr.open_zarr(tmp_path / "s.zarr")
    np.testing.assert_array_equal(written["cloudmask"].values, stripes(*DEFAULT_CLASSES))
    assert (written["cloudy"].values[:, blackfill] == 0).all()


@pytest.mark.parametrize("variable", ["cloudmask", "cloudy"])
def test_a_udm2_loaded_is_written_once_its_file_is_removed(udm2_scene, tmp_path, variable):
    """A UDM2 downloaded for a while: its mask (or nodata) computed into a loaded scene,
    then the file removed. In memory, nothing of it can mix: written (it was refused as
    "changed since it was opened (rewritten or replaced)"). The same scene lazy, which
    would still read the file, is refused, saying it was removed."""
    cloudy, path, blackfill = udm2_scene
    lazy = _scene_with_udm2(cloudy, path, (variable,))
    loaded = m3rcr_xr.open_quartet(cloudy, chunks=16).load()
    loaded[variable] = _scene_with_udm2(cloudy, path, (variable,))[variable].compute()
    path.unlink()
    with pytest.raises(InputFileError, match=r"udm2\.tif: removed since it was opened"):
        m3rcr_xr.to_zarr(lazy, tmp_path / "lazy.zarr")
    assert not (tmp_path / "lazy.zarr").exists()
    m3rcr_xr.to_zarr(loaded, tmp_path / "s.zarr")
    written = m3rcr_xr.open_zarr(tmp_path / "s.zarr")
    if variable == "cloudmask":
        np.testing.assert_array_equal(written["cloudmask"].values, stripes(*DEFAULT_CLASSES))
    else:
        assert (written["cloudy"].values[:, blackfill] == 0).all()


def test_open_quartet_identifies_a_udm2_cloudmask_once(udm2_scene, monkeypatch):
    """open_udm2 takes the UDM2's identity at open (a ``stat``, a HEAD request
    remotely); open_quartet lists that one for the scene rather than taking it again."""
    cloudy, path, _ = udm2_scene
    taken: list[str] = []

    def counted(file, *args, **kwargs):
        taken.append(Path(file).name)
        return identity.opened_file(file, *args, **kwargs)

    for module in ("m3rcr_xr.cloudmask", "m3rcr_xr.io.scenes"):
        monkeypatch.setattr(f"{module}.opened_file", counted)
    ds = m3rcr_xr.open_quartet(cloudy, cloudmask=path, chunks=16)
    assert sorted(taken) == ["cloudy.tif", "udm2.tif"]
    listed = {Path(source).name: source.at_open for source in ds.encoding["source"]}
    assert listed["udm2.tif"] == identity._source_identity(str(path))


def test_unknown_udm2_class_is_a_usage_error():
    udm2 = xr.DataArray(
        planted_udm2()[0], dims=("band", "y", "x"), coords={"band": list(UDM2_BANDS)}
    )
    with pytest.raises(UsageError, match="classes=.*'fog'"):
        udm2_cloudmask(udm2, ("cloud", "fog"))


def random_udm2(seed: int) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    flags = np.zeros((8, 24, 20), np.uint8)
    label = rng.integers(0, 6, (24, 20))
    for band in range(6):
        flags[band] = label == band
    flags[7] = rng.integers(0, 256, (24, 20))
    return xr.DataArray(flags, dims=("band", "y", "x"), coords={"band": list(UDM2_BANDS)})


def random_cloudy(seed: int) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 8000, (4, 24, 20)).astype(np.uint16)
    values[:, :3, :3] = 0  # nodata
    return xr.DataArray(values, dims=("band", "y", "x"), coords={"band": list(m3rcr_xr.BANDS)})


chunk = st.integers(min_value=4, max_value=24)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(y=chunk, x=chunk, seed=st.integers(0, 3))
def test_masks_do_not_depend_on_chunking(y, x, seed):
    udm2, cloudy = random_udm2(seed), random_cloudy(seed)
    chunks = {"y": y, "x": x}
    for func, data in [
        (udm2_cloudmask, udm2),
        (udm2_nodata, udm2),
        (estimate_cloudmask, cloudy),
    ]:
        with raise_if_dask_computes():
            lazy = func(data.chunk(chunks))
        xr.testing.assert_identical(lazy.compute(), func(data))


def test_estimate_is_flagged_loudly():
    mask = estimate_cloudmask(random_cloudy(0))
    assert mask.dtype == bool and mask.dims == ("y", "x")
    assert mask.attrs["estimated"] == 1
    assert mask.attrs["long_name"].startswith("estimated cloud mask")
    assert {"method", "hot_threshold", "brightness_threshold"} <= set(mask.attrs)
    assert not mask.values[:3, :3].any()  # nodata is never cloud


def test_estimate_thresholds_move_the_mask():
    cloudy = random_cloudy(1)
    loose = estimate_cloudmask(cloudy, brightness_threshold=0).values
    strict = estimate_cloudmask(cloudy, brightness_threshold=7000).values
    assert strict.sum() < loose.sum()
    assert not (strict & ~loose).any()


def test_estimate_without_nir_is_a_schema_error():
    cloudy = random_cloudy(0).isel(band=slice(0, 3))
    with pytest.raises(SchemaError, match="band.*nir missing"):
        estimate_cloudmask(cloudy)


def test_open_quartet_estimates_with_a_warning(tmp_path):
    values = np.full((4, *SHAPE), 900, np.uint16)
    values[:, :10] = [[[6000]], [[6100]], [[6200]], [[6300]]]  # white, bright: cloud
    cloudy = write_optical(tmp_path / "cloudy.tif", values)
    with pytest.warns(M3RCRWarning, match="estimated cloud mask"):
        ds = m3rcr_xr.open_quartet(cloudy, cloudmask="estimate")
    expected = np.zeros(SHAPE, bool)
    expected[:10] = True
    np.testing.assert_array_equal(ds["cloudmask"].values, expected)
    assert ds.encoding["source"] == [str(cloudy)]


def test_composite_with_an_estimated_mask_warns(small_scene):
    small_scene["cloudmask"] = estimate_cloudmask(small_scene["cloudy"])
    with pytest.warns(M3RCRWarning, match=r"decloud\(composite=True\) uses an estimated"):
        m3rcr_xr.decloud(
            small_scene, "dsen2_cr", "untrained", config={"preset": "small"}, composite=True
        )
    small_scene["cloudmask"].attrs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", M3RCRWarning)
        m3rcr_xr.decloud(
            small_scene, "dsen2_cr", "untrained", config={"preset": "small"}, composite=True
        )


#: measured IoU on the two samples: 0.693 (test/summer_33_p_1), 0.553 (train/fall_1_p_457)
IOU_FLOOR = {"test/summer_33_p_1": 0.66, "train/fall_1_p_457": 0.52}


def test_estimate_agrees_with_the_dataset_masks(samples_dir):
    table = agreement_table(samples_dir)
    assert set(table) == set(IOU_FLOOR)
    for patch, row in table.items():
        assert row["iou"] >= IOU_FLOOR[patch], (patch, row)


def test_cli_ingest_reads_a_udm2(udm2_scene, tmp_path):
    cloudy, udm2, blackfill = udm2_scene
    dest = tmp_path / "scene.zarr"
    argv = ["ingest", str(cloudy), str(dest), "--cloudmask", str(udm2)]
    assert cli.main([*argv, "--udm2-classes", "cloud,light_haze"]) == 0
    ds = m3rcr_xr.open_zarr(dest)
    np.testing.assert_array_equal(ds["cloudmask"].values, stripes("cloud", "light_haze"))
    assert (ds["cloudy"].values[:, blackfill] == 0).all()


def test_cli_ingest_refuses_an_unknown_udm2_class(udm2_scene, tmp_path, capsys):
    cloudy, udm2, _ = udm2_scene
    argv = ["ingest", str(cloudy), str(tmp_path / "s.zarr"), "--cloudmask", str(udm2)]
    assert cli.main([*argv, "--udm2-classes", "cloud,fog"]) == 2
    assert "--udm2-classes" in capsys.readouterr().err
    assert not (tmp_path / "s.zarr").exists()


def _other_masks(tmp_path) -> dict[str, tuple[str | None, str]]:
    """Cloud masks that are not a UDM2, with what the refusal says about each."""
    ones = np.ones(SHAPE, np.uint8)
    npy = tmp_path / "mask.npy"
    np.save(npy, ones.astype(bool))
    tif = write_raster(tmp_path / "mask.tif", ones[None], OPTICAL_GRID, CRS)
    return {
        "none": (None, "there is no cloud mask"),
        "estimate": ("estimate", "the cloud mask is estimated"),
        ".npy": (str(npy), f"{npy} is not one (8 bands of uint8)"),
        "1-band GeoTIFF": (str(tif), f"{tif} is not one (8 bands of uint8)"),
    }


@pytest.mark.parametrize("kind", ["none", "estimate", ".npy", "1-band GeoTIFF"])
def test_udm2_classes_without_a_udm2_are_refused_not_ignored(udm2_scene, tmp_path, capsys, kind):
    cloudy = udm2_scene[0]
    mask, why = _other_masks(tmp_path)[kind]
    with pytest.raises(
        UsageError,
        match=re.escape(f"udm2_classes=('cloud',): only with a Planet UDM2 cloud mask; {why}"),
    ):
        m3rcr_xr.open_quartet(cloudy, cloudmask=mask, udm2_classes=("cloud",))
    dest = tmp_path / "s.zarr"
    argv = ["ingest", str(cloudy), str(dest), *(["--cloudmask", mask] if mask else [])]
    assert cli.main([*argv, "--udm2-classes", "cloud,shadow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--udm2-classes cloud,shadow: only with a Planet UDM2 cloud mask; {why}")
    assert len(err.splitlines()) == 1 and not dest.exists()


def test_stac_udm2_classes_without_a_udm2_asset_are_refused():
    scene = m3rcr_xr.synthetic_scene((32, 32))
    assert m3rcr_xr.stac.with_cloudmask(scene) is scene
    with pytest.raises(UsageError, match="udm2_classes=.*the optical items have no 'udm2' asset"):
        m3rcr_xr.stac.with_cloudmask(scene, ["cloud"])


def test_cli_ingest_estimates_a_mask(tmp_path):
    cloudy = write_optical(tmp_path / "cloudy.tif", np.full((4, *SHAPE), 900, np.uint16))
    dest = tmp_path / "scene.zarr"
    with pytest.warns(M3RCRWarning, match="estimated"):
        assert cli.main(["ingest", str(cloudy), str(dest), "--cloudmask", "estimate"]) == 0
    mask = m3rcr_xr.open_zarr(dest)["cloudmask"]
    assert mask.attrs["estimated"] == 1
    assert not mask.values.any()
