"""m3rcr_xr.cluster.gpus: the GPUs this process may use, read as CUDA reads them."""

from __future__ import annotations

import pytest
import torch

from m3rcr_xr import cluster as mc


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,1", ["0", "1"]),
        ("", []),
        ("-1", []),
        ("2, 3,-1,4", ["2", "3"]),
        ("GPU-8f1c,GPU-77aa", ["GPU-8f1c", "GPU-77aa"]),
    ],
)
def test_cuda_visible_devices_is_read_as_cuda_reads_it(monkeypatch, value, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert mc.gpus.visible_devices() == expected


def test_gpu_devices_counts_with_torch_and_keeps_the_visible_ids(monkeypatch):
    monkeypatch.setattr(mc.gpus, "torch_gpu_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert mc.gpu_devices() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert mc.gpu_devices() == ["3", "5"]


def test_no_gpu_here_is_no_gpu():
    assert mc.gpu_devices() == [] or torch.cuda.is_available()
