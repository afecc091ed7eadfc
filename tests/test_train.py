"""Training end to end: the package's names, the command line and the shipped demo weights."""

from __future__ import annotations

import json

import torch

import m3rcr_xr
import m3rcr_xr.train
from m3rcr_xr import models
from m3rcr_xr.cli import main

from .train_runs import SMALL, TILE, weights


def test_the_package_keeps_the_names_of_the_module():
    """train.py became a package: every name its callers import is still there."""
    names = {
        "PUBLISHED",
        "CHECKPOINT_KEYS",
        "CropDataset",
        "TrainResult",
        "TrainSettings",
        "autocast_dtype",
        "export_weights",
        "loss_function",
        "make_optimizer",
        "make_scheduler",
        "read_training_checkpoint",
        "train",
        "train_step",
        "validate_model",
    }
    assert names <= set(m3rcr_xr.train.__all__)
    assert all(callable(getattr(m3rcr_xr.train, n)) or n.isupper() for n in names)
    assert m3rcr_xr.train.CropDataset.__module__ == "m3rcr_xr.train.data"


def test_cli_train(collection_store, val_store, tmp_path, capsys):
    ckpt, exported_path = tmp_path / "cli.pth", tmp_path / "cli.safetensors"
    argv = [
        "train",
        str(collection_store),
        "--model",
        "dsen2_cr",
        "--config",
        "preset=small",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--crop",
        str(TILE),
        "--val",
        str(val_store),
        "--out",
        str(ckpt),
        "--export",
        str(exported_path),
        "--seed",
        "1",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "1",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "validation all: PSNR" in out
    from safetensors import safe_open

    with safe_open(str(exported_path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["model"] == "dsen2_cr" and json.loads(meta["config"]) == SMALL
    reference = weights(ckpt)
    exported = models.load("dsen2_cr", exported_path, **SMALL).state_dict()
    assert all(torch.equal(exported[k], reference[k]) for k in reference)
    status = main(
        [
            "train",
            str(tmp_path / "missing.zarr"),
            "--model",
            "dsen2_cr",
            "--steps",
            "1",
            "--out",
            str(ckpt),
        ]
    )
    assert status == 2 and "error" in capsys.readouterr().err


def test_shipped_weights_beat_the_cloudy_input():
    from m3rcr_xr.weights import default_checkpoint

    ckpt = default_checkpoint()
    path, config = ckpt.path, ckpt.config
    assert ckpt.model == "dsen2_cr" and path.stat().st_size <= 5 * 2**20
    models.load(ckpt.model, path, **config)  # safetensors: tensors only, nothing executed
    scene = m3rcr_xr.synthetic_scene((192, 192), seed=90210, chunks=192, cloud_cover=0.5)
    scene = scene.assign(
        decloud=m3rcr_xr.decloud(scene, ckpt.model, path, config=config, device="cpu"),
        identity=scene["cloudy"].astype("float32"),
    ).compute()
    assert scene["cloudmask"].mean() > 0.1
    ours, base = (
        m3rcr_xr.evaluate(scene, var, level=None, strata=("all",)).sel(
            stratum="all", landcover_class="all"
        )
        for var in ("decloud", "identity")
    )
    assert float(ours["PSNR"]) > float(base["PSNR"])
    assert float(ours["MAE"]) < float(base["MAE"])
