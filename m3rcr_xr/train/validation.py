"""Validation during training: the benchmark's metrics on centre crops, per crop.

A land-cover classifier is validated by its overall accuracy and mIoU on the centre
crops' labelled pixels, from the confusion matrix of
:func:`m3rcr_xr.metrics.semantic_metrics` (the semantic evaluation's own counts).

The metric engine's bare-array layer does the work on each batch as NumPy arrays
(:func:`m3rcr_xr.metrics.engine.group_sums`: the per-pixel quantities summed per cloud
group, per crop); the small per-crop sums of all batches are kept, and the declared
aggregations (:data:`m3rcr_xr.metrics.AGGREGATIONS`) finish them once at the end, with
the per-patch protocol's mean over crops. The numbers are those of
:func:`m3rcr_xr.metrics.evaluate_per_patch` on the same crops, without building an
xarray table per batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from ..classify import no_data
from ..exceptions import UsageError
from ..landcover import IGNORE_INDEX
from ..metrics import cell_sums, mean_over_patches, metrics_from_sums
from ..metrics.engine import check_sums, group_sums
from ..metrics.kernels import labels_block
from ..metrics.semantic import semantic_metrics
from ..metrics.sums import named_sums
from ..normalize import denormalize_optical
from ..schema import BANDS
from .data import CropDataset, loader, step_tensors
from .recipe import autocast

#: the metrics a validation reports, and the log shows
METRIC_NAMES = ("PSNR", "SSIM", "SAM", "MAE")
#: the metrics of a classifier's validation
CLASSIFIER_METRICS = ("OA", "mIoU")
#: crops per forward pass in validation during training
VAL_BATCH = 8

Metrics = dict[str, dict[str, dict[str, float]]]


def _reflectance(values: Tensor) -> np.ndarray:
    return denormalize_optical(values.float().cpu().numpy())


def _crop_sums(
    pred: Tensor, target: Tensor, labels: np.ndarray, nodata: np.ndarray, name: str
) -> np.ndarray:
    """(quantity, crop, group) sums of one batch, without the ``nodata`` (crop, y, x)
    pixels; raises on a NaN or infinite ``pred`` elsewhere."""
    values = _reflectance(pred)
    # NaN in every band: the engine's nodata of a float prediction, as decloud writes it
    # where the cloudy input has none (the crop's float values no longer tell)
    values[np.broadcast_to(nodata[:, None], values.shape)] = np.nan
    sums = group_sums(values, _reflectance(target), labels)
    return check_sums(sums, pred_name=name, target_name="cloudfree")


def _summary(parts: list[np.ndarray], strata: tuple[str, ...], n_bands: int) -> dict:
    """Each metric per stratum, averaged over the crops, from the per-crop sums."""
    cells = cell_sums(named_sums(np.concatenate(parts, axis=1)), level=None, strata=strata)
    summary = mean_over_patches(metrics_from_sums(cells, n_bands)).sel(landcover_class="all")
    return {
        stratum: {
            name: float(summary[name].sel(stratum=stratum)) for name in (*METRIC_NAMES, "n_patches")
        }
        for stratum in strata
    }


@torch.no_grad()
def validate_model(
    model: nn.Module,
    data: CropDataset,
    *,
    batch_size: int = VAL_BATCH,
    device: str = "cpu",
    amp: torch.dtype | None = None,
    num_workers: int = 0,
) -> Metrics:
    """PSNR, SSIM, SAM and MAE of ``model`` on ``data``'s crops, and of the cloudy input.

    The metrics are those of :func:`m3rcr_xr.metrics.evaluate` per crop, averaged over
    the crops (its ``per_patch`` protocol, as the published validation averages per-batch
    scores), for the strata all, cloudy and clear (all only without a cloud mask). The
    crops' nodata (``valid`` 0: no data in the cloudy input or the cloud-free target) is
    left out, as evaluate leaves out what decloud writes there (NaN); the input's
    scores also leave out its pixels where any band is 0, as evaluate does on the
    ``cloudy`` image (the data model's nodata of an integer image).

    Returns
    -------
    dict
        ``{"model": {stratum: {metric: value}}, "input": {...}}``; ``n_patches`` counts the
        crops a stratum's means are over.

    Examples
    --------
    >>> import m3rcr_xr
    >>> from m3rcr_xr import models
    >>> data = CropDataset(m3rcr_xr.synthetic_collection(2, 64), 32, mode="center")
    >>> result = validate_model(models.build("dsen2_cr", preset="small"), data)
    >>> sorted(result["input"]), result["input"]["all"]["n_patches"]
    (['all', 'clear', 'cloudy'], 2.0)
    """
    if data.level is not None:
        return _validate_classifier(model, data, batch_size, device, amp, num_workers)
    strata = ("all", "cloudy", "clear") if data.has_cloudmask else ("all",)
    was_training = model.training
    model.eval()
    sums: dict[str, list[np.ndarray]] = {"model": [], "input": []}
    try:
        for batch in loader(data, batch_size, num_workers):
            inputs, _, _, _ = step_tensors(batch, device)
            with autocast(amp):
                pred = model(*inputs)
            # no land cover: every pixel is land-cover nodata, in class "all" only
            cloud = batch["cloudmask"].numpy() > 0.5
            labels = labels_block(np.zeros(cloud.shape, np.uint8), cloud)
            nodata = batch["valid"].numpy() == 0
            # the input is an integer image: evaluate leaves out its pixels where any
            # band is 0 (normalised 0 is reflectance 0), the model's where all are
            input_nodata = nodata | (batch["cloudy"] == 0).any(dim=1).numpy()
            for key, name, values, left_out in (
                ("model", "model", pred, nodata),
                ("input", "cloudy", batch["cloudy"], input_nodata),
            ):
                sums[key].append(_crop_sums(values, batch["target"], labels, left_out, name))
    finally:
        model.train(was_training)
    return {name: _summary(parts, strata, len(BANDS)) for name, parts in sums.items()}


@torch.no_grad()
def _validate_classifier(
    model: nn.Module,
    data: CropDataset,
    batch_size: int,
    device: str,
    amp: torch.dtype | None,
    num_workers: int,
) -> Metrics:
    """OA and mIoU of a classifier on ``data``'s crops, pooled over their pixels."""
    level = data.level
    if level is None:
        raise UsageError("a classifier is validated on labelled crops (CropDataset level set)")
    was_training = model.training
    model.eval()
    labels, codes = [], []
    try:
        for batch in loader(data, batch_size, num_workers):
            (optical,), _, _, _ = step_tensors(batch, device)
            with autocast(amp):
                logits = model(optical)
            predicted = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
            reflectance = np.round(_reflectance(batch["target"])).astype(np.uint16)
            predicted[no_data(reflectance)] = IGNORE_INDEX
            labels.append(predicted)
            codes.append(batch["landcover"].numpy())
    finally:
        model.train(was_training)
    dims = ("patch", "y", "x")
    scores = semantic_metrics(
        xr.DataArray(np.concatenate(labels), dims=dims, name="model"),
        xr.DataArray(np.concatenate(codes), dims=dims, name="landcover"),
        level=level,
    )
    values = {name: float(scores[name].sel(stratum="all")) for name in CLASSIFIER_METRICS}
    return {"model": {"all": {**values, "n_patches": float(len(data))}}}


def format_metrics(result: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """One line: each metric of the model on all pixels, and of the cloudy input (a
    classifier: its OA and mIoU)."""
    model = result["model"]["all"]
    if "input" not in result:
        return ", ".join(f"{m} {model[m]:.4g}" for m in CLASSIFIER_METRICS)
    base = result["input"]["all"]
    return ", ".join(f"{m} {model[m]:.4g} (input {base[m]:.4g})" for m in METRIC_NAMES)
