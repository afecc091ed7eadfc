"""Checkpoints: the published layout, exact resume, refusals."""

from __future__ import annotations

import pytest
import torch

from m3rcr_xr import models
from m3rcr_xr.exceptions import CheckpointError, UsageError
from m3rcr_xr.train import TrainSettings, read_training_checkpoint, train

from .train_runs import SMALL, run_settings, weights


def test_checkpoint_layout_and_round_trip(collection_store, tmp_path):
    result = train(collection_store, tmp_path / "run.pth", run_settings(2), progress=False)
    raw = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert {"network", "optimizer", "scheduler", "step"} <= set(raw)
    assert raw["step"] == 2 and all(k.startswith("module.") for k in raw["network"])
    assert raw["sampler"]["next"] == 4  # 2 steps of 2 crops
    loaded = models.load("dsen2_cr", result.checkpoint, **SMALL)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, raw["network"][f"module.{key}"], rtol=0, atol=0)
    assert sorted(result.losses) == [1, 2]
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        torch.save(raw["network"], tmp_path / "bare.pth")
        read_training_checkpoint(tmp_path / "bare.pth")


def test_resume_is_exact(collection_store, val_store, tmp_path):
    """Stopped at step 2 and resumed (with loader workers): the same losses and weights
    as an uninterrupted run, validation at the checkpoint included."""
    whole = train(
        collection_store,
        tmp_path / "whole.pth",
        run_settings(4, checkpoint_every=2),
        val=val_store,
        progress=False,
    )
    first = train(collection_store, tmp_path / "part.pth", run_settings(2), progress=False)
    second = train(
        collection_store,
        tmp_path / "resumed.pth",
        TrainSettings("dsen2_cr", 4, num_workers=2),
        resume=first.checkpoint,
        progress=False,
    )
    assert {**first.losses, **second.losses} == whole.losses
    resumed, reference = weights(second.checkpoint), weights(whole.checkpoint)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert set(whole.metrics) == {"model", "input"}
    assert set(whole.metrics["model"]) == {"all", "cloudy", "clear"}


def test_resume_refuses_otherrun_settings(collection_store, tmp_path):
    first = train(collection_store, tmp_path / "a.pth", run_settings(1), progress=False)
    with pytest.raises(UsageError, match="batch_size"):
        train(
            collection_store,
            tmp_path / "b.pth",
            TrainSettings("dsen2_cr", 2, batch_size=3),
            resume=first.checkpoint,
            progress=False,
        )
    with pytest.raises(UsageError, match="model"):
        train(
            collection_store,
            tmp_path / "b.pth",
            TrainSettings("glf_cr", 2),
            resume=first.checkpoint,
            progress=False,
        )
