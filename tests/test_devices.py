"""Devices (m3rcr_xr/devices.py): the autocast dtype of a precision on a device."""

import torch

from m3rcr_xr import devices, runner


def test_autocast_dtype_per_device_and_precision(monkeypatch):
    assert all(devices.autocast_dtype(p, "cpu") is None for p in runner.PRECISIONS)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert devices.autocast_dtype("auto", "cuda:0") is torch.bfloat16
    assert devices.autocast_dtype("bf16", "cuda:0") is torch.bfloat16
    assert devices.autocast_dtype("fp16", "cuda:0") is torch.float16
    assert devices.autocast_dtype("fp32", "cuda:0") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert devices.autocast_dtype("auto", "cuda:0") is None  # no native bf16: float32


def test_bf16_on_a_gpu_that_emulates_it_warns_once(monkeypatch, caplog):
    devices._warn_emulated_bf16.cache_clear()
    # torch counts emulation as support: a V100 (7.0) says it has bf16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with caplog.at_level("WARNING", logger="m3rcr_xr.devices"):
        assert devices.autocast_dtype("auto", "cuda:0") is None
        assert devices.autocast_dtype("fp16", "cuda:0") is torch.float16
        assert caplog.records == []
        for _ in range(3):  # once per device, not once per task
            assert devices.autocast_dtype("bf16", "cuda:0") is torch.bfloat16
    assert [r.getMessage() for r in caplog.records] == [
        "precision='bf16' on cuda:0 (compute capability 7.0): this GPU has no native bf16, "
        "which runs emulated and slower than float32; precision='auto' takes float32 here, "
        "'fp16' is native"
    ]
    caplog.clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with caplog.at_level("WARNING", logger="m3rcr_xr.devices"):
        assert devices.autocast_dtype("bf16", "cuda:1") is torch.bfloat16
    assert caplog.records == []


def test_a_side_stream_is_made_once_per_device_and_purpose(monkeypatch):
    made = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: made.append(device) or object())
    monkeypatch.setattr(devices, "_STREAMS", {})
    uploads = devices.side_stream("cuda:0", "uploads")
    assert devices.side_stream("cuda:0", "uploads") is uploads
    assert devices.side_stream("cuda:0", "captures") is not uploads
    assert devices.side_stream("cuda:1", "uploads") is not uploads
    assert made == ["cuda:0", "cuda:0", "cuda:1"]
