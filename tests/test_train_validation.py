"""Validation during training: the engine's sums give evaluate_per_patch's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import m3rcr_xr
from m3rcr_xr import models
from m3rcr_xr.exceptions import SchemaError
from m3rcr_xr.metrics import evaluate, evaluate_per_patch, mean_over_patches
from m3rcr_xr.normalize import denormalize_optical
from m3rcr_xr.train import CropDataset, validate_model

from .train_runs import SMALL, TILE


def _reflectance(values: torch.Tensor) -> xr.DataArray:
    return xr.DataArray(denormalize_optical(values.numpy()), dims=("patch", "band", "y", "x"))


def _expected(net: nn.Module, data: CropDataset, strata: tuple[str, ...]) -> dict:
    """The per-patch protocol of the xarray API on all crops at once."""
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        preds = {"model": net(batch["cloudy"], batch["sar"]), "input": batch["cloudy"]}
    cloudmask = xr.DataArray(batch["cloudmask"].numpy() > 0.5, dims=("patch", "y", "x"))
    out = {}
    for name, pred in preds.items():
        table = evaluate_per_patch(
            None,
            _reflectance(pred),
            _reflectance(batch["target"]),
            landcover=None,
            cloudmask=cloudmask if "cloudy" in strata else None,
            level=None,
            strata=strata,
        )
        out[name] = mean_over_patches(table).sel(landcover_class="all")
    return out


@pytest.mark.parametrize("batch_size", [1, 2])
def test_validation_equals_evaluate_per_patch(batch_size):
    """Summed across batches of any size, the per-crop means are evaluate_per_patch's."""
    scenes = m3rcr_xr.synthetic_collection(3, 64, seed=21, cloud_cover=0.5)
    data = CropDataset(scenes, TILE, mode="center")
    torch.manual_seed(0)
    net = models.build("dsen2_cr", **SMALL).eval()
    result = validate_model(net, data, batch_size=batch_size)
    expected = _expected(net, data, ("all", "cloudy", "clear"))
    assert set(result) == {"model", "input"}
    for name, table in expected.items():
        assert set(result[name]) == {"all", "cloudy", "clear"}
        for stratum, values in result[name].items():
            for metric in ("PSNR", "SSIM", "SAM", "MAE", "n_patches"):
                want = float(table[metric].sel(stratum=stratum))
                assert values[metric] == pytest.approx(want, rel=1e-6, nan_ok=True), (
                    name,
                    stratum,
                    metric,
                )
    assert result["model"]["all"]["n_patches"] == 3


def test_validation_leaves_out_pixels_without_input_data():
    """Where the cloudy input has no data (integer 0), decloud writes NaN and evaluate
    leaves the pixel out: the validation's scores are evaluate_per_patch's there too."""
    scenes = m3rcr_xr.synthetic_collection(2, TILE, seed=21, cloud_cover=0.5).compute()
    scenes["cloudy"][{"x": slice(0, 8)}] = 0
    data = CropDataset(scenes, TILE, mode="center")  # the centre crop: the whole patch
    torch.manual_seed(0)
    net = models.build("dsen2_cr", **SMALL).eval()
    result = validate_model(net, data)
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        pred = _reflectance(net(batch["cloudy"], batch["sar"]))
    no_input = (scenes["cloudy"].values == 0).all(axis=1, keepdims=True)
    pred.values[np.broadcast_to(no_input, pred.shape)] = np.nan  # as decloud writes it
    # the input: the engine's integer nodata rule on the raw values
    for name, values in {"model": pred, "input": scenes["cloudy"]}.items():
        table = evaluate_per_patch(
            None,
            values,
            scenes["cloudfree"],
            landcover=None,
            cloudmask=scenes["cloudmask"] > 0.5,
            level=None,
            strata=("all", "cloudy", "clear"),
        )
        expected = mean_over_patches(table).sel(landcover_class="all")
        for stratum, scores in result[name].items():
            for metric in ("PSNR", "SSIM", "SAM", "MAE"):
                want = float(expected[metric].sel(stratum=stratum))
                assert scores[metric] == pytest.approx(want, rel=1e-5), (name, stratum, metric)


def test_the_input_baseline_is_evaluate_on_the_cloudy_image():
    """evaluate leaves out the pixels of the cloudy image where any band is 0 (its
    integer nodata), not only where all are: the validation's input baseline too."""
    scenes = m3rcr_xr.synthetic_collection(2, TILE, seed=21, cloud_cover=0.5).compute()
    scenes["cloudy"][{"band": 1, "x": slice(0, 8)}] = 0  # one band 0: nodata to evaluate
    data = CropDataset(scenes, TILE, mode="center")  # the centre crop: the whole patch
    result = validate_model(models.build("dsen2_cr", **SMALL), data)["input"]
    expected = evaluate(scenes, "cloudy", protocol="per_patch", level=None, landcover=None)
    for stratum, scores in result.items():
        for metric in ("PSNR", "SSIM", "SAM", "MAE", "n_patches"):
            want = float(expected[metric].sel(stratum=stratum).squeeze())
            assert scores[metric] == pytest.approx(want, rel=1e-5), (stratum, metric)


def test_validation_without_a_cloudmask_has_stratum_all_only():
    scenes = m3rcr_xr.synthetic_collection(2, 48, seed=5).drop_vars("cloudmask")
    data = CropDataset(scenes, TILE, mode="center")
    net = models.build("dsen2_cr", **SMALL)
    result = validate_model(net, data)
    expected = _expected(net.eval(), data, ("all",))
    assert set(result["model"]) == {"all"}
    assert result["input"]["all"]["PSNR"] == pytest.approx(
        float(expected["input"]["PSNR"].sel(stratum="all")), rel=1e-6
    )


class _Diverged(nn.Module):
    def forward(self, cloudy: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        return cloudy * np.nan


def test_a_diverged_model_is_named_and_the_model_mode_restored():
    data = CropDataset(m3rcr_xr.synthetic_collection(1, 48, seed=6), TILE, mode="center")
    net = _Diverged().train()
    with pytest.raises(SchemaError, match="prediction 'model' is all NaN"):
        validate_model(net, data)
    assert net.training
