"""Semantic metrics: does a cloud-removal result keep the meaning of the ground?

A land-cover classifier (:func:`m3rcr_xr.classify`) labels the prediction, the
cloud-free target and the cloudy input alike; each labelling is compared with the
ESA WorldCover labels of the scene, and the prediction's with the target's, per cloud
stratum. Everything comes from confusion matrices, which are counts of (cloud, true
class, predicted class) combinations: each chunk task counts its pixels with one
``np.bincount`` of the combined labels and a tree sum adds the chunks' counts, so the
counts are exact integers that do not depend on the chunking, and the whole semantic
evaluation (the three classifications included) is one ``dask.compute``.

Which pixels count
------------------
- Pixels the optical rule of :func:`~m3rcr_xr.metrics.evaluate` excludes (any target
  band 0, NaN or infinite, any band of an integer prediction 0) count nowhere
  (attribute ``n_nodata_pixels``).
- Against WorldCover: pixels with a label (:func:`m3rcr_xr.landcover.worldcover_labels`):
  land-cover nodata (0), codes that are not WorldCover classes and, at level 1, the
  "unknown" group are ignored (attributes ``n_landcover_nodata_pixels`` and
  ``n_landcover_ignored_pixels``). The level-1 "unknown" class keeps its row and column
  in the confusion matrix: its row is empty, and pixels predicted as it count as errors
  (of their true class, and in OA); its own IoU and F1 are NaN, as it is never judged,
  so that mIoU leaves it out.
- A source's own pixels without data (a band of ``cloudy`` at 0) are labelled
  :data:`~m3rcr_xr.landcover.IGNORE_INDEX` by the classifier and not counted for it;
  ``n_labelled`` counts what each source was judged on.

Scores from a confusion matrix ``C`` (rows: true class, columns: predicted class)
-------------------------------------------------------------------------------
``OA = trace(C) / sum(C)``; per class ``IoU = C_kk / (row_k + col_k - C_kk)`` and
``F1 = 2 C_kk / (row_k + col_k)``, NaN for a class absent from both truth and
prediction; ``mIoU`` is the mean of the IoUs that are defined. They equal
scikit-learn's ``accuracy_score``, ``jaccard_score`` and ``f1_score`` with
``average=None, labels=range(K)``, except for an absent class and an ignored one
(level 1's "unknown"), where scikit-learn gives ``zero_division`` (0 by default) or 0
and these give NaN, so that mIoU leaves them out.

Examples
--------
>>> import numpy as np, xarray as xr
>>> labels = xr.DataArray(np.array([[0, 1], [1, 5]], "uint8"), dims=("y", "x"))
>>> codes = xr.DataArray(np.array([[10, 20], [40, 0]], "uint8"), dims=("y", "x"))
>>> result = semantic_metrics(labels, codes, level=1)
>>> float(result.OA.sel(stratum="all")), result.attrs["n_landcover_nodata_pixels"]
(0.6666666666666666, 1)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import dask.array as da
import numpy as np
import xarray as xr

from ..exceptions import SchemaError, UsageError, argument, argument_names
from ..landcover import (
    IGNORE_INDEX,
    NODATA_CODE,
    class_names,
    ignored_classes,
    is_code,
    worldcover_labels,
)
from .cells import STRATA, check_strata, needs_cloudmask, strata_matrix
from .dispatch import is_lazy
from .inputs import check_grid, prepare_inputs
from .kernels import excluded_pixels

log = logging.getLogger(__name__)

__all__ = [
    "SEMANTIC_RULE",
    "SOURCES",
    "confusion_scores",
    "evaluate_semantic",
    "semantic_counts",
    "semantic_metrics",
    "semantic_setup",
    "semantic_table",
]

#: what is classified and compared with WorldCover (``source`` dim)
SOURCES: tuple[str, ...] = ("pred", "target", "cloudy")
SEMANTIC_RULE = (
    "pixels without optical data count nowhere; against WorldCover, pixels of land-cover "
    "nodata, of codes that are not WorldCover classes and of ignored classes are not "
    "counted; IoU and F1 are NaN for a class absent from both truth and prediction"
)
_CODES = 256  # land-cover codes are uint8
#: the histogram's bins: the codes of counted pixels, values that are no uint8 code
#: (negative, above 255, fractional: a land cover of another type), then the excluded
_OTHER = _CODES
_HISTOGRAM = _CODES + 2


# ------------------------------------------------------------------------- kernels
def _confusion_block(
    predicted: np.ndarray,
    true: np.ndarray,
    cloud: np.ndarray,
    excluded: np.ndarray,
    n_classes: int,
) -> np.ndarray:
    """Counts of (cloud, true, predicted) in a block, then of predicted labels out of
    range (neither a class nor :data:`IGNORE_INDEX`); shaped (1, ..., 1, 2 K^2 + 1)."""
    # a fraction or NaN is no label (-1: out of range), never truncated into a class;
    # -1 as int64, since NumPy 2.5 refuses a Python -1 beside uint8 labels (NEP 50)
    predicted = np.where(is_code(predicted), predicted, np.int64(-1)).astype(np.int64)
    true = true.astype(np.int64)
    is_class = (predicted >= 0) & (predicted < n_classes)
    keep = is_class & (true < n_classes) & ~excluded
    code = (cloud[keep].astype(np.int64) * n_classes + true[keep]) * n_classes + predicted[keep]
    counts = np.bincount(code, minlength=2 * n_classes**2)
    bad = np.count_nonzero(~is_class & (predicted != IGNORE_INDEX) & ~excluded)
    return np.append(counts, bad).reshape((1,) * predicted.ndim + (-1,))


def _histogram_block(codes: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Land-cover codes of the counted pixels (NaN as nodata, as :func:`evaluate` takes
    it), then how many are no uint8 code, then the number of excluded pixels."""
    counted = codes[~excluded]
    if counted.dtype != np.uint8:
        nan = np.isnan(counted) if counted.dtype.kind == "f" else False
        counted = np.where(is_code(counted), counted, np.where(nan, NODATA_CODE, _OTHER))
    counts = np.bincount(counted.astype(np.int64), minlength=_OTHER + 1)
    return np.append(counts, np.count_nonzero(excluded)).reshape((1,) * codes.ndim + (-1,))


def _count(kernel: Any, *arrays: Any, length: int, **kwargs: Any) -> Any:
    """``kernel`` per block of the (…, y, x) ``arrays``, summed over all blocks: (length,).

    Each block gives its counts; a tree sum adds them, so the result is exact and the
    same for any chunking. The arrays after the first are put on its chunks.
    """
    if not is_lazy(*arrays):
        return kernel(*(np.asarray(a) for a in arrays), **kwargs).reshape(length)
    first = da.asarray(arrays[0])
    blocks = [first, *(da.asarray(a).rechunk(first.chunks) for a in arrays[1:])]
    counts = da.map_blocks(
        kernel,
        *blocks,
        **kwargs,
        new_axis=first.ndim,
        chunks=(*((1,) * len(c) for c in first.chunks), (length,)),
        dtype=np.int64,
    )
    return counts.sum(axis=tuple(range(first.ndim)))


def _confusion(
    predicted: xr.DataArray,
    true: xr.DataArray,
    cloud: xr.DataArray,
    excluded: xr.DataArray,
    level: int,
) -> tuple[xr.DataArray, xr.DataArray]:
    """(cloud, true_class, predicted_class) counts, and the count of predicted labels
    out of range."""
    names = class_names(level)
    k = len(names)
    flat = _count(
        _confusion_block, predicted.data, true.data, cloud.data, excluded.data,
        length=2 * k * k + 1, n_classes=k,
    )  # fmt: skip
    counts = xr.DataArray(
        flat[:-1].reshape(2, k, k),
        dims=("cloud", "true_class", "predicted_class"),
        coords={"cloud": [False, True], "true_class": list(names), "predicted_class": list(names)},
    )
    return counts, xr.DataArray(flat[-1])


# -------------------------------------------------------------------------- scores
def confusion_scores(confusion: xr.DataArray, ignored: Sequence[str] = ()) -> xr.Dataset:
    """OA, mIoU, per-class IoU and F1, and the pixels counted, of confusion matrices.

    Parameters
    ----------
    confusion
        Counts with dims ``(..., true_class, predicted_class)`` over the same classes.
    ignored
        Classes that are never true labels (:func:`~m3rcr_xr.landcover.ignored_classes`):
        their IoU and F1 are NaN, and mIoU leaves them out; pixels predicted as them
        still count as errors.

    Returns
    -------
    xarray.Dataset
        ``OA``, ``mIoU``, ``n_labelled`` over the leading dims; ``IoU``, ``F1`` with a
        ``landcover_class`` dim too (see the module docstring for the definitions).
    """
    diagonal = confusion["true_class"] == confusion["predicted_class"]
    hits = confusion.where(diagonal, 0).sum("predicted_class").rename(true_class="landcover_class")
    true = confusion.sum("predicted_class").rename(true_class="landcover_class")
    predicted = confusion.sum("true_class").rename(predicted_class="landcover_class")
    union = true + predicted - hits
    judged = (union > 0) & ~union["landcover_class"].isin(list(ignored))
    iou = hits / union.where(judged)
    f1 = 2 * hits / (true + predicted).where(judged)
    total = confusion.sum(("true_class", "predicted_class"))
    return xr.Dataset(
        {
            "OA": hits.sum("landcover_class") / total.where(total > 0),
            "mIoU": iou.mean("landcover_class", skipna=True),
            "IoU": iou,
            "F1": f1,
            "n_labelled": total,
        }
    )


def _by_stratum(counts: xr.DataArray, strata: Sequence[str]) -> xr.DataArray:
    """Cloud states added into strata (``all`` = clear + cloudy), still int64."""
    return xr.dot(counts, strata_matrix(strata).astype(np.int64), dim="cloud")


# ---------------------------------------------------------------------- the counts
def _excluded_pixels(
    pred: xr.DataArray, target: xr.DataArray, names: tuple[str, str] = ("pred", "target")
) -> xr.DataArray:
    """Pixels :func:`~m3rcr_xr.metrics.evaluate` excludes, (…, y, x) bool, lazily; a
    prediction NaN or infinite in some band where the target has data raises
    :class:`SchemaError` when computed, as in ``evaluate`` (the classifier would leave
    such a pixel unlabelled: the prediction scored on fewer pixels than the others)."""
    data = pred.data, target.data
    if is_lazy(*data):
        flags = da.map_blocks(
            _checked_excluded, *data, names=names, drop_axis=pred.ndim - 3, dtype=bool
        )
    else:
        flags = _checked_excluded(np.asarray(data[0]), np.asarray(data[1]), names)
    return xr.DataArray(flags, dims=[d for d in target.dims if d != "band"])


def _checked_excluded(
    pred_raw: np.ndarray, target_raw: np.ndarray, names: tuple[str, str]
) -> np.ndarray:
    excluded = excluded_pixels(pred_raw, target_raw)
    bad = int((~np.isfinite(pred_raw)).any(axis=-3)[~excluded].sum())
    if bad:
        raise SchemaError(
            f"prediction {names[0]!r} is NaN or infinite in some band at {bad} pixel(s) "
            f"where the target {names[1]!r} has data"
        )
    return excluded


def semantic_counts(
    labels: Mapping[str, xr.DataArray],
    landcover: xr.DataArray,
    cloudmask: xr.DataArray | None,
    excluded: xr.DataArray | None,
    level: int,
    *,
    agreement: tuple[str, str] | None = None,
) -> xr.Dataset:
    """All the counts of a semantic evaluation, lazily for dask inputs: nothing computes.

    Parameters
    ----------
    labels
        Class indices by source (:data:`SOURCES`), on the grid of ``landcover``.
    landcover
        WorldCover codes.
    cloudmask, excluded
        True = cloud / True = pixel counts nowhere; None: none.
    level
        WorldCover level of the labels.
    agreement
        ``(source, reference)``: also count the labels of ``source`` against those of
        ``reference`` (``("pred", "target")``).

    Returns
    -------
    xarray.Dataset
        ``confusion`` (source, cloud, true_class, predicted_class), with ``agreement``
        ``agreement_confusion`` (cloud, true_class, predicted_class), ``histogram``
        (code: the land-cover codes of counted pixels, ``"other"`` for values that are no
        uint8 code, then ``"excluded"``) and
        ``n_out_of_range`` (source): labels that are neither a class nor 255.
    """
    true = worldcover_labels(landcover, level)
    cloud = xr.zeros_like(true, dtype=bool) if cloudmask is None else cloudmask.astype(bool)
    excluded = xr.zeros_like(true, dtype=bool) if excluded is None else excluded
    sources = list(labels)
    matrices, out_of_range = zip(
        *(_confusion(labels[s], true, cloud, excluded, level) for s in sources), strict=True
    )
    out = xr.Dataset(
        {
            "confusion": xr.concat(matrices, dim="source"),
            "n_out_of_range": xr.concat(out_of_range, dim="source"),
            "histogram": xr.DataArray(
                _count(_histogram_block, landcover.data, excluded.data, length=_HISTOGRAM),
                dims="code",
                coords={"code": [*map(str, range(_CODES)), "other", "excluded"]},
            ),
        }
    )
    if agreement is not None:
        source, reference = agreement
        matrix, _ = _confusion(labels[source], labels[reference], cloud, excluded, level)
        out["agreement_confusion"] = matrix
    return out.assign_coords(source=sources)


def _landcover_attrs(histogram: np.ndarray, level: int) -> dict[str, int]:
    """Counted pixels of land-cover nodata, ignored by the level, and excluded pixels."""
    labels = worldcover_labels(np.arange(_CODES), level)
    ignored = (labels == IGNORE_INDEX) & (np.arange(_CODES) != NODATA_CODE)
    return {
        "n_nodata_pixels": int(histogram[-1]),
        "n_landcover_nodata_pixels": int(histogram[NODATA_CODE]),
        "n_landcover_ignored_pixels": int(histogram[:_CODES][ignored].sum() + histogram[_OTHER]),
    }


def semantic_table(
    counts: xr.Dataset, strata: Sequence[str], level: int, names: Mapping[str, str] | None = None
) -> xr.Dataset:
    """The result of a semantic evaluation from :func:`semantic_counts` (computed or lazy).

    Raises
    ------
    SchemaError
        (computed counts) Labels that are neither a class of ``level`` nor 255.
    """
    if not is_lazy(counts["n_out_of_range"]):
        for source, bad in zip(
            counts["source"].values, counts["n_out_of_range"].values, strict=True
        ):
            if bad:
                name = (names or {}).get(str(source), str(source))
                raise SchemaError(
                    f"{name}: {int(bad)} pixel(s) have class indices that are not classes of "
                    f"WorldCover level {level} (0..{len(class_names(level)) - 1}) nor "
                    f"{IGNORE_INDEX} (or no whole numbers): labels of another level?"
                )
    confusion = _by_stratum(counts["confusion"], strata)
    result = confusion_scores(confusion, ignored_classes(level)).assign(confusion=confusion)
    if "agreement_confusion" in counts:
        matrix = _by_stratum(counts["agreement_confusion"], strata)
        scores = confusion_scores(matrix)
        result = result.assign(
            agreement=scores["OA"],
            agreement_mIoU=scores["mIoU"],
            agreement_IoU=scores["IoU"],
            agreement_confusion=matrix,
        )
    order = ("source", "stratum", "landcover_class", "true_class", "predicted_class")
    result = result.transpose(*(d for d in order if d in result.dims))
    attrs: dict[str, Any] = {
        "level": level,
        "ignored_classes": ", ".join(ignored_classes(level)),
        "ignore_index": IGNORE_INDEX,
        "semantic_rule": SEMANTIC_RULE,
    }
    if not is_lazy(counts["histogram"]):
        attrs.update(_landcover_attrs(counts["histogram"].values, level))
    return result.assign_attrs(attrs)


def _compute(counts: xr.Dataset) -> xr.Dataset:
    from ..options import OPTIONS
    from ..progress import compute_with_progress

    if not is_lazy(*counts.data_vars.values()):
        return counts
    (computed,) = compute_with_progress(counts, show=bool(OPTIONS["progress"]))
    return computed


# ---------------------------------------------------------------------------- public
def semantic_metrics(
    labels: xr.DataArray,
    landcover: xr.DataArray,
    cloudmask: xr.DataArray | None = None,
    *,
    level: int = 1,
    strata: Sequence[str] | None = None,
    compute: bool = True,
) -> xr.Dataset:
    """Accuracy of a land-cover labelling against WorldCover, per cloud stratum.

    Parameters
    ----------
    labels
        Class indices at ``level`` (0..K-1; :data:`~m3rcr_xr.landcover.IGNORE_INDEX`,
        255, for no label), dims ``([patch,] y, x)``: the output of
        :func:`m3rcr_xr.classify`, or any labelling.
    landcover
        ESA WorldCover codes on the same grid.
    cloudmask
        True = cloud, for the strata "cloudy" and "clear"; None: stratum "all" only.
    level
        WorldCover level of ``labels``: 1 (seven groups) or 2 (eleven classes).
    strata
        Subset of ``("all", "cloudy", "clear")``; default all three with a cloud mask,
        ``("all",)`` without.
    compute
        False: a lazy result (no pixel counts in the attributes).

    Returns
    -------
    xarray.Dataset
        ``confusion`` (stratum, true_class, predicted_class) int64; ``OA``, ``mIoU``,
        ``n_labelled`` (stratum); ``IoU``, ``F1`` (stratum, landcover_class). Attributes
        count the pixels of land-cover nodata and of ignored codes.

    Raises
    ------
    SchemaError
        Grids that differ, or labels that are neither classes of ``level`` nor 255.
    UsageError
        A bad ``level`` or ``strata``, or strata that need a cloud mask without one.
    """
    strata = check_strata(
        level, STRATA if strata is None and cloudmask is not None else strata or ("all",)
    )
    if cloudmask is None and needs_cloudmask(strata):
        raise UsageError(
            f"{argument('strata', strata)}: the strata other than 'all' need a cloud mask"
        )
    if labels.attrs.get("level", level) != level:
        raise UsageError(
            f"{labels.name or 'labels'}: labels of WorldCover level {labels.attrs['level']}, "
            f"not {argument('level', level)}"
        )
    landcover = check_grid(landcover, "landcover", labels, set())
    if cloudmask is not None:
        cloudmask = check_grid(cloudmask, "cloudmask", labels, set())
    order = list(labels.dims)
    layers = cast(
        tuple[xr.DataArray, ...],
        xr.unify_chunks(
            *(a.transpose(*order) for a in (labels, landcover, cloudmask) if a is not None)
        ),
    )
    counts = semantic_counts(
        {"labels": layers[0]}, layers[1], layers[2] if cloudmask is not None else None, None, level
    )
    counts = _compute(counts) if compute else counts
    result = semantic_table(counts, strata, level, {"labels": str(labels.name or "labels")})
    return result.isel(source=0, drop=True)


def resolve_classifier(
    classifier: str | os.PathLike | None, config: Mapping[str, Any] | None
) -> tuple[str, str | os.PathLike | None, Mapping[str, Any] | None]:
    """(model, checkpoint, configuration) of the ``classifier`` argument: registered
    weights (``"landcover_unet-demo"``: their model and configuration), a checkpoint file
    of the default classifier (a safetensors file of ``m3rcr train --export``: the model
    and configuration of its header), ``"untrained"`` (the default classifier with random
    weights, asked for by name), or a model name or None: that model's (the default
    classifier's) registered default weights, which none has today, so
    :func:`m3rcr_xr.weights.resolve` raises :class:`CheckpointError` saying how to get
    weights: a classifier never runs untrained silently."""
    from ..classify import DEFAULT_CLASSIFIER
    from ..weights import UNTRAINED, available, exported_weights

    if classifier is None:
        return DEFAULT_CLASSIFIER, None, config
    text = str(classifier)
    if text == UNTRAINED:
        log.warning("semantic evaluation with an untrained classifier: the scores mean nothing")
        return DEFAULT_CLASSIFIER, UNTRAINED, config
    registered = {e.name: e for e in available()}
    if text in registered:
        return registered[text].model, text, config
    if Path(text).suffix == ".safetensors" and config is None:
        header = exported_weights(text)  # None: not ours, the default model
        if header is not None:
            return header.model, classifier, header.config
    if isinstance(classifier, os.PathLike) or Path(text).suffix:
        return DEFAULT_CLASSIFIER, classifier, config
    return text, None, config


def semantic_setup(
    ds: xr.Dataset | None,
    pred: Any,
    target: Any,
    cloudy: Any,
    *,
    classifier: str | os.PathLike | None,
    classifier_config: Mapping[str, Any] | None,
    level: int,
    strata: tuple[str, ...],
    landcover: Any,
    cloudmask: Any,
    tile: int | None,
    overlap: int | None,
    batch_size: int,
    device: str,
) -> tuple[xr.Dataset, dict[str, str]]:
    """Check everything, classify the sources lazily and build the lazy counts.

    Returns the counts (:func:`semantic_counts`) and the names of the sources' inputs.
    Every check runs here, before any work: the classifier (its task, its level, its
    weights), the inputs and their grids, the strata.
    """
    from ..classify import classifier_ref, classify_lazy
    from ..engine import check_tile_arguments

    tile, overlap, batch_size, device = check_tile_arguments(tile, overlap, batch_size, device)
    name, checkpoint, config = resolve_classifier(classifier, classifier_config)
    # the classifier's checkpoint and config are this function's classifier arguments
    with argument_names(checkpoint="classifier", config="classifier_config"):
        ref, spec = classifier_ref(name, checkpoint, config, device, "fp32", level)
    if landcover is None:
        raise SchemaError("landcover: the semantic evaluation needs WorldCover land cover")
    inputs = prepare_inputs(
        ds,
        pred,
        target,
        landcover,
        cloudmask,
        need_cloudmask=needs_cloudmask(strata),
        per_patch=False,
        cloudy=cloudy,
        landcover_required=True,
    )
    target_da, pred_da, landcover_da = inputs["target"], inputs["pred"], inputs["landcover"]
    if target_da is None or pred_da is None or landcover_da is None:  # prepare_inputs raised
        raise SchemaError("pred, target and landcover: the semantic evaluation needs all three")
    optical = {"pred": pred_da, "target": target_da}
    if inputs["cloudy"] is not None:
        optical["cloudy"] = inputs["cloudy"]
    names = {key: str(value.name or key) for key, value in optical.items()}
    excluded = _excluded_pixels(pred_da, target_da, (names["pred"], names["target"]))
    labels = {
        key: classify_lazy(value, ref, spec, tile=tile, overlap=overlap, batch_size=batch_size)
        for key, value in optical.items()
    }
    counts = semantic_counts(
        labels,
        landcover_da,
        inputs["cloudmask"],
        excluded,
        level,
        agreement=("pred", "target"),
    )
    counts.attrs.update(classifier=ref.name, classifier_config=repr(dict(ref.config)))
    if ref.checkpoint is not None:
        counts.attrs.update(classifier_checkpoint=Path(ref.checkpoint).name)
    return counts, names


def evaluate_semantic(
    ds: xr.Dataset | None = None,
    pred: str | xr.DataArray = "decloud",
    target: str | xr.DataArray = "cloudfree",
    cloudy: str | xr.DataArray | None = "cloudy",
    *,
    classifier: str | os.PathLike | None = None,
    classifier_config: Mapping[str, Any] | None = None,
    level: int = 1,
    strata: Sequence[str] = STRATA,
    landcover: str | xr.DataArray = "landcover",
    cloudmask: str | xr.DataArray | None = "cloudmask",
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    compute: bool = True,
) -> xr.Dataset:
    """Land-cover accuracy of a cloud-removal result: classify, then compare with WorldCover.

    The prediction, the target and (when present) the cloudy input are classified with
    the same classifier (:func:`m3rcr_xr.classify`); each labelling is scored against
    the WorldCover labels of ``landcover``, and the prediction's against the target's
    (``agreement``), per cloud stratum. One ``dask.compute`` for everything, the
    classifications included; nothing depends on the chunking. ``evaluate(...,
    semantic=True)`` adds the same variables to its table.

    Parameters
    ----------
    ds
        A scene or a collection; None when every input is a DataArray.
    pred, target, cloudy
        Optical images (variable names or DataArrays, reflectance x10000). ``cloudy``
        is optional: None, or a name missing from ``ds``, leaves it out. A prediction
        made from another scene than the target is refused, as by
        :func:`~m3rcr_xr.metrics.evaluate`.
    classifier
        A land-cover classifier: registered weights (``"landcover_unet-demo"``, the
        demo classifier trained on synthetic scenes), a checkpoint file of
        ``"landcover_unet"`` (a safetensors file of ``m3rcr train --export`` brings its
        configuration), or ``"untrained"`` (random weights, logged as such). None or a
        bare model name: its registered default weights; none has any today, so a
        :class:`CheckpointError` says how to get weights (a classifier never runs
        untrained silently).
    classifier_config
        Its architecture (``{"preset": "small"}``, ``{"level": 2}``): must match the
        checkpoint and ``level``.
    level
        WorldCover level: 1 (seven groups; "unknown" ignored) or 2 (eleven classes).
    strata, landcover, cloudmask
        As for :func:`~m3rcr_xr.metrics.evaluate`; the land cover is required.
    tile, overlap, batch_size, device
        How the classifier runs, as for :func:`m3rcr_xr.classify`.
    compute
        False: a lazy result (no pixel counts in the attributes).

    Returns
    -------
    xarray.Dataset
        Over dims ``source`` (pred, target[, cloudy]), ``stratum``, ``landcover_class``:
        ``OA``, ``mIoU``, ``n_labelled`` (source, stratum); ``IoU``, ``F1`` (source,
        stratum, landcover_class); ``confusion`` (source, stratum, true_class,
        predicted_class) int64; the prediction against the target: ``agreement`` (its
        overall agreement) and ``agreement_mIoU`` (stratum), ``agreement_IoU`` (stratum,
        landcover_class) and ``agreement_confusion`` (stratum, true_class = the target's
        class, predicted_class = the prediction's). Attributes: the classifier, level,
        ignored classes and the pixels left out (``n_nodata_pixels``,
        ``n_landcover_nodata_pixels``, ``n_landcover_ignored_pixels``).

    Raises
    ------
    ModelConfigError, CheckpointError, SchemaError, UsageError
        Before any work: a cloud-removal model as classifier, a classifier of another
        level or number of classes, no land cover, a prediction made from another input
        than the target, grids that differ, bad arguments.

    Examples
    --------
    >>> import m3rcr_xr
    >>> scene = m3rcr_xr.synthetic_scene((64, 64))
    >>> result = evaluate_semantic(scene, "cloudfree", "cloudfree",
    ...                            classifier="landcover_unet-demo", tile=32)
    >>> float(result.agreement.sel(stratum="all"))
    1.0
    """
    strata = check_strata(level, strata)
    counts, names = semantic_setup(
        ds,
        pred,
        target,
        cloudy,
        classifier=classifier,
        classifier_config=classifier_config,
        level=level,
        strata=strata,
        landcover=landcover,
        cloudmask=cloudmask,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
    )
    if compute:
        counts = _compute(counts)
    result = semantic_table(counts, strata, level, names)
    return result.assign_attrs(counts.attrs)
