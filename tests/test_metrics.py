"""Metrics: golden parity with the reference, chunk independence, one lazy pass, bad input."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.enums import Resampling

import m3rcr_xr
from m3rcr_xr import M3RCRWarning, SchemaError, UsageError, metrics
from m3rcr_xr.landcover import class_names
from m3rcr_xr.normalize import normalize_sar
from m3rcr_xr.testing import raise_if_dask_computes
from tests.conftest import geotiff_scene
from tests.metrics_scenes import (
    TINY_DECLOUD,
    assert_same_result,
    make_scene,
    merged_stores,
    scene_stores,
)

BANDS = ["blue", "green", "red", "nir"]
SAMPLES = {
    "summer_33_p_1": ("test", "one_test_sample.csv"),
    "fall_1_p_457": ("train", "one_train_sample.csv"),
}


# ------------------------------------------------------------------------------ helpers
def reference_like(ds: xr.Dataset, pred: str = "decloud") -> dict[str, float]:
    """Whole-scene MAE, PSNR and n over valid pixels, straight from NumPy."""
    t = ds.cloudfree.values.astype("float32")
    p = ds[pred].values.astype("float32")
    valid = (t != 0).all(axis=0)
    pn = np.clip(p, 0, 10000) / np.float32(10000)
    tn = np.clip(t, 0, 10000) / np.float32(10000)
    err = (pn - tn)[:, valid].astype("float64")
    return {
        "MAE": np.abs(err).mean(),
        "PSNR": -10 * np.log10((err**2).mean()),
        "n": int(valid.sum()),
    }


# ---------------------------------------------------------------------- golden parity
def _read_sample(samples_dir: Path, sample: str) -> tuple[xr.Dataset, np.ndarray]:
    split, listing = SAMPLES[sample]
    row = next(csv.reader((samples_dir / listing).open()))
    cloudfree, cloudy, sar, landcover, cloudmask = (samples_dir / split / p for p in row)

    def read(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
        with rasterio.open(path) as src:
            if shape is None:
                return src.read()
            return src.read(out_shape=(src.count, *shape), resampling=Resampling.nearest)

    target = read(cloudfree)
    affine = np.clip(0.9 * (target.astype("float32") / 10000) + 0.02, 0, 1) * 10000
    ds = xr.Dataset(
        {
            "cloudfree": (("band", "y", "x"), target),
            "cloudy": (("band", "y", "x"), read(cloudy)),
            "affine": (("band", "y", "x"), affine.astype("float32")),
            "landcover": (("y", "x"), read(landcover, (300, 300))[0]),
            "cloudmask": (("y", "x"), np.load(cloudmask)),
        },
        coords={"band": BANDS},
    )
    return ds, read(sar, (300, 300)).astype("float32")


def _close(actual: float, expected: float) -> bool:
    return abs(actual - expected) <= 1e-6 * abs(expected)


def _compare(golden: dict, by_level: dict[int, xr.Dataset]) -> list[str]:
    overall = by_level[1].sel(stratum="all", landcover_class="all")
    values = {name: float(overall[name]) for name in ("PSNR", "SSIM", "SAM", "MAE")}
    values["PSNR_cloudy_pixels"] = float(
        by_level[1].PSNR.sel(stratum="cloudy", landcover_class="all")
    )
    bad = [f"{k}: {v!r} != {golden[k]!r}" for k, v in values.items() if not _close(v, golden[k])]
    for level, result in by_level.items():
        per_class = result.sel(stratum="all").drop_sel(landcover_class="all")
        assert list(per_class.landcover_class.values) == list(class_names(level))
        for name in ("MAE", "SAM"):
            key = f"{name}_by_class_level{level}"
            for got, want in zip(per_class[name].values, golden[key], strict=True):
                if (want is None) != bool(np.isnan(got)) or (
                    want is not None and not _close(float(got), want)
                ):
                    bad.append(f"{key}: {per_class[name].values.tolist()} != {golden[key]}")
                    break
    return bad


@pytest.mark.parametrize("sample", list(SAMPLES))
def test_golden_parity_on_both_real_samples(shared_dir, sample):
    golden = json.loads((shared_dir / "reference/golden/metrics.json").read_text())[sample]
    ds, sar = _read_sample(shared_dir / "data/m3rcr-samples", sample)
    # the inputs are built as the reference builds them: SAR (and land cover) by nearest
    sar_n = normalize_sar(sar, axis=0).astype("float64")
    np.testing.assert_allclose(
        sar_n.mean(axis=(1, 2)), golden["sar_normalized_mean_per_channel"], rtol=1e-6
    )
    np.testing.assert_allclose(sar_n[:, 150, 150], golden["sar_normalized_center_pixel"], rtol=1e-6)
    failures = []
    for crop, window in (("full300", slice(None)), ("center160", slice(70, 230))):
        scene = ds.isel(y=window, x=window)
        for case, pred in (("identity_cloudy", "cloudy"), ("affine_cloudfree", "affine")):
            by_level = {
                level: metrics.evaluate(scene, pred, "cloudfree", level=level) for level in (1, 2)
            }
            failures += [
                f"{crop}/{case} {msg}" for msg in _compare(golden[f"{crop}/{case}"], by_level)
            ]
    assert not failures, "\n".join(failures)


def test_golden_parity_holds_in_small_chunks(shared_dir):
    golden = json.loads((shared_dir / "reference/golden/metrics.json").read_text())
    ds, _ = _read_sample(shared_dir / "data/m3rcr-samples", "fall_1_p_457")
    chunked = ds.chunk(y=64, x=64)
    by_level = {
        level: metrics.evaluate(chunked, "cloudy", "cloudfree", level=level) for level in (1, 2)
    }
    assert not _compare(golden["fall_1_p_457"]["full300/identity_cloudy"], by_level)


# --------------------------------------------------------------------- scene results
def test_result_layout_and_table():
    ds = make_scene()
    result = metrics.evaluate(ds, level=2)
    assert set(result.data_vars) == {*metrics.METRICS, "n_pixels", "n_nodata"}
    assert result.PSNR.dims == ("stratum", "landcover_class")
    assert list(result.stratum.values) == ["all", "cloudy", "clear"]
    assert list(result.landcover_class.values) == [*class_names(2), "all"]
    table = result.to_dataframe()
    assert len(table) == 3 * 12 and {"PSNR", "n_pixels"} <= set(table.columns)
    n = result.n_pixels
    assert int(n.sel(stratum="all", landcover_class="all")) == int(
        n.sel(stratum="cloudy", landcover_class="all")
        + n.sel(stratum="clear", landcover_class="all")
    )


def test_pooled_values_match_a_direct_computation_and_exclude_nodata():
    ds = make_scene(nodata=0.1, seed=4)
    ds["decloud"] = ds.decloud.where(ds.cloudfree != 0, 60000.0)  # wild values on nodata
    expected = reference_like(ds)
    result = metrics.evaluate(ds)
    overall = result.sel(stratum="all", landcover_class="all")
    np.testing.assert_allclose(float(overall.MAE), expected["MAE"], rtol=1e-6)
    np.testing.assert_allclose(float(overall.PSNR), expected["PSNR"], rtol=1e-6)
    n_nodata = ds.sizes["y"] * ds.sizes["x"] - expected["n"]
    assert int(overall.n_pixels) == expected["n"] == result.attrs["n_valid_pixels"]
    assert result.attrs["n_nodata_pixels"] == n_nodata == int(overall.n_nodata)
    assert result.attrs["n_pixels_total"] == ds.sizes["y"] * ds.sizes["x"]


def test_integer_prediction_zeros_are_nodata_too():
    ds = make_scene(nodata=0.0, seed=5)
    cloudy = ds.cloudfree.copy(data=ds.cloudfree.values // 2 + 1)
    cloudy[:, :3, :] = 0
    ds["cloudy"] = cloudy
    result = metrics.evaluate(ds, "cloudy")
    assert result.attrs["n_nodata_pixels"] == 3 * ds.sizes["x"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_prediction_on_target_nodata_is_allowed(bad):
    ds = make_scene(nodata=0.1, seed=6)
    with_bad = ds.assign(decloud=ds.decloud.where(ds.cloudfree != 0, bad))
    assert_same_result(metrics.evaluate(with_bad), metrics.evaluate(ds))


def test_infinite_target_is_nodata_like_nan():
    ds = make_scene(nodata=0.0, seed=21)
    target = ds.cloudfree.astype("float32")
    with_inf = ds.assign(cloudfree=target.where(ds.x != ds.x[4], np.inf))
    with_nan = ds.assign(cloudfree=target.where(ds.x != ds.x[4]))
    result = metrics.evaluate(with_inf)
    assert result.attrs["n_nodata_pixels"] == ds.sizes["y"]
    assert_same_result(result, metrics.evaluate(with_nan))


def _landcover_with_unknown_codes(ds: xr.Dataset) -> tuple[xr.Dataset, int, int]:
    """``ds`` with codes 7 and 255 (not WorldCover) in two columns; the valid pixels of
    those codes and of nodata 0."""
    landcover = ds.landcover.copy(data=ds.landcover.values.copy())
    landcover[:, 3] = 7
    landcover[:, 9] = 255
    valid = (ds.cloudfree != 0).all("band")
    unknown = int((valid & landcover.isin([7, 255])).sum())
    nodata = int((valid & (landcover == 0)).sum())
    return ds.assign(landcover=landcover), unknown, nodata


@pytest.mark.parametrize("lazy", [False, True])
def test_landcover_nodata_and_unknown_codes_are_counted_not_lost(lazy):
    ds, unknown, nodata = _landcover_with_unknown_codes(make_scene(nodata=0.05, seed=22))
    ds = ds.chunk(y=16, x=16) if lazy else ds
    with pytest.warns(M3RCRWarning, match=f"landcover: {unknown} valid pixel.*not ESA WorldCover"):
        result = metrics.evaluate(ds, level=2)
    assert unknown > 0 and nodata > 0
    assert result.attrs["n_landcover_unknown_pixels"] == unknown
    assert result.attrs["n_landcover_nodata_pixels"] == nodata
    n = result.n_pixels.sel(stratum="all")
    in_classes = int(n.drop_sel(landcover_class="all").sum())
    assert in_classes + unknown + nodata == int(n.sel(landcover_class="all"))


def test_landcover_counts_per_patch_and_without_landcover():
    ds, unknown, nodata = _landcover_with_unknown_codes(make_scene(seed=23, patches=2))
    with pytest.warns(M3RCRWarning, match="not ESA WorldCover"):
        result = metrics.evaluate(ds, protocol="per_patch")
    assert result.attrs["n_landcover_unknown_pixels"] == unknown
    assert result.attrs["n_landcover_nodata_pixels"] == nodata
    without = metrics.evaluate(ds, landcover=None)
    assert "n_landcover_unknown_pixels" not in without.attrs


def test_without_landcover_or_cloudmask_only_all_remains():
    ds = make_scene(seed=8).drop_vars(["landcover", "cloudmask"])
    result = metrics.evaluate(ds, landcover=None, strata=("all",))
    assert result.PSNR.shape == (1, 1)
    full = metrics.evaluate(make_scene(seed=8))
    np.testing.assert_allclose(
        float(result.PSNR[0, 0]), float(full.PSNR.sel(stratum="all", landcover_class="all"))
    )


# ------------------------------------------------------------------------- collections
def test_per_patch_protocol_equals_a_loop_over_patches():
    ds = make_scene((40, 44), seed=15, patches=5, crs=None)
    ds["decloud"][2] = ds.cloudfree[2]  # a perfect patch: PSNR 100 as in the reference
    summary = metrics.evaluate(ds.chunk(patch=2, y=16), protocol="per_patch")
    per_patch = metrics.evaluate_per_patch(ds.chunk(patch=2, y=16))
    loop = [metrics.evaluate(ds.isel(patch=i)) for i in range(ds.sizes["patch"])]
    for name in metrics.METRICS:
        stacked = np.stack([r[name].values for r in loop])
        np.testing.assert_allclose(per_patch[name].values, stacked, rtol=1e-12, equal_nan=True)
        counts = np.isfinite(stacked).sum(axis=0)
        with np.errstate(invalid="ignore"):
            mean = np.where(counts > 0, np.nansum(stacked, axis=0) / counts, np.nan)
        np.testing.assert_allclose(summary[name].values, mean, rtol=1e-12, equal_nan=True)
    assert float(per_patch.PSNR.sel(stratum="all", landcover_class="all")[2]) == 100.0
    assert summary.n_pixels.sel(stratum="all", landcover_class="all") == sum(
        int(r.n_pixels.sel(stratum="all", landcover_class="all")) for r in loop
    )


def test_return_per_patch_still_works_but_is_deprecated():
    ds = make_scene((24, 28), seed=15, patches=2)
    with pytest.warns(DeprecationWarning, match="evaluate_per_patch"):
        summary, table = metrics.evaluate(ds, protocol="per_patch", return_per_patch=True)
    assert_same_result(summary, metrics.evaluate(ds, protocol="per_patch"))
    assert_same_result(table, metrics.evaluate_per_patch(ds))
    assert int(summary.n_patches.sel(stratum="all", landcover_class="all")) == 2
    with pytest.warns(DeprecationWarning), pytest.raises(UsageError, match="needs protocol"):
        metrics.evaluate(ds, return_per_patch=True)


def test_pooled_collection_keeps_patches_apart_in_ssim():
    ds = make_scene((40, 44), seed=16, patches=3, crs=None)
    pooled = metrics.evaluate(ds)
    loop = [metrics.evaluate(ds.isel(patch=i), level=1) for i in range(3)]
    n = sum(r.n_pixels for r in loop)
    ssim = sum((r.SSIM * r.n_pixels).fillna(0) for r in loop) / n.where(n > 0)
    np.testing.assert_allclose(pooled.SSIM.values, ssim.values, rtol=1e-12, equal_nan=True)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_nan_or_infinite_predictions_are_refused(lazy, bad):
    """A prediction NaN or infinite everywhere is refused; NaN in every band of some
    pixels is nodata (decloud's), infinite values where the target has data are not."""
    ds = make_scene(seed=19)
    all_bad = ds.assign(decloud=ds.decloud * 0 + bad)
    some_bad = ds.assign(decloud=ds.decloud.where(ds.x != ds.x[5], bad))
    if lazy:
        all_bad, some_bad = all_bad.chunk(y=16, x=16), some_bad.chunk(y=16, x=16)
    with pytest.raises(SchemaError, match="'decloud' is all NaN or infinite"):
        metrics.evaluate(all_bad)
    n_bad = int((ds.cloudfree.isel(x=5) != 0).all("band").sum())
    if np.isnan(bad):
        assert metrics.evaluate(some_bad).attrs["n_pred_nodata_pixels"] == ds.sizes["y"]
        return
    with pytest.raises(
        SchemaError, match=rf"NaN or infinite at {n_bad} pixel\(s\) where the target 'cloudfree'"
    ):
        metrics.evaluate(some_bad)


def test_bad_arguments_are_refused():
    ds = make_scene(seed=20)
    with pytest.raises(UsageError, match="protocol='mean'"):
        metrics.evaluate(ds, protocol="mean")
    with pytest.raises(UsageError, match="strata"):
        metrics.evaluate(ds, strata=("all", "hazy"))
    with pytest.raises(UsageError, match="level=3"):
        metrics.evaluate(ds, level=3)
    with pytest.raises(SchemaError, match="needs a collection"):
        metrics.evaluate(ds, protocol="per_patch")
    with pytest.raises(SchemaError, match="mismatched|do not match"):
        metrics.evaluate(ds, ds.decloud.assign_coords(band=["a", "b", "c", "d"]))


# --------------------------------------------------------------- accessor, CLI, output
def test_accessor_calls_evaluate():
    ds = make_scene(seed=21)
    assert_same_result(ds.m3rcr.evaluate(level=2), metrics.evaluate(ds, level=2))


def test_cli_prints_the_table_and_writes_csv_and_json(tmp_path, capsys):
    import pandas as pd

    from m3rcr_xr import cli, to_zarr

    ds = make_scene(seed=22)
    store = tmp_path / "scene.zarr"
    to_zarr(ds, store)
    expected = metrics.evaluate(ds, level=2)
    assert cli.main(["evaluate", str(store), "--level", "2", "--out", str(tmp_path / "m.csv")]) == 0
    assert "tree cover" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "m.csv")
    np.testing.assert_allclose(table.PSNR, expected.PSNR.values.ravel(), rtol=1e-12)
    assert cli.main(["evaluate", str(store), "--out", str(tmp_path / "m.json")]) == 0
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["attrs"]["n_nodata_pixels"] == expected.attrs["n_nodata_pixels"]
    assert len(written["rows"]) == 3 * 8
    assert cli.main(["evaluate", str(store), "--pred", "nope"]) == 2
    said = capsys.readouterr().err  # a name mistyped: no hint of a store left out
    assert "--pred nope: variable 'nope' is missing from the dataset (have [" in said
    assert "DECLOUD.zarr" not in said


def test_on_a_distributed_cluster_errors_and_values_come_back():
    distributed = pytest.importorskip("distributed")
    ds = make_scene(seed=23).chunk(y=24, x=28)
    expected = metrics.evaluate(ds)
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0"
    ):
        assert_same_result(metrics.evaluate(ds), expected)
        with pytest.raises(SchemaError, match="all NaN"):
            metrics.evaluate(ds.assign(decloud=ds.decloud * np.nan))


@pytest.mark.parametrize("lazy", [False, True])
def test_nan_prediction_is_nodata_excluded_and_counted(lazy):
    """decloud's nodata (NaN in every band where ``cloudy`` had none) is excluded as if
    the scene were cropped to the valid area, and counted."""
    ds = make_scene(nodata=0.0, seed=23)
    border = ds.assign(decloud=ds.decloud.where(ds.x > ds.x[4]))
    border = border.chunk(y=16, x=16) if lazy else border
    result = metrics.evaluate(border)
    cropped = metrics.evaluate(ds.isel(x=slice(5, None)))
    for name in metrics.METRICS:
        np.testing.assert_allclose(result[name], cropped[name], rtol=1e-5, err_msg=name)
    n_border = 5 * ds.sizes["y"]
    assert result.attrs["n_pred_nodata_pixels"] == result.attrs["n_nodata_pixels"] == n_border
    assert cropped.attrs["n_pred_nodata_pixels"] == 0


def test_nan_in_some_bands_where_the_target_has_data_is_still_an_error():
    ds = make_scene(nodata=0.0, seed=24)
    partial = ds.decloud.copy(data=ds.decloud.values.copy())
    partial[0, 2, 3] = np.nan
    with pytest.raises(SchemaError, match="NaN or infinite"):
        metrics.evaluate(ds.assign(decloud=partial))


# ------------------------------------------------------------- a prediction's own scene
@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    return scene_stores(tmp_path_factory.mktemp("pairing"))


def _another_input(target: str, store: Path) -> str:
    return re.escape(
        f"pred='decloud': the prediction was made from another input than the target "
        f"{target!r} of {store} (its input_fingerprint differs)"
    )


def test_a_prediction_of_another_scene_is_refused_before_any_work(stores):
    """Scene B on scene A's grid merges with the decloud store of A: its PSNR would be
    that of another scene's prediction. Refused, in either order of the stores, and
    for a lazy prediction of A given with B's target."""
    refused = _another_input("cloudfree", stores["b"])
    for paths in ((stores["b"], stores["decloud_a"]), (stores["decloud_a"], stores["b"])):
        with raise_if_dask_computes(), pytest.raises(SchemaError, match=refused):
            metrics.evaluate(merged_stores(*paths))
    lazy = m3rcr_xr.decloud(m3rcr_xr.open_zarr(stores["a"]), **TINY_DECLOUD)
    with raise_if_dask_computes(), pytest.raises(SchemaError, match=refused):
        metrics.evaluate(
            None, lazy, m3rcr_xr.open_zarr(stores["b"]).cloudfree, landcover=None, strata=("all",)
        )
    right = metrics.evaluate(merged_stores(stores["a"], stores["decloud_a"]), strata=("all",))
    assert right.attrs["n_valid_pixels"] == 64 * 64


def test_a_prediction_of_the_same_files_ingested_again_is_scored(tmp_path):
    """The same files ingested again make a store of the same fingerprint: the
    prediction of one is scored against the other; not once the files changed."""
    files = geotiff_scene(tmp_path, 100)
    for name in ("first", "again"):
        m3rcr_xr.to_zarr(m3rcr_xr.open_quartet(**files), tmp_path / f"{name}.zarr")
    estimate = m3rcr_xr.decloud(m3rcr_xr.open_zarr(tmp_path / "first.zarr"), **TINY_DECLOUD)
    m3rcr_xr.to_zarr(estimate.to_dataset(), tmp_path / "decloud.zarr")
    scored = {"target": "cloudy", "landcover": None, "strata": ("all",)}
    ds = merged_stores(tmp_path / "again.zarr", tmp_path / "decloud.zarr")
    assert metrics.evaluate(ds, **scored).attrs["n_valid_pixels"] == 64 * 48
    geotiff_scene(tmp_path, 200)  # the same files, corrected
    m3rcr_xr.to_zarr(m3rcr_xr.open_quartet(**files), tmp_path / "changed.zarr")
    ds = merged_stores(tmp_path / "changed.zarr", tmp_path / "decloud.zarr")
    with pytest.raises(SchemaError, match=_another_input("cloudy", tmp_path / "changed.zarr")):
        metrics.evaluate(ds, **scored)


def test_no_pairing_is_checked_where_either_side_is_unknown(stores, tmp_path):
    """A prediction of a scene in memory, a target in memory, a prediction written
    with its target in one store: nothing tells another scene, nothing is refused."""
    b = m3rcr_xr.open_zarr(stores["b"])
    of_memory = m3rcr_xr.decloud(m3rcr_xr.synthetic_scene((64, 64), seed=1), **TINY_DECLOUD)
    assert "input_fingerprint" not in of_memory.attrs
    metrics.evaluate(b.assign(decloud=of_memory), strata=("all",))
    decloud_a = m3rcr_xr.open_zarr(stores["decloud_a"]).decloud
    metrics.evaluate(None, decloud_a, b.cloudfree.drop_encoding(), landcover=None, strata=("all",))
    together = merged_stores(stores["a"], stores["decloud_a"])
    m3rcr_xr.to_zarr(together, tmp_path / "together.zarr")
    metrics.evaluate(m3rcr_xr.open_zarr(tmp_path / "together.zarr"), strata=("all",))


def test_a_prediction_as_target_is_compared_by_the_input_it_was_made_from(stores, tmp_path):
    """Two predictions of scene A are scored against each other; one of scene B
    against one of scene A is refused."""
    for name, scene in (("tta", "a"), ("decloud_b", "b")):
        estimate = m3rcr_xr.decloud(m3rcr_xr.open_zarr(stores[scene]), **TINY_DECLOUD)
        m3rcr_xr.to_zarr(estimate.rename(name).to_dataset(), tmp_path / f"{name}.zarr")
    alone = {"landcover": None, "strata": ("all",)}
    ds = merged_stores(stores["decloud_a"], tmp_path / "tta.zarr", tmp_path / "decloud_b.zarr")
    assert metrics.evaluate(ds, "decloud", "tta", **alone).PSNR.notnull().all()
    with pytest.raises(SchemaError, match=_another_input("decloud_b", tmp_path / "decloud_b.zarr")):
        metrics.evaluate(ds, "decloud", "decloud_b", **alone)
