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

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .exceptions import SchemaError, UsageError, argument
from .landcover import WORLDCOVER, class_names, colors
from .metrics import ALL_CLASSES, METRICS

_HATCHES = ("", "//", "..", "xx")
_ALL_COLOR = "#555555"


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


def _draw(ax: Any, values: xr.DataArray, metric: str) -> None:
    classes = [str(c) for c in values["landcover_class"].values]
    strata = [str(s) for s in values["stratum"].values]
    width = 0.8 / len(strata)
    x = np.arange(len(classes))
    face = _class_colors(classes)
    for i, stratum in enumerate(strata):
        heights = values.sel(stratum=stratum).values.astype(float)
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
        fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False)
        axes = list(axes[0])
    else:
        fig, axes = ax.figure, [ax]
    for axis, name in zip(axes, names, strict=True):
        _draw(axis, result[name], name)
    handles = _strata_legend(result["stratum"].values)
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

    Panels appear for the variables present; large scenes are decimated to about
    ``max_size`` pixels a side before anything is read. The uncertainty panel
    (``decloud_std`` of :func:`m3rcr_xr.decloud` with ``uncertainty=True``, or ``std``)
    shows the standard deviation averaged over the bands, from 0 to its 99th percentile.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import m3rcr_xr
    >>> scene = m3rcr_xr.synthetic_scene((64, 64))
    >>> both = m3rcr_xr.decloud(scene, config={"preset": "small"}, tta="flips",
    ...                         uncertainty=True)
    >>> [ax.get_title() for ax in quicklook(scene.merge(both)).axes][:5]
    ['cloudy', 'decloud', 'uncertainty (std)', 'cloud-free', 'land cover']
    """
    import matplotlib.pyplot as plt

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
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3), squeeze=False)
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
