"""benchmarks.gpu_check: its smoke mode end to end on the CPU, and its pieces.

The check itself runs on a GPU (``scripts/gpu-check.sh``); here every part runs but the
CUDA calls, so that the one GPU run it gets does not fail on the rest.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

import m3rcr_xr
from benchmarks import gpu_check
from benchmarks.reference import NAMES, fill_reference_parameters_
from m3rcr_xr import models
from m3rcr_xr.tiling import make_plan


@pytest.mark.slow
def test_smoke_mode_runs_every_part_on_the_cpu(tmp_path, capfd, forked_workers):
    # in this process: a fresh interpreter would import torch and m3rcr_xr again (seconds)
    out = tmp_path / "out" / "gpu_check.json"
    with forked_workers():
        report = gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)])
    assert json.loads(capfd.readouterr().out) == report  # the JSON object is the whole of stdout
    assert json.loads(out.read_text()) == report
    assert set(report) == {
        *("device", "quick", "skipped", "part_seconds", "elapsed_s", "goals"),
        *gpu_check.PARTS,
    }
    assert set(report["part_seconds"]) == set(gpu_check.PARTS)
    assert gpu_check.failures(report) == []
    assert report["skipped"] == ["golden: no --golden-models"]  # slow networks on a CPU
    assert set(report["throughput"]) == {f"{name} fp32" for name in NAMES}
    for entry in report["throughput"].values():
        assert entry["ratio"] > 0 and entry["decloud_finite"]
        assert entry["tiles"] > 0 and len(entry["raw_s"]) == len(entry["decloud_s"]) == 1
        assert entry["same_batches"] and entry["decloud_batches"] == entry["raw_batches"]
        assert sum(int(k) * v for k, v in entry["decloud_batches"].items()) == entry["tiles"]
        assert entry["cuda_graphs"] == []  # none on a CPU
    cluster = report["cluster"]
    assert cluster["tiles_run"] == cluster["tiles"] > 1
    assert cluster["every_tile_on_its_worker_device"] and cluster["finite"]
    assert all(report["memory"][name]["largest_batch_run"] == 2 for name in NAMES)
    assert report["demo"]["size"] == 128 and np.isfinite(report["demo"]["psnr_all"])
    assert "cpu_reference" not in report["demo"]  # none given
    for name in NAMES:  # a straight run, and one stopped halfway and resumed: the same
        entry = report["train"][name]
        assert entry["finite"] and entry["steps_per_s"] > 0
        assert entry["repeat_exact"] and entry["resume_exact"], entry
    assert report["goals"]["ratio"]["measured"] == "3 of 3"


def test_parts_runs_only_the_parts_named(capfd):
    args = [
        "--device",
        "cpu",
        "--quick",
        "--models",
        "dsen2_cr",
        "--parts",
        "machine",
        "throughput",
    ]
    report = gpu_check.main(args)
    capfd.readouterr()
    assert {"machine", "throughput"} <= set(report)
    assert not {"golden", "cluster", "memory"} & set(report)
    assert set(report["throughput"]) == {"dsen2_cr fp32"}
    assert report["goals"]["ratio"]["measured"] == "1 of 1"
    assert report["goals"]["fp32_vs_golden"]["measured"] == "0 of 0"


def test_demo_tables_are_compared_column_by_column_on_their_rows(tmp_path):
    reference = pd.DataFrame(
        {
            "stratum": ["all", "all"],
            "landcover_class": ["water", "all"],
            "PSNR": [30.0, np.nan],
            "n_pixels": [5, 6],
            "n_nodata": [0, 2],
        }
    )
    ours = reference.iloc[::-1].copy()  # the rows in another order
    ours.loc[0, "PSNR"] = 30.25
    expected = {"PSNR": 0.25, "n_pixels": 0.0, "n_nodata": 0.0}
    assert gpu_check.table_differences(ours, reference) == expected
    ours.loc[0, "PSNR"] = np.nan  # NaN on one side only
    assert gpu_check.table_differences(ours, reference)["PSNR"] == np.inf
    assert gpu_check.table_differences(ours.iloc[:1], reference) == "rows differ"
    assert gpu_check.table_differences(ours.drop(columns="n_nodata"), reference).startswith(
        "columns"
    )
    for folder in ("out", "ref"):
        (tmp_path / folder).mkdir()
        for name in gpu_check.DEMO_TABLES:
            reference.to_csv(tmp_path / folder / name, index=False)
    differences = gpu_check.demo_differences(tmp_path / "out", tmp_path / "ref")
    zeros = dict.fromkeys(expected, 0.0)
    assert differences == dict.fromkeys(gpu_check.DEMO_TABLES, zeros)
    bigger = reference.assign(n_pixels=reference.n_pixels * 4)  # a demo of another size
    bigger.to_csv(tmp_path / "ref" / "metrics.csv", index=False)
    message = gpu_check.demo_differences(tmp_path / "out", tmp_path / "ref")
    assert message == "not compared: the reference demo has 26 pixels, this one 8"


def test_golden_errors_compare_the_tile_path_with_the_reference(tmp_path):
    net = fill_reference_parameters_(models.build("dsen2_cr", preset="small"))
    inputs = torch.rand(1, 6, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = net(inputs[:, :4], inputs[:, 4:]).numpy()
    np.save(tmp_path / "input_cloudy.npy", inputs[:, :4].numpy())
    np.save(tmp_path / "input_sar.npy", inputs[:, 4:].numpy())
    np.save(tmp_path / "output_dsen2_cr.npy", expected)
    small = {"preset": "small"}
    errors = gpu_check.golden_errors(tmp_path, "dsen2_cr", small, "cpu", ("fp32",))
    assert errors["fp32_vs_golden"] < 1e-6 and errors["fp32_vs_golden_residual"] < 1e-5
    assert errors["fp32_graph_vs_eager"] == 0.0  # no graphs on a CPU: eager twice
    np.save(tmp_path / "output_dsen2_cr.npy", expected * 1.01)  # a reference 1 % off
    errors = gpu_check.golden_errors(tmp_path, "dsen2_cr", small, "cpu", ("fp32",))
    assert 0.009 < errors["fp32_vs_golden"] < 0.011


def test_memory_sweep_stops_where_a_batch_does_not_fit():
    def run(batch: int) -> float:
        if batch > 8:
            raise torch.cuda.OutOfMemoryError("fake: out of memory")
        return 100.0 + 10.0 * batch

    later = time.perf_counter() + 60
    sweep = gpu_check.memory_sweep(run, max_batch=1024, deadline=later)
    assert sweep["stopped_by"] == "out of memory" and sweep["largest_batch_run"] == 8
    assert sweep["peak_mib"] == {"1": 110.0, "2": 120.0, "4": 140.0, "8": 180.0}
    assert gpu_check.fitted_largest_batch(sweep["peak_mib"], free_mib=1100.0) == 100
    assert gpu_check.memory_sweep(run, max_batch=4, deadline=later)["stopped_by"] == "max_batch"
    hurried = gpu_check.memory_sweep(run, max_batch=1024, deadline=time.perf_counter())
    assert hurried["stopped_by"] == "time" and hurried["largest_batch_run"] == 1


def test_memory_sweep_stops_at_other_device_errors():
    def run(batch: int) -> float:
        if batch == 4:
            raise RuntimeError("CUBLAS_STATUS_ALLOC_FAILED")
        return float(batch)

    sweep = gpu_check.memory_sweep(run, max_batch=64, deadline=time.perf_counter() + 60)
    assert sweep["largest_batch_run"] == 2 and "CUBLAS_STATUS_ALLOC_FAILED" in sweep["stopped_by"]
    assert gpu_check.fitted_largest_batch({"1": 5.0}, 100.0) is None  # one point: no line


@pytest.mark.parametrize(
    ("seconds_per_tile", "group", "cap", "side"),
    [
        (0.01, 4, 28, 12),  # 200 tiles in 2 s: 14 a side, rounded down to whole groups
        (0.0001, 4, 28, 28),  # fast: the largest scene
        (10.0, 4, 28, 4),  # slow: one group at least
        (0.01, 18, 4, 4),  # groups larger than the scene: as large as it is
    ],
)
def test_grid_side_takes_whole_groups_under_the_cap(seconds_per_tile, group, cap, side):
    assert gpu_check.grid_side(seconds_per_tile, 2.0, group, cap) == side


def test_goals_and_failures_from_what_was_measured():
    report = {
        "throughput": {
            "a fp32": {"ratio": 0.95},
            "b fp32": {"ratio": 0.85},
            "c fp32": {"error": "x"},
        },
        "golden": {"a": {"fp32_vs_golden": 2e-4, "bf16_vs_fp32": 3e-3}},
    }
    summary = gpu_check.goals(report, {"ratio": 3, "bf16_vs_fp32": 1, "fp32_vs_golden": 1})
    assert summary["ratio"] == {"goal": 0.9, "worst": 0.85, "met": False, "measured": "2 of 3"}
    assert summary["bf16_vs_fp32"]["met"] and summary["fp32_vs_golden"]["met"]
    nothing = gpu_check.goals({}, {"ratio": 3, "bf16_vs_fp32": 0, "fp32_vs_golden": 0})
    assert nothing["ratio"] == {"goal": 0.9, "worst": None, "met": None, "measured": "0 of 3"}
    assert gpu_check.failures(report) == ["throughput c fp32"]


def test_the_raw_loop_in_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    model = models.build("dsen2_cr", n_resblocks=1, n_feats=8).eval()
    tiles = np.random.default_rng(0).random((3, 6, 24, 24), np.float32)
    plain = gpu_check.raw_loop(model, tiles, 2, "cpu", "fp32")
    model = model.to(memory_format=torch.channels_last)
    last = gpu_check.raw_loop(model, tiles, 2, "cpu", "fp32", channels_last=True)
    np.testing.assert_allclose(last, plain, rtol=1e-5, atol=1e-6)


def test_counted_batches_are_those_decloud_runs():
    scene = m3rcr_xr.synthetic_scene((100, 100), seed=1, chunks=1024)[["cloudy", "sar"]]
    out = m3rcr_xr.decloud(
        scene, "dsen2_cr", "untrained", config={"preset": "small"}, tile=32, batch_size=8
    )
    with gpu_check.counted_batches() as batches:
        out.data.compute(scheduler="threads")
    plan = make_plan(32, 4, 100, 100)  # 4 x 4 tiles: one group, one task
    assert dict(batches) == gpu_check.batch_sizes(plan.shape[0] * plan.shape[1], 8) == {8: 2}
    assert gpu_check.batch_sizes(3, 8) == {3: 1} and gpu_check.batch_sizes(25, 8) == {8: 3, 1: 1}
