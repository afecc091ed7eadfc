"""Small training runs for the tests of m3rcr_xr.train: settings and weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from m3rcr_xr import models
from m3rcr_xr.train import TrainSettings

#: crop side of the test runs: the small preset's tile size
TILE = 32
SMALL = {"preset": "small"}


def run_settings(steps: int, **kwargs: Any) -> TrainSettings:
    """A small DSen2-CR run of ``steps`` steps (2 crops of 32, lr 1e-3), ``kwargs`` over it."""
    base = {
        "config": SMALL,
        "batch_size": 2,
        "crop": TILE,
        "lr": 1e-3,
        "lr_step": 2,
        "lr_decay_start": 3,
        "seed": 3,
    }
    return TrainSettings("dsen2_cr", steps, **{**base, **kwargs})


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The small DSen2-CR weights of a checkpoint."""
    return models.load("dsen2_cr", path, **SMALL).state_dict()
