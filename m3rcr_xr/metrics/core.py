"""The xarray layer: :func:`evaluate` and :func:`evaluate_per_patch`.

Thin on purpose: check the arguments, resolve the inputs (:mod:`.inputs`), label the
pixels and sum per group (:mod:`.sums`, running :mod:`.engine`), compute once, add the
groups into cells (:mod:`.cells`) and finish each metric (:mod:`.aggregations`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, cast

import xarray as xr

from ..exceptions import M3RCRWarning, UsageError, argument
from ..landcover import NODATA_CODE
from ..options import OPTIONS
from .aggregations import PSNR_IF_PERFECT, mean_over_patches, metrics_from_sums
from .cells import STRATA, cell_sums, check_strata, needs_cloudmask
from .dispatch import is_lazy
from .engine import DEFAULT_ENGINE
from .inputs import prepare_inputs
from .semantic import semantic_setup, semantic_table
from .sums import checked, group_labels, grouped_sums

PROTOCOLS: tuple[str, ...] = ("pooled", "per_patch")
NODATA_RULE = (
    "pixels where any target band is 0, NaN or infinite, any band of an integer "
    "prediction is 0, or every band of a float prediction is NaN, are excluded from "
    "every metric"
)
LANDCOVER_RULE = (
    "valid pixels whose land cover is nodata (0) or not an ESA WorldCover code are in "
    "class 'all' only"
)
#: how far up the stack a warning of :func:`_table` points: the caller of the public
#: function that called it
_CALLER = 5


def _name(item: Any, default: str) -> str:
    if isinstance(item, str):
        return item
    return str(getattr(item, "name", None) or default)


def _compute_sums(
    sums: xr.DataArray, semantic: xr.Dataset | None = None
) -> tuple[xr.DataArray, xr.Dataset | None]:
    """The sums (and the semantic counts) computed together: one ``dask.compute``."""
    if not is_lazy(sums) and (semantic is None or not is_lazy(*semantic.data_vars.values())):
        return sums, semantic
    from ..progress import compute_with_progress

    extra = () if semantic is None else (semantic,)
    data, *computed = compute_with_progress(sums.data, *extra, show=bool(OPTIONS["progress"]))
    return sums.copy(data=data), (computed[0] if computed else None)


def _patch_coords(target: xr.DataArray) -> dict[Hashable, xr.DataArray]:
    return {name: coord for name, coord in target.coords.items() if coord.dims == ("patch",)}


def _landcover_counts(sums: xr.DataArray, landcover_name: str) -> dict[str, int]:
    """Valid pixels in no land-cover class (nodata, unknown codes); warns on unknown codes."""
    valid = sums.sel(quantity="n_valid").sum(
        [d for d in sums.dims if d not in ("quantity", "code")]
    )
    counts = {
        "n_landcover_nodata_pixels": round(float(valid.sel(code=NODATA_CODE))),
        "n_landcover_unknown_pixels": round(float(valid.sel(code=-1))),
    }
    if counts["n_landcover_unknown_pixels"]:
        warnings.warn(
            f"{landcover_name}: {counts['n_landcover_unknown_pixels']} valid pixel(s) have "
            "codes that are not ESA WorldCover classes; they count in class 'all' only "
            "(attribute n_landcover_unknown_pixels)",
            M3RCRWarning,
            stacklevel=_CALLER,
        )
    return counts


def _attrs(sums: xr.DataArray, landcover_name: str | None, **kwargs: Any) -> dict[str, Any]:
    attrs = {key: value for key, value in kwargs.items() if value is not None}
    attrs.update(
        nodata_rule=NODATA_RULE,
        normalization="clip to [0, 10000], divide by 10000",
        psnr_if_mse_is_zero=PSNR_IF_PERFECT,
    )
    if landcover_name is not None:
        attrs.update(landcover_rule=LANDCOVER_RULE)
    if not is_lazy(sums):
        totals = sums.sum([d for d in sums.dims if d != "quantity"])
        n_valid = round(float(totals.sel(quantity="n_valid")))
        n_nodata = round(float(totals.sel(quantity="n_nodata")))
        attrs.update(
            n_valid_pixels=n_valid,
            n_nodata_pixels=n_nodata,
            n_pred_nodata_pixels=round(float(totals.sel(quantity="pred_nodata"))),
            n_pixels_total=n_valid + n_nodata,
        )
        if landcover_name is not None:
            attrs.update(_landcover_counts(sums, landcover_name))
    return attrs


def _table(
    per_patch: bool,
    ds: xr.Dataset | None,
    pred: Any,
    target: Any,
    level: int | None,
    strata: Sequence[str],
    landcover: Any,
    cloudmask: Any,
    compute: bool,
    engine: str,
    semantic: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """The pooled table, or with ``per_patch`` the per-patch one, with attributes.

    Arguments by position, in the order of :func:`evaluate_per_patch`; ``semantic``: the
    keyword arguments of :func:`~.semantic.semantic_setup` but the inputs, to add the
    semantic evaluation (computed with the sums, in one pass).
    """
    strata = check_strata(level, strata)
    if landcover is None:
        level = None
    inputs = prepare_inputs(
        ds,
        pred,
        target,
        landcover,
        cloudmask,
        need_cloudmask=needs_cloudmask(strata),
        per_patch=per_patch,
        landcover_required=semantic is not None,
    )
    target_da = inputs["target"]
    assert target_da is not None and inputs["pred"] is not None
    labels = group_labels(inputs["landcover"], inputs["cloudmask"], like=target_da)
    sums = grouped_sums(inputs["pred"], target_da, labels, per_patch=per_patch, engine=engine)
    sums = checked(sums, _name(pred, "pred"), _name(target, "target"))
    counts: xr.Dataset | None = None
    names: dict[str, str] = {}
    if semantic is not None:
        counts, names = semantic_setup(
            ds, pred, target, landcover=landcover, cloudmask=cloudmask,
            # None only without landcover, which semantic_setup refuses (after the classifier)
            level=cast(int, level), strata=strata, **semantic,
        )  # fmt: skip
    if compute:
        sums, counts = _compute_sums(sums, counts)
    table = metrics_from_sums(cell_sums(sums, level, strata), target_da.sizes["band"])
    attrs = _attrs(
        sums,
        None if inputs["landcover"] is None else _name(landcover, "landcover"),
        protocol="per_patch" if per_patch else "pooled",
        level=level,
        pred=_name(pred, "pred"),
        target=_name(target, "target"),
        strata=", ".join(strata),
    )
    if per_patch:
        table = table.assign_coords(_patch_coords(target_da))
    table = table.assign_attrs(attrs)
    if counts is None:
        return table
    assert level is not None
    extra = semantic_table(counts, strata, level, names)
    merged = xr.merge([table, extra], join="left", combine_attrs="override")
    return merged.assign_attrs({**counts.attrs, **extra.attrs, **table.attrs})


def _semantic_options(
    semantic: bool,
    per_patch: bool,
    level: int | None,
    landcover: Any,
    classifier: str | os.PathLike | None,
    classifier_config: Mapping[str, Any] | None,
    cloudy: Any,
    classify_options: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """The semantic arguments of :func:`evaluate`, checked; None without ``semantic``."""
    if not semantic:
        return None
    if per_patch:
        raise UsageError(
            f"{argument('semantic', True)} is pooled: use {argument('protocol', 'pooled')}"
        )
    if level is None or landcover is None:
        raise UsageError(
            f"{argument('semantic', True)} needs the land cover and a level (1 or 2), got "
            f"{argument('level', level)}, {argument('landcover', landcover)}"
        )
    known = {"tile", "overlap", "batch_size", "device"}
    unknown = sorted(set(classify_options or {}) - known)
    if unknown:
        raise UsageError(
            f"{argument('classify_options', classify_options)}: unknown {unknown}; "
            f"known: {sorted(known)}"
        )
    options = {"tile": None, "overlap": None, "batch_size": 8, "device": "auto"}
    options.update(classify_options or {})
    return {
        "cloudy": cloudy,
        "classifier": classifier,
        "classifier_config": classifier_config,
        **options,
    }


def evaluate(
    ds: xr.Dataset | None = None,
    pred: str | xr.DataArray = "decloud",
    target: str | xr.DataArray = "cloudfree",
    *,
    protocol: str = "pooled",
    level: int | None = 1,
    strata: Sequence[str] = STRATA,
    landcover: str | xr.DataArray | None = "landcover",
    cloudmask: str | xr.DataArray | None = "cloudmask",
    return_per_patch: bool = False,
    compute: bool = True,
    engine: str = DEFAULT_ENGINE,
    semantic: bool = False,
    classifier: str | os.PathLike | None = None,
    classifier_config: Mapping[str, Any] | None = None,
    cloudy: str | xr.DataArray | None = "cloudy",
    classify_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """PSNR, SSIM, SAM, MAE and RMSE of a prediction per stratum and land-cover class.

    All sums of every metric, class and stratum come from one pass over the data: with
    dask inputs, one ``dask.compute`` whose memory is bounded by the chunk size.

    Parameters
    ----------
    ds
        A scene or a collection; None when every input is given as a DataArray.
    pred, target
        Variable names in ``ds`` or DataArrays, dims ``([patch,] band, y, x)``, reflectance
        x10000 (normalised here to [0, 1] as the reference does). A prediction of
        :func:`m3rcr_xr.decloud` made from another scene than the target's store is
        refused (its ``input_fingerprint``, that of the store it was made from, against
        the fingerprint of the one store of this library the target comes from; see
        :func:`~m3rcr_xr.metrics.inputs.check_paired`); where either is unknown (a
        prediction of files or of several stores, a target in memory, both written in
        one store) nothing is checked.
    protocol
        ``"pooled"``: each metric over all pixels of the cell (PSNR from the pooled MSE).
        ``"per_patch"`` (collections): each metric per patch, then the mean over the
        patches where the cell has pixels, as the published test script reports (the
        per-patch values themselves: :func:`evaluate_per_patch`).
    level
        WorldCover class level: 1 (seven groups) or 2 (eleven classes); None: only "all".
    strata
        Subset of ``("all", "cloudy", "clear")``: all valid pixels, those under the cloud
        mask, those outside it.
    landcover, cloudmask
        Variable names or DataArrays (y, x); None to go without (class "all" only /
        stratum "all" only). The cloud mask is needed only for "cloudy" and "clear".
    return_per_patch
        Deprecated: use :func:`evaluate_per_patch` for the per-patch table. With
        ``protocol="per_patch"``, returns ``(summary, per_patch_table)``.
    compute
        False returns the result lazily (no attributes with pixel counts then); the
        NaN / inf checks run when it is computed.
    engine
        flox's per-chunk algorithm, "numpy" (default, measured faster) or "flox".
    semantic
        Also judge the land cover the prediction keeps (pooled protocol, needs the land
        cover and a ``level``): the variables of :func:`~m3rcr_xr.metrics.evaluate_semantic`
        are added, computed in the same pass as the other metrics.
    classifier, classifier_config, cloudy
        With ``semantic``: the land-cover classifier (registered weights such as
        ``"landcover_unet-demo"``, a checkpoint file of ``"landcover_unet"``, or
        ``"untrained"``; see :func:`~m3rcr_xr.metrics.evaluate_semantic`), its
        architecture, and the cloudy
        input to classify too (None or a missing name: left out).
    classify_options
        With ``semantic``: ``tile``, ``overlap``, ``batch_size``, ``device`` of the
        classifier, as for :func:`m3rcr_xr.classify`.

    Returns
    -------
    xarray.Dataset
        Variables PSNR, SSIM, SAM, MAE, RMSE, n_pixels, n_nodata (and with the per-patch
        protocol n_patches) over dims ``stratum`` and ``landcover_class`` (class names at
        ``level``, then ``"all"``); attributes include ``n_nodata_pixels`` and
        ``n_valid_pixels``, ``n_pred_nodata_pixels`` (those of the nodata pixels where
        the prediction has none, e.g. decloud's NaN where ``cloudy`` had no data) and,
        with a land cover, ``n_landcover_nodata_pixels`` and
        ``n_landcover_unknown_pixels`` (valid pixels in class ``"all"`` only). With
        ``semantic``, also OA, mIoU, n_labelled, IoU, F1, confusion, agreement,
        agreement_mIoU, agreement_IoU and agreement_confusion over a ``source`` dim
        (pred, target, cloudy) and the dims ``true_class`` / ``predicted_class`` (see
        :func:`~m3rcr_xr.metrics.evaluate_semantic`); IoU and F1 are NaN for class
        ``"all"`` (their class mean is mIoU).

    Raises
    ------
    SchemaError
        Missing variables, a prediction made from another input than the target,
        mismatched grids or CRS, bad arguments; a prediction that is
        all NaN / inf, or NaN / inf where the target has data, or coordinates that are
        dask arrays and differ (these at compute time when lazy).

    Warns
    -----
    M3RCRWarning
        Valid pixels have land-cover codes outside ESA WorldCover (counted in the
        attribute ``n_landcover_unknown_pixels``).
    """
    if protocol not in PROTOCOLS:
        raise UsageError(f"{argument('protocol', protocol)}: must be one of {PROTOCOLS}")
    if return_per_patch:
        warnings.warn(
            "evaluate(return_per_patch=True) is deprecated: the per-patch table is "
            "evaluate_per_patch(...), its summary mean_over_patches(table)",
            DeprecationWarning,
            stacklevel=2,
        )
        if protocol != "per_patch":
            raise UsageError(
                f"{argument('return_per_patch', True)} needs {argument('protocol', 'per_patch')}"
            )
    per_patch = protocol == "per_patch"
    options = _semantic_options(
        semantic, per_patch, level, landcover, classifier, classifier_config, cloudy,
        classify_options,
    )  # fmt: skip
    table = _table(
        per_patch, ds, pred, target, level, strata, landcover, cloudmask, compute, engine, options
    )
    if not per_patch:
        return table
    summary = mean_over_patches(table).assign_attrs(table.attrs)
    return (summary, table) if return_per_patch else summary  # type: ignore[return-value]


def evaluate_per_patch(
    ds: xr.Dataset | None = None,
    pred: str | xr.DataArray = "decloud",
    target: str | xr.DataArray = "cloudfree",
    *,
    level: int | None = 1,
    strata: Sequence[str] = STRATA,
    landcover: str | xr.DataArray | None = "landcover",
    cloudmask: str | xr.DataArray | None = "cloudmask",
    compute: bool = True,
    engine: str = DEFAULT_ENGINE,
) -> xr.Dataset:
    """The metrics of each patch of a collection: the per-patch protocol's table.

    Parameters as :func:`evaluate`; ``ds`` (or the inputs) must have a ``patch`` dim.
    :func:`mean_over_patches` of the result is ``evaluate(..., protocol="per_patch")``.

    Returns
    -------
    xarray.Dataset
        The variables of :func:`evaluate` (without ``n_patches``) over dims ``patch``,
        ``stratum`` and ``landcover_class``, with the target's patch coordinates and
        the attributes of :func:`evaluate`.
    """
    return _table(True, ds, pred, target, level, strata, landcover, cloudmask, compute, engine)
