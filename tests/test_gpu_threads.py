"""benchmarks.gpu_threads: its quick mode end to end on the CPU (the GPU run is by hand)."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import gpu_threads


@pytest.mark.slow
def test_quick_mode_times_every_variant_against_the_raw_loop(capfd):
    report = gpu_threads.main(["--device", "cpu", "--quick", "--repeats", "1"])
    assert json.loads(capfd.readouterr().out) == report  # the JSON object is the whole of stdout
    entry = report.pop("glf_cr:fp32")
    assert report == {"device": "cpu", "quick": True}
    assert entry["raw"]["ratio"] == 1.0
    assert {"run_tiles_9_calls", "decloud_4_threads", "decloud_short_switch"} <= set(entry)
    assert "raw_batch_32" in entry and "raw_cuda_graph" not in entry  # batch 8 by default
    profile = entry.pop("profile")
    for timing in entry.values():
        assert len(timing["s"]) == 1 and timing["s"][0] > 0 and timing["ratio"] > 0
    assert set(profile) == {"raw", f"decloud_{os.cpu_count()}_threads"}
    for run in profile.values():  # a CPU: no device time, no kernel launches
        assert run["wall_s"] > 0 and run["device_busy_s"] == run["launches"] == 0


def test_a_variant_that_cannot_be_set_up_is_reported_with_its_error(monkeypatch):
    def failing(*args):
        return {}, {"raw_cuda_graph": {"error": "RuntimeError: capture failed"}}

    monkeypatch.setattr(gpu_threads, "graphed_variant", failing)
    args = gpu_threads.parse_args(["--device", "cpu", "--quick", "--repeats", "1"])
    entry = gpu_threads.measure("glf_cr", "fp32", args)
    assert entry["raw_cuda_graph"] == {"error": "RuntimeError: capture failed"}
    assert entry["raw"]["ratio"] == 1.0


def test_busy_seconds_is_the_union_of_the_device_spans():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(start, end, device=DeviceType.CUDA, annotation=False):
        span = SimpleNamespace(start=start, end=end)
        return SimpleNamespace(time_range=span, device_type=device, is_user_annotation=annotation)

    events = [
        event(0, 400_000),  # a forward pass, 0.4 s
        event(100_000, 500_000),  # an upload that overlaps it
        event(200_000, 300_000),  # a kernel within both
        event(800_000, 900_000),
        event(0, 2_000_000, annotation=True),  # spans them all: not device work
        event(0, 3_000_000, device=DeviceType.CPU),
    ]
    assert gpu_threads.busy_seconds(events) == 0.6
