"""The per-class bar chart of evaluation results, the semantic evaluation's pictures and
the quick-look."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

from m3rcr_xr import SchemaError, UsageError, metrics
from m3rcr_xr.landcover import class_names, colors
from m3rcr_xr.plot import confusion_matrix, iou_bars, metrics_by_class, quicklook


@pytest.fixture
def result() -> xr.Dataset:
    rng = np.random.default_rng(0)
    target = rng.integers(1, 10000, (4, 40, 40), dtype="uint16")
    ds = xr.Dataset(
        {
            "cloudfree": (("band", "y", "x"), target),
            "decloud": (("band", "y", "x"), (target * 1.05).astype("float32")),
            "landcover": (("y", "x"), rng.choice(np.array([10, 40, 50], "uint8"), (40, 40))),
            "cloudmask": (("y", "x"), rng.random((40, 40)) < 0.4),
        },
    )
    return metrics.evaluate(ds, level=2)


def test_metrics_by_class_writes_a_png(tmp_path, result):
    fig = metrics_by_class(result)
    assert len(fig.axes) == len(metrics.METRICS)
    path = tmp_path / "metrics.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close(fig)


def test_one_metric_into_a_given_axes(result):
    fig, ax = plt.subplots()
    assert metrics_by_class(result, "SAM", ax=ax) is fig
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [*map(str, result.landcover_class.values)]
    # 3 strata x 12 classes; bars of classes absent from the scene are NaN
    assert len(ax.patches) == 3 * 12
    tree_cover = ax.patches[0]
    assert matplotlib.colors.to_hex(tree_cover.get_facecolor()) == colors(2)[0]
    plt.close(fig)


def test_bad_requests_are_refused(result):
    with pytest.raises(UsageError, match="not in the result"):
        metrics_by_class(result, "FID")
    fig, ax = plt.subplots()
    with pytest.raises(UsageError, match="one metric"):
        metrics_by_class(result, ax=ax)
    plt.close(fig)


@pytest.fixture
def semantic() -> xr.Dataset:
    """Scores of two labellings stacked on a ``source`` dim, as evaluate_semantic gives."""
    rng = np.random.default_rng(1)
    codes = xr.DataArray(rng.choice(np.array([10, 30, 80], "uint8"), (30, 30)), dims=("y", "x"))
    cloud = xr.DataArray(rng.random((30, 30)) < 0.5, dims=("y", "x"))
    parts = [
        metrics.semantic_metrics(
            xr.DataArray(rng.choice(np.array([0, 1, 5], "uint8"), (30, 30)), dims=("y", "x")),
            codes,
            cloud,
        )
        for _ in range(2)
    ]
    return xr.concat(parts, dim="source").assign_coords(source=["pred", "target"])


def test_confusion_matrix_in_worldcover_colours(tmp_path, semantic):
    fig = confusion_matrix(semantic, "target", "cloudy")
    ax = fig.axes[0]
    image = ax.get_images()[0].get_array()
    matrix = semantic.confusion.sel(source="target", stratum="cloudy").values
    rows = matrix.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(image, np.divide(matrix, np.maximum(rows, 1)))
    texts = [t.get_text() for t in ax.texts]
    assert texts == [str(v) for v in matrix.ravel()]
    ticks = ax.get_yticklabels()
    assert [t.get_text() for t in ticks] == list(semantic.true_class.values)
    faces = [matplotlib.colors.to_hex(t.get_bbox_patch().get_facecolor()) for t in ticks]
    assert faces == list(colors(1))
    assert ax.get_title() == "target, cloudy"
    fig.savefig(tmp_path / "confusion.png")
    plt.close(fig)
    fig, ax = plt.subplots()
    assert confusion_matrix(semantic.confusion, normalize=None, ax=ax) is fig
    np.testing.assert_array_equal(
        ax.get_images()[0].get_array(), semantic.confusion.sel(source="pred", stratum="all")
    )
    plt.close(fig)


def test_confusion_matrix_refuses_what_it_cannot_draw(semantic, result):
    with pytest.raises(UsageError, match="source='cloudy': not in the result"):
        confusion_matrix(semantic, "cloudy")
    with pytest.raises(UsageError, match="normalize='all'"):
        confusion_matrix(semantic, normalize="all")
    with pytest.raises(SchemaError, match="no 'confusion' variable"):
        confusion_matrix(result)


def test_iou_bars_one_hatched_bar_per_source(semantic):
    fig = iou_bars(semantic, stratum="clear")
    ax = fig.axes[0]
    drawn = semantic.IoU.sel(stratum="clear").dropna("landcover_class", how="all")
    assert len(ax.patches) == 2 * drawn.sizes["landcover_class"]
    heights = [p.get_height() for p in ax.patches]
    expected = drawn.transpose("source", "landcover_class").values.ravel()
    np.testing.assert_allclose(np.nan_to_num(heights), np.nan_to_num(expected))
    by_class = dict(zip(class_names(1), colors(1), strict=True))
    first = [
        matplotlib.colors.to_hex(p.get_facecolor())
        for p in ax.patches[: drawn.sizes["landcover_class"]]
    ]
    assert first == [by_class[str(c)] for c in drawn.landcover_class.values]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pred", "target"]
    plt.close(fig)
    fig = iou_bars(semantic.sel(source="pred", drop=True), "F1")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["F1"]
    plt.close(fig)
    with pytest.raises(UsageError, match="metric='OA': not a per-class variable"):
        iou_bars(semantic, "OA")


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_quicklook_draws_the_uncertainty_panel(tmp_path):
    import m3rcr_xr

    scene = m3rcr_xr.synthetic_scene((48, 40), seed=2)
    std = xr.full_like(scene.cloudy, 50.0, dtype="float32").rename("decloud_std")
    std[:, :10] = 400.0
    decloud = scene.cloudy.astype("float32")
    plain = quicklook(scene, decloud=decloud)
    assert "uncertainty (std)" not in _titles(plain)
    given = quicklook(scene, decloud=decloud, std=std)
    assert _titles(given) == ["cloudy", "decloud", "uncertainty (std)", "cloud-free", "land cover"]
    merged = quicklook(scene.assign(decloud=decloud, decloud_std=std))
    assert _titles(merged) == _titles(given)
    panel = next(ax for ax in merged.axes if ax.get_title() == "uncertainty (std)")
    image = panel.get_images()[0]
    assert image.get_clim() == (0.0, 400.0)  # 0 to the 99th percentile of the band mean
    merged.savefig(tmp_path / "quicklook.png")
    plt.close("all")


def test_quicklook_runs_each_tile_once():
    import m3rcr_xr
    from m3rcr_xr import runner

    scene = m3rcr_xr.synthetic_scene((64, 64)).chunk(32)
    both = m3rcr_xr.decloud(
        scene, checkpoint="dsen2_cr-demo", tile=32, overlap=8, tta="flips", uncertainty=True
    )
    runner.tile_counts(reset=True)
    both.compute()
    once = runner.tile_counts(reset=True)
    plt.close(quicklook(scene.assign(both.data_vars)))
    assert runner.tile_counts(reset=True) == once  # decloud and its std share their tiles


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"max_size": 0}, "max_size=0: must be an integer >= 1"),
        ({"max_size": 10.5}, "max_size=10.5: must be an integer"),
        ({"stretch": 0}, "stretch=0: must be a finite number > 0"),
        ({"stretch": -3000}, "stretch=-3000: must be a finite number > 0"),
    ],
)
def test_quicklook_refuses_a_size_or_stretch_that_would_draw_nothing(option, message):
    import m3rcr_xr

    with pytest.raises(UsageError, match=message):
        quicklook(m3rcr_xr.synthetic_scene((16, 16)), **option)


def test_quicklook_refuses_a_collection_before_reading_it():
    import m3rcr_xr
    from m3rcr_xr.testing import raise_if_dask_computes

    before = plt.get_fignums()
    with (
        raise_if_dask_computes(),
        pytest.raises(SchemaError, match=r"collection of 2 patches: .*ds\.isel\(patch=i\)"),
    ):
        quicklook(m3rcr_xr.synthetic_collection(2, 16))
    assert plt.get_fignums() == before


def test_a_quicklook_that_fails_to_draw_leaves_no_figure_open():
    import m3rcr_xr

    scene = m3rcr_xr.synthetic_scene((16, 16))
    before = plt.get_fignums()
    with pytest.raises(KeyError, match="band"):  # a decloud without its bands
        quicklook(scene, decloud=scene.cloudy.isel(band=0, drop=True))
    assert plt.get_fignums() == before


def test_save_and_close_closes_even_when_writing_fails(tmp_path):
    from m3rcr_xr.plot import save_and_close

    before = plt.get_fignums()
    fig, _ = plt.subplots()
    assert save_and_close(fig, tmp_path / "a.png") == tmp_path / "a.png"
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="Format 'nope' is not supported"):
        save_and_close(fig, tmp_path / "a.nope")
    assert plt.get_fignums() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left


def test_a_figure_killed_while_written_leaves_no_half_file(tmp_path):
    """Killed inside ``savefig`` (a forked child that ``os._exit``s there, as SIGKILL
    would end it), ``save_and_close`` left a truncated PNG at the path, which the demo's
    rerun refused as no figure of its own. The earlier file stays whole now."""
    import os

    from m3rcr_xr.plot import save_and_close

    path = tmp_path / "a.png"
    fig, _ = plt.subplots()
    save_and_close(fig, path)
    earlier = path.read_bytes()
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it never returns into pytest
        try:
            fig, _ = plt.subplots()

            def killed(fname, **kwargs):
                with open(fname, "wb") as half:
                    half.write(earlier[:16])
                os._exit(9)

            fig.savefig = killed
            save_and_close(fig, path)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    assert path.read_bytes() == earlier
