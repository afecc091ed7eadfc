"""The published recipe: optimiser groups, losses, the learning-rate schedule, autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import m3rcr_xr
from m3rcr_xr import devices, models, runner
from m3rcr_xr.exceptions import UsageError
from m3rcr_xr.train import (
    CropDataset,
    autocast_dtype,
    loss_function,
    make_optimizer,
    make_scheduler,
    read_training_checkpoint,
    train,
    train_step,
)
from m3rcr_xr.train.recipe import steps_scheduler
from m3rcr_xr.train.settings import TrainSettings

from .train_runs import SMALL, TILE, run_settings


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


def test_learning_rate_halves_as_published(collection_store, tmp_path):
    """The published loop steps StepLR(5) after each epoch >= 10 - 5: the rate halves
    after epoch 10 and every 5 after; a step here is an epoch there."""
    result = train(
        collection_store,
        tmp_path / "lr.pth",
        run_settings(12, lr_step=2, lr_decay_start=4, batch_size=1),
        progress=False,
    )
    ckpt = read_training_checkpoint(result.checkpoint)
    # steps 1..4 at lr, 5..6 at lr/2, 7..8 at lr/4, ... after step 12: lr/32
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 / 32)


def _rates(steps: int, lr_step: int, lr_decay_start: int) -> list[float]:
    """The rate of each optimiser step 1..steps, as the training loop sets it."""
    optimizer = make_optimizer(torch.nn.Linear(1, 1), 1.0)
    scheduler = make_scheduler(optimizer, lr_step, lr_decay_start=lr_decay_start)
    rates = []
    for step in range(1, steps + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if steps_scheduler(step, lr_decay_start, lr_step):
            scheduler.step()
    return rates


@pytest.mark.parametrize("lr_step", [1, 2, 3, 5])
@pytest.mark.parametrize("lr_decay_start", [0, 1, 2, 4, 5, 7])
def test_learning_rate_halves_when_documented(lr_step, lr_decay_start):
    """ "Halves after step lr_decay_start and every lr_step steps after", for every
    value: step s runs at 0.5 ** (the number of those halvings before it)."""
    halvings = [
        len([k for k in range(20) if lr_decay_start + k * lr_step < step]) for step in range(1, 16)
    ]
    assert _rates(15, lr_step, lr_decay_start) == [0.5**n for n in halvings]


def test_the_default_schedule_is_the_published_one():
    """The defaults over 30 steps: the published loop's StepLR(5), stepped after each
    epoch >= 10 - 5 (a step here is an epoch there)."""
    settings = TrainSettings("dsen2_cr", 30).resolved()
    assert (settings.lr_decay_start, settings.lr_step) == (10, 5)
    optimizer = make_optimizer(torch.nn.Linear(1, 1), 1.0)
    published = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    rates = []
    for epoch in range(30):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if epoch >= 10 - 5:
            published.step()
    assert _rates(30, 5, 10) == rates


@pytest.mark.parametrize("lr_decay_start", [0, 1])
def test_resume_keeps_an_early_schedule(collection_store, tmp_path, lr_decay_start):
    schedule = {"lr_step": 3, "lr_decay_start": lr_decay_start, "batch_size": 1}
    whole = train(collection_store, tmp_path / "w.pth", run_settings(5, **schedule), progress=False)
    part = train(collection_store, tmp_path / "p.pth", run_settings(2, **schedule), progress=False)
    resumed = train(
        collection_store,
        tmp_path / "r.pth",
        TrainSettings("dsen2_cr", 5),
        resume=part.checkpoint,
        progress=False,
    )
    assert {**part.losses, **resumed.losses} == whole.losses
    rates = [
        read_training_checkpoint(r.checkpoint)["optimizer"]["param_groups"][0]["lr"]
        for r in (whole, resumed)
    ]
    assert rates[0] == rates[1] == pytest.approx(1e-3 * _rates(6, 3, lr_decay_start)[-1])


def test_loss_goes_down_on_a_fixed_batch(collection_store):
    torch.manual_seed(0)
    data = CropDataset(collection_store, TILE, seed=0)
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    net = models.build("dsen2_cr", **SMALL).train()
    optimizer = make_optimizer(net, 3e-3)
    losses = [train_step(net, batch, optimizer, loss_function("dsen2_cr")) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0]


def test_a_crop_without_data_teaches_nothing():
    """Crops entirely outside the footprint (every band 0): no loss, no update, even
    after a step on data (Adam's moments would move the weights on zero gradients)."""
    ds = m3rcr_xr.synthetic_collection(2, TILE, seed=3).compute()
    good = torch.utils.data.default_collate(list(CropDataset(ds, TILE, mode="center")))
    for name in ("cloudy", "cloudfree"):
        ds[name][:] = 0
    batch = torch.utils.data.default_collate(list(CropDataset(ds, TILE, mode="center")))
    assert not batch["valid"].any()
    net = models.build("dsen2_cr", **SMALL).train()
    optimizer = make_optimizer(net, 1e-3)
    for step in range(2):  # the first step, then one after a step on data
        before = [p.detach().clone() for p in net.parameters()]
        moments = [s["exp_avg"].clone() for s in optimizer.state.values()]
        assert train_step(net, batch, optimizer, loss_function("dsen2_cr")) == 0.0
        assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
        after = [s["exp_avg"] for s in optimizer.state.values()]
        assert all(torch.equal(a, b) for a, b in zip(moments, after, strict=True))
        if step == 0:
            train_step(net, good, optimizer, loss_function("dsen2_cr"))

    def older_loss(pred, target, cloudy, cloudmask):  # a user's, written before `valid`
        return (pred - target).abs().mean()

    assert train_step(net, batch, optimizer, older_loss) > 0.0  # counts every pixel, as before


def test_autocast_only_on_a_gpu(collection_store, monkeypatch):
    assert autocast_dtype("cpu") is None and autocast_dtype("cpu", "off") is None
    with pytest.raises(UsageError, match="GPU"):
        autocast_dtype("cpu", "bf16")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert autocast_dtype("cuda") == torch.bfloat16
    assert autocast_dtype("cuda:0", "fp16") == torch.float16
    assert autocast_dtype("cuda:0", "off") is None

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


def test_amp_auto_picks_what_inference_picks(monkeypatch, caplog):
    """A V100 (7.0) emulates bf16, which torch counts as support: training's "auto"
    took emulated bf16 there while inference's took float32; both take float32 now."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    for capability, dtype in (((7, 0), None), ((8, 6), torch.bfloat16)):
        monkeypatch.setattr(
            torch.cuda, "get_device_capability", lambda device=None, c=capability: c
        )
        assert autocast_dtype("cuda:0") is runner.autocast_dtype("auto", "cuda:0") is dtype
    assert autocast_dtype("cuda:0", "off") is runner.autocast_dtype("fp32", "cuda:0") is None
    devices._warn_emulated_bf16.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with caplog.at_level("WARNING", logger="m3rcr_xr.devices"):
        assert autocast_dtype("cuda:0", "bf16") is torch.bfloat16
    assert caplog.messages[0].startswith("amp='bf16' on cuda:0 (compute capability 7.0)")
    assert "amp='auto' takes float32 here" in caplog.messages[0]
