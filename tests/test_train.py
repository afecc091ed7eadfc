"""Training on Zarr stores: crops, loader workers, the published recipe, exact resume,
the command line and the shipped demo weights."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import m3rcr_xr
from m3rcr_xr import models
from m3rcr_xr.cli import main
from m3rcr_xr.exceptions import CheckpointError, ModelConfigError, SchemaError, UsageError
from m3rcr_xr.normalize import normalize_optical
from m3rcr_xr.train import (
    CropDataset,
    TrainSettings,
    autocast_dtype,
    loss_function,
    make_optimizer,
    make_scheduler,
    read_training_checkpoint,
    train,
    train_step,
)

TILE = 32
SMALL = {"preset": "small"}


@pytest.fixture(scope="module")
def collection_store(tmp_path_factory) -> Path:
    """Four 96x96 synthetic patches (cloudy ones among them) in a Zarr store."""
    path = tmp_path_factory.mktemp("train") / "train.zarr"
    m3rcr_xr.to_zarr(
        m3rcr_xr.synthetic_collection(4, 96, seed=11, cloud_cover=0.6), path, progress=False
    )
    return path


@pytest.fixture(scope="module")
def val_store(tmp_path_factory) -> Path:
    """Two 300x300 synthetic patches, as M3R-CR's: for the published centre crop."""
    path = tmp_path_factory.mktemp("val") / "val.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_collection(2, 300, seed=500), path, progress=False)
    return path


def _settings(steps: int, **kwargs) -> TrainSettings:
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


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return models.load("dsen2_cr", path, **SMALL).state_dict()


# ----------------------------------------------------------------------------- data
def test_random_crops_of_a_collection(collection_store):
    data = CropDataset(collection_store, TILE, seed=1)
    assert len(data) == 4
    item = data[5]
    assert item["cloudy"].shape == (4, TILE, TILE) and item["target"].shape == (4, TILE, TILE)
    assert item["sar"].shape == (2, TILE, TILE) and item["cloudmask"].shape == (TILE, TILE)
    assert all(v.dtype == torch.float32 for k, v in item.items() if k != "window")
    for key in ("cloudy", "sar", "target"):
        assert float(item[key].min()) >= 0.0 and float(item[key].max()) <= 1.0
    # every epoch visits each patch once, at offsets inside the patch
    for epoch in range(3):
        windows = [data.window(epoch * 4 + i) for i in range(4)]
        assert sorted(w[0] for w in windows) == [0, 1, 2, 3]
        assert all(0 <= y <= 96 - TILE and 0 <= x <= 96 - TILE for _, y, x in windows)
    assert data.window(7) == CropDataset(collection_store, TILE, seed=1).window(7)
    assert [data.window(i) for i in range(8)] != [
        CropDataset(collection_store, TILE, seed=2).window(i) for i in range(8)
    ]


def test_crop_values_are_the_store_normalised(collection_store):
    data = CropDataset(collection_store, TILE, seed=4)
    patch, y0, x0 = data.window(2)
    ds = m3rcr_xr.open_zarr(collection_store).isel(
        patch=patch, y=slice(y0, y0 + TILE), x=slice(x0, x0 + TILE)
    )
    item = data[2]
    expected = normalize_optical(ds["cloudfree"].values.astype(np.float32))
    np.testing.assert_array_equal(item["target"].numpy(), expected)
    np.testing.assert_array_equal(item["cloudmask"].numpy() > 0.5, ds["cloudmask"].values)
    assert item["window"].tolist() == [patch, y0, x0]


def test_the_british_centre_still_works_with_a_warning(val_store):
    with pytest.warns(DeprecationWarning, match="use 'center'"):
        data = CropDataset(val_store, 160, mode="centre")
    center = CropDataset(val_store, 160, mode="center")
    assert data.mode == "center" and data.window(0) == center.window(0)


def test_centre_crop_is_the_published_one(val_store):
    data = CropDataset(val_store, 160, mode="center")
    assert len(data) == 2
    assert [data.window(i) for i in range(2)] == [(0, 70, 70), (1, 70, 70)]
    crop = data.read(1)
    whole = m3rcr_xr.open_zarr(val_store).isel(patch=1)
    np.testing.assert_array_equal(crop["cloudy"].values, whole["cloudy"].values[:, 70:230, 70:230])
    with pytest.raises(IndexError):
        data.window(2)


def test_scene_crops():
    scene = m3rcr_xr.synthetic_scene((100, 140), seed=2, chunks=64)
    data = CropDataset(scene, TILE, seed=0)
    assert len(data) == (100 // TILE) * (140 // TILE)
    windows = [data.window(i) for i in range(20)]
    assert all(p is None and 0 <= y <= 100 - TILE and 0 <= x <= 140 - TILE for p, y, x in windows)
    centre = CropDataset(scene, TILE, mode="center")
    assert [centre.window(i) for i in (0, 1, 4)] == [(None, 0, 0), (None, 0, 32), (None, 32, 0)]
    assert centre[4]["cloudy"].shape == (4, TILE, TILE)


def test_dataset_errors(collection_store):
    with pytest.raises(SchemaError, match="smaller than the crop"):
        CropDataset(collection_store, 128)
    with pytest.raises(UsageError):
        CropDataset(collection_store, TILE, mode="sideways")
    scene = m3rcr_xr.synthetic_scene((64, 64)).drop_vars("cloudfree")
    with pytest.raises(SchemaError, match="cloudfree"):
        CropDataset(scene, TILE)


def test_real_samples_store(samples_dir, tmp_path):
    store = tmp_path / "real.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.open_m3rcr(samples_dir / "test"), store, progress=False)
    centre = CropDataset(store, 160, mode="center")
    assert len(centre) == 1 and centre.window(0) == (0, 70, 70)
    item = centre[0]
    assert item["cloudy"].shape == (4, 160, 160) and item["sar"].shape == (2, 160, 160)
    assert torch.isfinite(item["sar"]).all() and item["cloudmask"].shape == (160, 160)
    random_item = CropDataset(store, 160, seed=3)[10]
    assert random_item["target"].shape == (4, 160, 160)


def test_loader_workers_give_the_same_batches(collection_store):
    data = CropDataset(collection_store, TILE, seed=9)
    data[0]  # opened in this process: workers must open their own
    state = pickle.loads(pickle.dumps(data)).__dict__
    assert state["_ds"] is None
    loader = torch.utils.data.DataLoader(data, batch_size=3, num_workers=2, sampler=list(range(6)))
    batches = list(loader)
    assert len(batches) == 2
    for b, batch in enumerate(batches):
        for i in range(3):
            np.testing.assert_array_equal(batch["cloudy"][i], data[3 * b + i]["cloudy"])


# ---------------------------------------------------------------------------- recipe
def test_published_recipe():
    net = models.build("align_cr", preset="small")
    optimizer = make_optimizer(net, 1e-4)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, pytest.approx(1e-5)]
    aligned = {id(p) for p in net.SFAlign.parameters()}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == aligned
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    assert len(make_optimizer(models.build("dsen2_cr", **SMALL), 1e-4).param_groups) == 1
    scheduler = make_scheduler(optimizer, 5)
    assert scheduler.step_size == 5 and scheduler.gamma == 0.5
    pred, target = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    cloudy, mask = torch.full((1, 4, 2, 2), 0.5), torch.zeros(1, 2, 2)
    assert float(loss_function("glf_cr")(pred, target, cloudy, mask)) == 1.0
    assert float(loss_function("dsen2_cr")(pred, target, cloudy, mask)) == 1.5  # 0.5 + 1
    assert float(loss_function("align_cr")(pred, target, cloudy, mask)) == pytest.approx(
        1.0, rel=1e-3
    )
    resolved = TrainSettings("Align-CR", 30).resolved()
    assert (resolved.batch_size, resolved.lr, resolved.seed) == (2, 1e-4, 7)
    assert (resolved.lr_decay_start, resolved.lr_step) == (10, 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps=0: must be an integer >= 1"),
        ({"steps": 2.5}, "steps=2.5: .* not float"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"crop": 0}, "crop=0"),
        ({"crop": True}, "crop=True"),
        ({"lr": 0}, "lr=0: must be a finite number > 0"),
        ({"lr": float("inf")}, "lr=inf"),
        ({"lr_step": 0}, "lr_step=0"),
        ({"lr_decay_start": -1}, "lr_decay_start=-1: must be an integer >= 0"),
        ({"seed": -1}, "seed=-1"),
        ({"checkpoint_every": 0}, "checkpoint_every=0"),
        ({"num_workers": -1}, "num_workers=-1"),
        ({"amp": "fp8"}, "amp='fp8': use auto, off, bf16 or fp16"),
    ],
)
def test_settings_out_of_range_are_named(kwargs, match):
    settings = TrainSettings("dsen2_cr", **{"steps": 10, **kwargs})
    with pytest.raises(UsageError, match=match):
        settings.resolved()


def test_bad_model_settings_fail_before_writing(collection_store, tmp_path):
    out = tmp_path / "run.pth"
    with pytest.raises(ModelConfigError, match="n_feats=16.5 must be an integer"):
        train(collection_store, out, _settings(1, config={"n_feats": 16.5}), progress=False)
    with pytest.raises(UsageError, match="device='cuda:99'"):
        train(collection_store, out, _settings(1, device="cuda:99"), progress=False)
    assert not out.exists()


def test_learning_rate_halves_as_published(collection_store, tmp_path):
    """The published loop steps StepLR(5) after each epoch >= 10 - 5: the rate halves
    after epoch 10 and every 5 after; a step here is an epoch there."""
    result = train(
        collection_store,
        tmp_path / "lr.pth",
        _settings(12, lr_step=2, lr_decay_start=4, batch_size=1),
        progress=False,
    )
    ckpt = read_training_checkpoint(result.checkpoint)
    # steps 1..4 at lr, 5..6 at lr/2, 7..8 at lr/4, ... after step 12: lr/32
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 / 32)


def test_loss_goes_down_on_a_fixed_batch(collection_store):
    torch.manual_seed(0)
    data = CropDataset(collection_store, TILE, seed=0)
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    net = models.build("dsen2_cr", **SMALL).train()
    optimizer = make_optimizer(net, 3e-3)
    losses = [train_step(net, batch, optimizer, loss_function("dsen2_cr")) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0]


def test_autocast_only_on_a_gpu(collection_store, monkeypatch):
    assert autocast_dtype("cpu") is None and autocast_dtype("cpu", "off") is None
    with pytest.raises(UsageError, match="GPU"):
        autocast_dtype("cpu", "bf16")
    monkeypatch.setattr("m3rcr_xr.train.recipe._cuda_bf16_supported", lambda: True)
    assert autocast_dtype("cuda") == torch.bfloat16
    assert autocast_dtype("cuda:0", "fp16") == torch.float16
    monkeypatch.setattr("m3rcr_xr.train.recipe._cuda_bf16_supported", lambda: False)
    assert autocast_dtype("cuda") == torch.float16

    def no_autocast(*args, **kwargs):
        raise AssertionError("autocast used on the CPU")

    monkeypatch.setattr(torch, "autocast", no_autocast)
    data = CropDataset(collection_store, TILE)
    batch = torch.utils.data.default_collate([data[0], data[1]])
    net = models.build("dsen2_cr", **SMALL).train()
    optimizer = make_optimizer(net, 1e-3)
    assert np.isfinite(
        train_step(net, batch, optimizer, loss_function("dsen2_cr"), amp=autocast_dtype("cpu"))
    )


# ------------------------------------------------------------------------ checkpoints
def test_checkpoint_layout_and_round_trip(collection_store, tmp_path):
    result = train(collection_store, tmp_path / "run.pth", _settings(2), progress=False)
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
        _settings(4, checkpoint_every=2),
        val=val_store,
        progress=False,
    )
    first = train(collection_store, tmp_path / "part.pth", _settings(2), progress=False)
    second = train(
        collection_store,
        tmp_path / "resumed.pth",
        TrainSettings("dsen2_cr", 4, num_workers=2),
        resume=first.checkpoint,
        progress=False,
    )
    assert {**first.losses, **second.losses} == whole.losses
    resumed, reference = _weights(second.checkpoint), _weights(whole.checkpoint)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert set(whole.metrics) == {"model", "input"}
    assert set(whole.metrics["model"]) == {"all", "cloudy", "clear"}


def test_resume_refuses_other_settings(collection_store, tmp_path):
    first = train(collection_store, tmp_path / "a.pth", _settings(1), progress=False)
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


# ----------------------------------------------------------------------- command line
def test_cli_train(collection_store, val_store, tmp_path, capsys):
    ckpt, weights = tmp_path / "cli.pth", tmp_path / "cli.safetensors"
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
        str(weights),
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

    with safe_open(str(weights), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["model"] == "dsen2_cr" and json.loads(meta["config"]) == SMALL
    reference = _weights(ckpt)
    exported = models.load("dsen2_cr", weights, **SMALL).state_dict()
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


# ---------------------------------------------------------------------- shipped weights
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
