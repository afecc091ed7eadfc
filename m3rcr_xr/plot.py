"""Plots of evaluation results (matplotlib).

Examples
--------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> import numpy as np, xarray as xr
>>> from m3rcr_xr import metrics
>>> target = xr.DataArray(np.full((4, 16, 16), 900, "uint16"), dims=("band", "y", "x"))
>>> result = metrics.evaluate(None, target * 1.1, target, landcover=None, cloudmask=None,
...                           strata=("all",))
>>> fig = metrics_by_class(result, "PSNR")
>>> len(fig.axes)
1
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .exceptions import SchemaError, UsageError, argument, check_integer, check_positive
from .landcover import WORLDCOVER, class_names, colors
from .metrics import ALL_CLASSES, METRICS
from .schema import is_collection

_HATCHES = ("", "//", "..", "xx")
_ALL_COLOR = "#555555"


@contextmanager
def closed_on_error(figure: Any) -> Iterator[Any]:
    """Yield ``figure``; close it if drawing into it fails, so that pyplot does not
    keep a half-drawn figure open (a quick-look holds tens of MiB)."""
    import matplotlib.pyplot as plt

    try:
        yield figure
    except BaseException:
        plt.close(figure)
        raise


def save_and_close(figure: Any, path: str | Path, **savefig: Any) -> Path:
    """Write ``figure`` to ``path`` (``savefig`` keywords passed on; the format that of
    the suffix unless given), then close it whatever happens: a function that writes a
    figure to a file and returns the path keeps nothing open in pyplot.

    The file is written whole or not at all (:func:`m3rcr_xr.files.replace_atomically`):
    a run killed while it writes leaves the earlier file, or none, never half a PNG.
    """
    import matplotlib.pyplot as plt

    from .files import replace_atomically

    path = Path(path)
    # the temporary file's suffix is no format: matplotlib is told the destination's
    savefig.setdefault("format", path.suffix[1:].lower() or plt.rcParams["savefig.format"])
    try:
        replace_atomically(path, lambda partial: figure.savefig(partial, **savefig))
    finally:
        plt.close(figure)
    return path


def _metrics_to_draw(result: xr.Dataset, metric: str | Sequence[str] | None) -> list[str]:
    names = (
        [m for m in METRICS if m in result]
        if metric is None
        else ([metric] if isinstance(metric, str) else list(metric))
    )
    missing = [m for m in names if m not in result]
    if not names or missing:
        raise UsageError(
            f"{argument('metric', metric)}: metric(s) {missing or names} not in the result "
            f"(have {sorted(map(str, result.data_vars))})"
        )
    return names


def _class_colors(classes: Sequence[str]) -> list[str]:
    """WorldCover colours when the classes are those of a level, grey for the rest."""
    for level in (1, 2):
        table = dict(zip(class_names(level), colors(level), strict=True))
        if all(c in table or c == ALL_CLASSES for c in classes):
            return [table.get(c, _ALL_COLOR) for c in classes]
    return [_ALL_COLOR] * len(classes)


def _draw(ax: Any, values: xr.DataArray, metric: str, dim: str = "stratum") -> None:
    """Bars per land-cover class in its colour, one hatched bar per value of ``dim``."""
    classes = [str(c) for c in values["landcover_class"].values]
    strata = [str(s) for s in values[dim].values]
    width = 0.8 / len(strata)
    x = np.arange(len(classes))
    face = _class_colors(classes)
    for i, stratum in enumerate(strata):
        heights = values.sel({dim: stratum}).values.astype(float)
        ax.bar(
            x + (i - (len(strata) - 1) / 2) * width,
            heights,
            width,
            color=face,
            edgecolor="black",
            linewidth=0.5,
            hatch=_HATCHES[i % len(_HATCHES)],
        )
    ax.set_xticks(x, classes, rotation=45, ha="right")
    units = values.attrs.get("units")
    ax.set_ylabel(f"{metric} ({units})" if units and units != "1" else metric)
    ax.set_title(metric)


def _strata_legend(strata: Sequence[str]) -> list[Any]:
    from matplotlib.patches import Patch

    return [
        Patch(facecolor="white", edgecolor="black", hatch=_HATCHES[i % len(_HATCHES)], label=str(s))
        for i, s in enumerate(strata)
    ]


def metrics_by_class(
    result: xr.Dataset, metric: str | Sequence[str] | None = None, ax: Any = None
) -> Any:
    """Bar chart of metrics per land-cover class, one bar per stratum.

    Parameters
    ----------
    result
        From :func:`m3rcr_xr.metrics.evaluate` (dims ``stratum`` and ``landcover_class``).
    metric
        One metric name, several, or None for all of PSNR, SSIM, SAM, MAE, RMSE present.
    ax
        A matplotlib Axes to draw one metric into; None makes a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        Classes in WorldCover colours (``all`` in grey), strata told apart by hatching;
        empty cells (NaN) have no bar.
    """
    import matplotlib.pyplot as plt

    names = _metrics_to_draw(result, metric)
    needed = {"stratum", "landcover_class"}
    if set(result[names[0]].dims) != needed:
        raise SchemaError(
            f"expected dims {sorted(needed)}, got {result[names[0]].dims}: "
            "plot the summary, not the per-patch table"
        )
    if ax is not None and len(names) != 1:
        raise UsageError(f"{argument('ax', ax)} draws one metric: pass metric='PSNR' (or another)")
    if ax is None:
        fig, grid = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False)
        axes = list(grid[0])
    else:
        fig, axes = ax.figure, [ax]
    for axis, name in zip(axes, names, strict=True):
        _draw(axis, result[name], name)
    handles = _strata_legend(list(result["stratum"].values))
    if ax is not None:
        ax.legend(handles=handles, title="stratum", fontsize="small")
        return fig
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.legend(
        handles=handles, title="stratum", loc="upper center", ncol=len(handles), fontsize="small"
    )
    return fig


def _true_colour(optical: xr.DataArray, stretch: float) -> np.ndarray:
    """(y, x, 3) red-green-blue in [0, 1] from reflectance x10000."""
    rgb = optical.sel(band=["red", "green", "blue"]).transpose("y", "x", "band")
    return np.clip(np.asarray(rgb.values, dtype=np.float32) / stretch, 0, 1)


def _landcover_image(codes: xr.DataArray) -> np.ndarray:
    from matplotlib.colors import to_rgb

    lut = np.ones((256, 3), dtype=np.float32)
    for cls in WORLDCOVER:
        lut[cls.code] = to_rgb(cls.color)
    return lut[np.asarray(codes.values)]


def _uncertainty_image(ax: Any, std: xr.DataArray) -> None:
    """The band-mean standard deviation, dark (trusted) to bright, with a colour bar."""
    values = np.asarray(std.mean("band").values, dtype=np.float32)
    top = float(np.nanpercentile(values, 99)) if np.isfinite(values).any() else 0.0
    image = ax.imshow(values, cmap="magma", vmin=0, vmax=top or 1.0, interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label=std.attrs.get("units"))


def quicklook(
    ds: xr.Dataset,
    *,
    decloud: str | xr.DataArray = "decloud",
    std: str | xr.DataArray = "decloud_std",
    max_size: int = 1024,
    stretch: float = 3000.0,
) -> Any:
    """Cloudy, decloud, its uncertainty, cloud-free and land cover of a scene, side by side.

    Panels appear for the variables present. A scene larger than ``max_size`` pixels a
    side is drawn from every n-th pixel (a strided ``isel``); that still reads every
    chunk of the scene (and computes every tile of a lazy decloud result), only the
    figure is small. To preview a large store cheaply, draw a window of it:
    ``quicklook(ds.isel(y=slice(0, 1024), x=slice(0, 1024)))`` reads only the chunks
    of the window. The uncertainty panel
    (``decloud_std`` of :func:`m3rcr_xr.decloud` with ``uncertainty=True``, or ``std``)
    shows the standard deviation averaged over the bands, from 0 to its 99th percentile.
    ``stretch``: the reflectance (x10000) drawn white in the true-colour panels.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    SchemaError
        ``ds`` is a collection, before anything is read: draw one of its patches,
        ``ds.isel(patch=i)``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import m3rcr_xr
    >>> scene = m3rcr_xr.synthetic_scene((64, 64))
    >>> both = m3rcr_xr.decloud(scene, checkpoint="dsen2_cr-demo", tta="flips",
    ...                         uncertainty=True)
    >>> [ax.get_title() for ax in quicklook(scene.assign(both.data_vars)).axes][:5]
    ['cloudy', 'decloud', 'uncertainty (std)', 'cloud-free', 'land cover']
    """
    import matplotlib.pyplot as plt

    if is_collection(ds):
        raise SchemaError(
            f"quicklook draws one scene, not a collection of {ds.sizes['patch']} patches: "
            "select one with ds.isel(patch=i)"
        )
    max_size = check_integer("max_size", max_size)
    stretch = check_positive("stretch", stretch)
    if isinstance(decloud, xr.DataArray):
        ds = ds.assign(decloud=decloud)
        decloud = "decloud"
    if isinstance(std, xr.DataArray):
        ds = ds.assign(decloud_std=std)
        std = "decloud_std"
    step = max(1, int(np.ceil(max(ds.sizes["y"], ds.sizes["x"]) / max_size)))
    small = ds.isel(y=slice(None, None, step), x=slice(None, None, step))
    panels = [
        (name, title)
        for name, title in (
            ("cloudy", "cloudy"),
            (decloud, "decloud"),
            (std, "uncertainty (std)"),
            ("cloudfree", "cloud-free"),
            ("landcover", "land cover"),
        )
        if name in small
    ]
    # one compute for all panels: decloud and its std share their tile tasks
    small = small[[name for name, _ in panels]].compute()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3), squeeze=False)
    with closed_on_error(fig):
        for ax, (name, title) in zip(axes[0], panels, strict=True):
            if name == std:
                _uncertainty_image(ax, small[name])
            elif name == "landcover":
                ax.imshow(_landcover_image(small[name]), interpolation="nearest")
            else:
                ax.imshow(_true_colour(small[name], stretch), interpolation="nearest")
            ax.set_title(title)
            ax.set_axis_off()
        fig.tight_layout()
    return fig


def _confusion_of(result: xr.Dataset | xr.DataArray, source: str, stratum: str) -> xr.DataArray:
    """The (true_class, predicted_class) matrix of ``source`` and ``stratum`` in a result."""
    matrix = result if isinstance(result, xr.DataArray) else result.get("confusion")
    if matrix is None:
        raise SchemaError(
            "no 'confusion' variable: plot a result of evaluate_semantic, "
            "semantic_metrics or evaluate(..., semantic=True)"
        )
    for dim, value in (("source", source), ("stratum", stratum)):
        if dim in matrix.dims:
            if value not in matrix[dim].values:
                raise UsageError(
                    f"{argument(dim, value)}: not in the result (have "
                    f"{[str(v) for v in matrix[dim].values]})"
                )
            matrix = matrix.sel({dim: value})
    return matrix.transpose("true_class", "predicted_class")


def _color_ticks(labels: Any, classes: Sequence[str]) -> None:
    for label, color in zip(labels, _class_colors(classes), strict=True):
        label.set_bbox({"facecolor": color, "edgecolor": "none", "alpha": 0.7, "pad": 1.5})


def confusion_matrix(
    result: xr.Dataset | xr.DataArray,
    source: str = "pred",
    stratum: str = "all",
    *,
    normalize: str | None = "true",
    ax: Any = None,
) -> Any:
    """The confusion matrix of a semantic evaluation, class names in WorldCover colours.

    Parameters
    ----------
    result
        From :func:`m3rcr_xr.metrics.evaluate_semantic`, :func:`~m3rcr_xr.metrics.
        semantic_metrics` or ``evaluate(..., semantic=True)``, or its ``confusion``.
    source, stratum
        Which matrix (``source`` where the result has that dim).
    normalize
        ``"true"``: each row (true class) as fractions, as scikit-learn's
        ``confusion_matrix(normalize="true")``; None: counts. Each cell is annotated
        with its count either way.
    ax
        A matplotlib Axes to draw into; None makes a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np, xarray as xr
    >>> from m3rcr_xr.metrics import semantic_metrics
    >>> labels = xr.DataArray(np.array([[0, 1], [1, 5]], "uint8"), dims=("y", "x"))
    >>> codes = xr.DataArray(np.array([[10, 20], [40, 80]], "uint8"), dims=("y", "x"))
    >>> fig = confusion_matrix(semantic_metrics(labels, codes))
    >>> fig.axes[0].get_xlabel()
    'predicted class'
    """
    import matplotlib.pyplot as plt

    if normalize not in ("true", None):
        raise UsageError(f"{argument('normalize', normalize)}: must be 'true' or None")
    matrix = _confusion_of(result, source, stratum)
    counts = matrix.values.astype(np.int64)
    shown = counts.astype(float)
    if normalize == "true":
        rows = counts.sum(axis=1, keepdims=True)
        shown = np.divide(shown, rows, out=np.zeros_like(shown), where=rows > 0)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(counts), 0.8 + 0.6 * len(counts)))
    else:
        fig = ax.figure
    image = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, label="fraction of the true class" if normalize else "pixels")
    threshold = shown.max() / 2 if shown.size else 0
    for (i, j), count in np.ndenumerate(counts):
        color = "white" if shown[i, j] > threshold else "black"
        ax.text(j, i, f"{count}", ha="center", va="center", fontsize="x-small", color=color)
    classes = [str(c) for c in matrix["true_class"].values]
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    _color_ticks(ax.get_xticklabels(), classes)
    _color_ticks(ax.get_yticklabels(), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{source}, {stratum}" if "source" in matrix.coords else stratum)
    fig.tight_layout()
    return fig


def iou_bars(
    result: xr.Dataset, metric: str = "IoU", *, stratum: str = "all", ax: Any = None
) -> Any:
    """Per-class IoU (or F1) of a semantic evaluation: bars in WorldCover colours, one
    hatched bar per source (pred, target, cloudy).

    Parameters
    ----------
    result
        From :func:`m3rcr_xr.metrics.evaluate_semantic`, :func:`~m3rcr_xr.metrics.
        semantic_metrics` or ``evaluate(..., semantic=True)``.
    metric
        ``"IoU"``, ``"F1"`` or ``"agreement_IoU"``.
    stratum
        Which stratum.
    ax
        A matplotlib Axes to draw into; None makes a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        Classes with no value in any source (NaN: absent from truth and prediction,
        class ``"all"``) have no bar.
    """
    import matplotlib.pyplot as plt

    name = str(metric)
    if name not in result or "landcover_class" not in result[name].dims:
        raise UsageError(
            f"{argument('metric', metric)}: not a per-class variable of the result (have "
            f"{sorted(str(v) for v in result.data_vars if 'landcover_class' in result[v].dims)})"
        )
    values = result[name]
    if "stratum" in values.dims:
        if stratum not in values["stratum"].values:
            raise UsageError(f"{argument('stratum', stratum)}: not in the result")
        values = values.sel(stratum=stratum)
    if "source" not in values.dims:
        values = values.expand_dims(source=[name])
    values = values.dropna("landcover_class", how="all").transpose("source", "landcover_class")
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.5 + 0.6 * values.sizes["landcover_class"], 4))
    else:
        fig = ax.figure
    _draw(ax, values, name, dim="source")
    ax.set_ylim(0, 1)
    ax.set_title(f"{name}, {stratum}")
    ax.legend(
        handles=_strata_legend(values["source"].values.tolist()), title="source", fontsize="small"
    )
    fig.tight_layout()
    return fig
