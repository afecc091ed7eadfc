"""Running tiles on a device (m3rcr_xr/runner.py): locks, precision, the model cache."""

import contextlib

import torch

from m3rcr_xr import runner
from m3rcr_xr.runner import ModelRef

SMALL = {"preset": "small"}


def test_device_lock_is_one_per_device_and_none_on_the_cpu():
    assert isinstance(runner.device_lock("cpu"), contextlib.nullcontext)
    lock = runner.device_lock("cuda:0")
    assert lock is runner.device_lock("cuda:0")
    assert lock is not runner.device_lock("cuda:1")


def test_autocast_dtype_per_device_and_precision(monkeypatch):
    assert all(runner.autocast_dtype(p, "cpu") is None for p in runner.PRECISIONS)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert runner.autocast_dtype("auto", "cuda:0") is torch.bfloat16
    assert runner.autocast_dtype("bf16", "cuda:0") is torch.bfloat16
    assert runner.autocast_dtype("fp16", "cuda:0") is torch.float16
    assert runner.autocast_dtype("fp32", "cuda:0") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert runner.autocast_dtype("auto", "cuda:0") is None  # no native bf16: float32


def test_one_cached_model_whatever_the_precision(small_checkpoint):
    runner.clear_model_cache()
    fp32, bf16 = (
        runner.cached_model(ModelRef.create("dsen2_cr", small_checkpoint, SMALL, "cpu", p))[0]
        for p in ("fp32", "auto")
    )
    assert fp32 is bf16
