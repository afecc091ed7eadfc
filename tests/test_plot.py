"""The per-class bar chart of evaluation results and the quick-look."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

from m3rcr_xr import UsageError, metrics
from m3rcr_xr.landcover import colors
from m3rcr_xr.plot import metrics_by_class, quicklook


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
