"""Semantic metrics (m3rcr_xr/metrics/semantic.py): scores, chunking, one pass, errors."""

from __future__ import annotations

import functools
import re

import dask
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, jaccard_score

import m3rcr_xr
from m3rcr_xr import CheckpointError, ModelConfigError, SchemaError, UsageError
from m3rcr_xr.classify import classify
from m3rcr_xr.cli import main
from m3rcr_xr.landcover import IGNORE_INDEX, class_names, ignored_classes, worldcover_labels
from m3rcr_xr.metrics import evaluate, evaluate_semantic, semantic_metrics
from m3rcr_xr.testing import CountingScheduler, classifier_checkpoint, raise_if_dask_computes
from tests.metrics_scenes import merged_stores, scene_stores

SMALL = {"preset": "small"}
#: WorldCover codes, nodata and a code that is not WorldCover
CODES = np.array([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100, 7], dtype=np.uint8)


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> dict[int, str]:
    """Small land-cover U-Nets with seeded weights that give several classes, by level."""
    folder = tmp_path_factory.mktemp("classifiers")
    return {
        level: str(classifier_checkpoint(folder / f"unet-{level}.pt", level=level, **SMALL))
        for level in (1, 2)
    }


@pytest.fixture
def scene() -> xr.Dataset:
    """A 64 x 64 lazy scene (one chunk; clouds on 370 pixels) with a prediction, and
    nodata in the target and in the land cover."""
    ds = m3rcr_xr.synthetic_scene((64, 64), seed=6, chunks=64)
    decloud = (ds.cloudy.astype("float32") + ds.cloudfree) / 2
    cloudfree = ds.cloudfree.where(ds.x != ds.x[3], 0).astype("uint16")  # a nodata column
    landcover = ds.landcover.where(ds.y != ds.y[5], 0).astype("uint8")  # a nodata row
    return ds.assign(decloud=decloud, cloudfree=cloudfree, landcover=landcover)


def random_labels(seed: int, shape: tuple[int, ...], level: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    k = len(class_names(level))
    labels = rng.integers(0, k, shape).astype(np.uint8)
    labels[rng.random(shape) < 0.1] = IGNORE_INDEX
    codes = rng.choice(CODES, shape)
    return labels, codes, rng.random(shape) < 0.4


def _sklearn(labels: np.ndarray, codes: np.ndarray, keep: np.ndarray, level: int) -> dict:
    true = worldcover_labels(codes, level)
    keep = keep & (labels != IGNORE_INDEX) & (true != IGNORE_INDEX)
    y_true, y_pred = true[keep], labels[keep]
    classes = list(range(len(class_names(level))))
    options = {"labels": classes, "average": None, "zero_division": 0}
    absent = ~np.isin(classes, np.concatenate([y_true, y_pred]))  # ours: NaN, not 0
    absent |= np.isin(class_names(level), ignored_classes(level))  # never judged: NaN
    return {
        "confusion": confusion_matrix(y_true, y_pred, labels=classes),
        "OA": accuracy_score(y_true, y_pred),
        "IoU": np.where(absent, np.nan, jaccard_score(y_true, y_pred, **options)),
        "F1": np.where(absent, np.nan, f1_score(y_true, y_pred, **options)),
    }


@pytest.mark.parametrize("level", [1, 2])
def test_scores_equal_scikit_learn(level):
    labels, codes, cloud = random_labels(level, (2, 40, 30), level)
    dims = ("patch", "y", "x")
    result = semantic_metrics(
        xr.DataArray(labels, dims=dims),
        xr.DataArray(codes, dims=dims),
        xr.DataArray(cloud, dims=dims),
        level=level,
    )
    for stratum, keep in (("all", np.ones_like(cloud)), ("cloudy", cloud), ("clear", ~cloud)):
        expected = _sklearn(labels, codes, keep, level)
        got = result.sel(stratum=stratum)
        np.testing.assert_array_equal(got.confusion.values, expected["confusion"])
        assert got.confusion.dtype == np.int64
        assert float(got.OA) == pytest.approx(expected["OA"], rel=1e-12)
        np.testing.assert_allclose(got.IoU.values, expected["IoU"], rtol=1e-12)
        np.testing.assert_allclose(got.F1.values, expected["F1"], rtol=1e-12)
        assert float(got.mIoU) == pytest.approx(np.nanmean(expected["IoU"]), rel=1e-12)
    true = worldcover_labels(codes, level)
    assert result.attrs["n_landcover_nodata_pixels"] == int((codes == 0).sum())
    ignored = (true == IGNORE_INDEX) & (codes != 0)
    assert result.attrs["n_landcover_ignored_pixels"] == int(ignored.sum())
    assert int(result.n_labelled.sel(stratum="all")) == int(
        ((labels != IGNORE_INDEX) & (true != IGNORE_INDEX)).sum()
    )


def test_a_class_absent_from_truth_and_prediction_has_no_iou():
    labels = xr.DataArray(np.array([[0, 0], [1, 255]], "uint8"), dims=("y", "x"))
    codes = xr.DataArray(np.array([[10, 20], [20, 70]], "uint8"), dims=("y", "x"))
    result = semantic_metrics(labels, codes, level=1).sel(stratum="all")
    iou = result.IoU.to_series()
    assert iou["forest land"] == pytest.approx(0.5) and iou["rangeland"] == pytest.approx(0.5)
    assert iou.drop(["forest land", "rangeland"]).isna().all()
    assert float(result.mIoU) == pytest.approx(0.5)
    assert float(result.OA) == pytest.approx(2 / 3)
    assert result.attrs["n_landcover_ignored_pixels"] == 1  # 70 is "unknown" at level 1


def test_pixels_predicted_unknown_are_errors_and_unknown_is_not_averaged():
    """Level 1's "unknown" is never a true label: predicting it is an error of the true
    class, and its own IoU (0 by construction) does not enter mIoU."""
    codes = xr.DataArray(np.array([[10, 10], [20, 20]], "uint8"), dims=("y", "x"))
    perfect = worldcover_labels(codes.values, 1)
    one_unknown = perfect.copy()
    one_unknown[0, 0] = class_names(1).index("unknown")
    result = semantic_metrics(xr.DataArray(one_unknown, dims=("y", "x")), codes, level=1)
    iou = result.sel(stratum="all").IoU.to_series()
    assert iou["forest land"] == pytest.approx(0.5) and iou["rangeland"] == 1.0
    assert np.isnan(iou["unknown"])
    assert float(result.sel(stratum="all").mIoU) == pytest.approx(0.75)
    assert float(result.sel(stratum="all").OA) == pytest.approx(0.75)


@settings(max_examples=8, deadline=None)
@given(
    chunk_y=st.integers(8, 40),
    chunk_x=st.integers(8, 40),
    level=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_semantic_metrics_do_not_depend_on_the_chunking(chunk_y, chunk_x, level, seed):
    labels, codes, cloud = random_labels(seed, (37, 41), level)
    arrays = [xr.DataArray(a, dims=("y", "x")) for a in (labels, codes, cloud)]
    expected = semantic_metrics(*arrays, level=level)
    lazy = [a.chunk({"y": chunk_y, "x": chunk_x}) for a in arrays]
    lazy[1] = lazy[1].chunk({"y": chunk_x})  # the inputs need not share their chunks
    with raise_if_dask_computes(1):
        got = semantic_metrics(*lazy, level=level)
    xr.testing.assert_identical(got, expected)


def test_labels_out_of_range_are_refused():
    codes = xr.DataArray(np.full((4, 4), 10, "uint8"), dims=("y", "x"))
    with pytest.raises(SchemaError, match="labels: 4 pixel.*level 1 .*0..6"):
        semantic_metrics(xr.DataArray(np.eye(4, dtype="uint8") * 9, dims=("y", "x")), codes)
    labels = xr.DataArray(np.zeros((4, 4), "uint8"), dims=("y", "x"), attrs={"level": 2})
    with pytest.raises(UsageError, match="labels of WorldCover level 2, not level=1"):
        semantic_metrics(labels, codes, level=1)
    with pytest.raises(UsageError, match="need a cloud mask"):
        semantic_metrics(labels, codes, level=2, strata=("cloudy",))


def test_negative_labels_are_refused_as_out_of_range():
    codes = xr.DataArray(np.full((2, 2), 10, "uint8"), dims=("y", "x"))
    labels = xr.DataArray(np.array([[0, -1], [1, 255]], "int16"), dims=("y", "x"))
    with pytest.raises(SchemaError, match="labels: 1 pixel.*level 1 .*0..6"):
        semantic_metrics(labels, codes, level=1)


@pytest.mark.parametrize("chunks", [None, 1])
def test_fractional_labels_are_refused_not_truncated(chunks):
    """A labelling resampled bilinearly is no labelling: 1.9 is not class 1."""
    codes = xr.DataArray(np.array([[10, 20], [40, 50]], "uint8"), dims=("y", "x"))
    labels = xr.DataArray(np.array([[0.0, 1.9], [2.5, 3.0]]), dims=("y", "x"))
    if chunks:
        codes, labels = codes.chunk(chunks), labels.chunk(chunks)
    with pytest.raises(SchemaError, match="labels: 2 pixel.*no whole numbers"):
        semantic_metrics(labels, codes, level=1).compute()
    whole = semantic_metrics(labels.round(), codes, level=1)
    assert int(whole.n_labelled.sel(stratum="all")) == 4


@pytest.mark.parametrize("chunks", [None, 2])
def test_land_cover_values_that_are_no_code_are_ignored_and_nan_is_nodata(chunks):
    values = np.array([[10, 300, -1], [10.5, np.nan, 20]], "float32")
    landcover = xr.DataArray(values, dims=("y", "x"))
    labels = xr.DataArray(np.zeros((2, 3), "uint8"), dims=("y", "x"))
    if chunks:
        landcover, labels = landcover.chunk(chunks), labels.chunk(chunks)
    result = semantic_metrics(labels, landcover, level=1)
    assert result.attrs["n_landcover_nodata_pixels"] == 1  # NaN
    assert result.attrs["n_landcover_ignored_pixels"] == 3  # 300, -1 and 10.5
    assert float(result.OA.sel(stratum="all")) == 0.5  # tree right, grassland (1) wrong
    wide = landcover.fillna(0).astype("int16")  # 300 and -1 as a signed integer file has them
    attrs = semantic_metrics(labels, wide, level=1).attrs
    assert (attrs["n_landcover_ignored_pixels"], attrs["n_landcover_nodata_pixels"]) == (2, 1)


def test_evaluate_semantic_is_one_lazy_pass(scene, classifiers):
    scene = scene.chunk(32)
    kwargs = {"classifier": classifiers[1], "classifier_config": SMALL, "tile": 32}
    with raise_if_dask_computes():
        lazy = evaluate_semantic(scene, compute=False, **kwargs)
    assert lazy.OA.chunks is not None
    counter = CountingScheduler(max_computes=1)
    with dask.config.set(scheduler=counter):
        result = evaluate_semantic(scene, **kwargs)
    assert counter.total_computes == 1
    assert list(result.source.values) == ["pred", "target", "cloudy"]
    assert result.confusion.dims == ("source", "stratum", "true_class", "predicted_class")
    assert result.IoU.dims == ("source", "stratum", "landcover_class")
    assert set(lazy) == set(result) and "n_nodata_pixels" not in lazy.attrs
    assert result.attrs["n_nodata_pixels"] == 64  # the nodata column of the target
    assert result.attrs["n_landcover_nodata_pixels"] == 63  # the nodata row, less one
    assert result.attrs["classifier"] == "landcover_unet"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("lazy", [True, False])
def test_a_prediction_not_finite_in_some_band_is_refused_as_by_evaluate(
    scene, classifiers, bad, lazy
):
    decloud = scene.decloud.where((scene.band != "green") | (scene.y > scene.y[8]), bad)
    scene = scene.assign(decloud=decloud)  # band 1 bad on 8 rows, the target there valid
    scene = scene.chunk(32) if lazy else scene.compute()
    kwargs = {"classifier": classifiers[1], "classifier_config": SMALL, "tile": 32}
    match = r"prediction 'decloud' is NaN or infinite in some band at \d+ pixel\(s\)"
    with pytest.raises(SchemaError, match=match):
        with raise_if_dask_computes():  # lazy: the graph builds, the check runs in it
            result = evaluate_semantic(scene, compute=False, **kwargs)
        result.compute()


def test_evaluate_semantic_counts_what_semantic_metrics_counts(scene, classifiers):
    """The pipeline's confusion of each source is that of its classification."""
    result = evaluate_semantic(
        scene, classifier=classifiers[2], classifier_config={**SMALL, "level": 2}, level=2, tile=32
    )
    valid = (scene.cloudfree != 0).all("band")  # the target's nodata counts for every source
    for source, variable in (("pred", "decloud"), ("target", "cloudfree")):
        labels = classify(
            scene[variable], checkpoint=classifiers[2], config={**SMALL, "level": 2}, tile=32
        )
        assert len(np.unique(labels)) > 2  # the test classifier gives several classes
        labels = labels.where(valid, IGNORE_INDEX).astype("uint8")
        expected = semantic_metrics(labels, scene.landcover, scene.cloudmask, level=2)
        got = result.confusion.sel(source=source, drop=True)
        xr.testing.assert_equal(got, expected.confusion)


def test_agreement_of_a_perfect_prediction_is_one(scene, classifiers):
    result = evaluate_semantic(
        scene, "cloudfree", "cloudfree", None, classifier=classifiers[1],
        classifier_config=SMALL, tile=32,
    )  # fmt: skip
    assert list(result.source.values) == ["pred", "target"]
    np.testing.assert_array_equal(result.agreement.values, 1.0)
    xr.testing.assert_equal(
        result.confusion.sel(source="pred", drop=True),
        result.confusion.sel(source="target", drop=True),
    )
    matrix = result.agreement_confusion.sel(stratum="all")
    assert int(matrix.sum()) == int(np.trace(matrix.values)) == 64 * 63


def test_evaluate_adds_the_semantic_variables_in_the_same_pass(scene, classifiers):
    counter = CountingScheduler(max_computes=1)
    with dask.config.set(scheduler=counter):
        table = evaluate(
            scene, semantic=True, classifier=classifiers[1], classifier_config=SMALL,
            classify_options={"tile": 32},
        )  # fmt: skip
    assert counter.total_computes == 1
    assert {"PSNR", "OA", "mIoU", "IoU", "F1", "confusion", "agreement"} <= set(table)
    assert table.IoU.sel(landcover_class="all").isnull().all()
    alone = evaluate_semantic(scene, classifier=classifiers[1], classifier_config=SMALL, tile=32)
    xr.testing.assert_equal(table.confusion, alone.confusion)
    assert table.attrs["n_valid_pixels"] == 64 * 63 and table.attrs["classifier"]


def test_dataarrays_without_a_dataset_leave_cloudy_out(scene, classifiers):
    arrays = {name: scene[name] for name in ("landcover", "cloudmask")}
    options = {"classifier": classifiers[1], "classifier_config": SMALL, "tile": 32}
    alone = evaluate_semantic(None, scene.decloud, scene.cloudfree, **arrays, **options)
    named = evaluate_semantic(scene, "decloud", "cloudfree", None, **options)
    assert list(alone.source.values) == ["pred", "target"]
    xr.testing.assert_equal(alone.confusion, named.confusion)
    with pytest.raises(SchemaError, match=r"^cloudy: 3 bands, the target has 4"):
        evaluate_semantic(scene, cloudy=scene.cloudy.isel(band=slice(3)), **options)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"classifier": "dsen2_cr-demo", "classifier_config": None},
            ModelConfigError,
            "dsen2_cr is a cloud_removal model",
        ),
        ({"classifier": None}, CheckpointError, "landcover_unet has no default weights"),
        ({"level": 2}, ModelConfigError, "built for WorldCover level 1 .*not level=2"),
        ({"landcover": None}, SchemaError, "landcover: the semantic evaluation needs"),
        ({"landcover": "lc"}, SchemaError, "landcover='lc': variable 'lc' is missing"),
        ({"tile": 30}, ModelConfigError, "multiples of 4"),
        ({"batch_size": 0}, UsageError, "batch_size=0"),
    ],
)
def test_bad_input_is_refused_before_any_work(scene, kwargs, error, match):
    arguments = {"classifier": "untrained", "classifier_config": SMALL, **kwargs}
    with raise_if_dask_computes(), pytest.raises(error, match=match):
        evaluate_semantic(scene, **arguments)


@pytest.mark.parametrize(
    "run",
    [evaluate_semantic, functools.partial(evaluate, semantic=True)],
    ids=["semantic", "evaluate"],
)
def test_a_missing_land_cover_gets_no_hint_to_go_without(scene, run):
    """The semantic evaluation needs the land cover: no hint to pass landcover=None."""
    arguments = {"classifier": "untrained", "classifier_config": SMALL}
    with raise_if_dask_computes(), pytest.raises(SchemaError) as refused:
        run(scene.drop_vars("landcover"), **arguments)
    assert "'landcover' is missing" in str(refused.value)
    assert "landcover=None" not in str(refused.value)


def test_refusals_name_the_classifier_arguments(scene, classifiers, tmp_path, capsys):
    """The classifier's weights and configuration are evaluate's classifier arguments."""
    with pytest.raises(CheckpointError, match="Pass classifier='NAME'.* or classifier='untra"):
        evaluate_semantic(scene, classifier="landcover_unet")
    with pytest.raises(ModelConfigError, match=r"build it with classifier_config=\{'level': 2\}"):
        evaluate_semantic(scene, classifier=classifiers[1], classifier_config=SMALL, level=2)
    with pytest.raises(ModelConfigError, match="^classifier_config={'depth': 3}: the weights"):
        evaluate_semantic(scene, classifier="landcover_unet-demo", classifier_config={"depth": 3})
    m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    argv = ["evaluate", str(tmp_path / "s.zarr"), "--pred", "decloud", "--semantic"]
    assert main([*argv, "--classifier", "landcover_unet-demo", "--level", "2"]) == 2
    assert "build it with --classifier-config level=2 (and" in capsys.readouterr().err
    assert main([*argv, "--classifier", "landcover_unet"]) == 2
    assert "Pass --classifier NAME with weights" in capsys.readouterr().err


def test_a_checkpoint_for_another_number_of_classes_is_refused(scene, classifiers):
    with raise_if_dask_computes(), pytest.raises(CheckpointError, match="n_classes"):
        evaluate_semantic(scene, classifier=classifiers[2], classifier_config=SMALL, level=1)


def test_evaluate_refuses_semantic_with_the_per_patch_protocol(scene):
    with pytest.raises(UsageError, match="semantic=True is pooled"):
        evaluate(scene, semantic=True, protocol="per_patch")
    with pytest.raises(UsageError, match="classify_options.*unknown \\['tiles'\\]"):
        evaluate(scene, semantic=True, classify_options={"tiles": 32})


def test_a_prediction_of_another_scene_is_refused_before_any_work(tmp_path):
    """Scene B's target against the prediction of scene A, on the same grid."""
    stores = scene_stores(tmp_path)
    ds = merged_stores(stores["b"], stores["decloud_a"])
    refused = re.escape(
        "pred='decloud': the prediction was made from another input than the target "
        f"'cloudfree' of {stores['b']}"
    )
    with raise_if_dask_computes(), pytest.raises(SchemaError, match=refused):
        evaluate_semantic(ds, classifier="untrained", classifier_config=SMALL)
    right = merged_stores(stores["a"], stores["decloud_a"])
    with raise_if_dask_computes():
        evaluate_semantic(right, classifier="untrained", classifier_config=SMALL, compute=False)


@pytest.mark.parametrize("level", [1, 2])
def test_real_samples_end_to_end(samples_dir, level):
    ds = m3rcr_xr.open_m3rcr(samples_dir / "train", samples_dir / "one_train_sample.csv")
    ds = ds.isel(y=slice(0, 96), x=slice(0, 96))
    result = ds.m3rcr.evaluate_semantic(
        "cloudy", "cloudfree", classifier="untrained",
        classifier_config={**SMALL, "level": level}, level=level, tile=32, overlap=8,
    )  # fmt: skip
    n = len(class_names(level))
    assert result.sizes["landcover_class"] == n and result.confusion.shape[-2:] == (n, n)
    labelled = result.n_labelled.sel(stratum="all")
    assert (labelled > 0).all()
    confusion = result.confusion.sel(stratum="all")
    assert (confusion.sum(("true_class", "predicted_class")) == labelled).all()
    assert result.OA.notnull().all() and np.isfinite(result.mIoU.sel(stratum="all")).all()


@pytest.mark.parametrize("chunks", [None, {"patch": 1}], ids=["as-opened", "by-patch"])
def test_semantic_evaluation_of_a_collection_builds_without_computing(chunks):
    """The cloudy input is checked on the target's grid as given, not on coordinates made
    dask arrays by the unified chunks; a collection chunked by patch has them anyway."""
    opened = m3rcr_xr.synthetic_collection(2, 32, seed=8)  # dask data, coordinates in memory
    opened = opened.assign(decloud=(opened.cloudy / 2 + opened.cloudfree / 2).astype("f4"))
    ds = opened.compute()
    lazy = ds.chunk(chunks) if chunks else opened
    kwargs = {"classifier": "untrained", "classifier_config": SMALL}
    options = {"semantic": True, "classify_options": {"tile": 32}, **kwargs}
    with raise_if_dask_computes():
        table = evaluate(lazy, compute=False, **options)
    expected = evaluate(ds, **options)
    xr.testing.assert_allclose(table.compute(), expected)
    assert list(expected.source.values) == ["pred", "target", "cloudy"]
