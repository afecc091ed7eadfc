"""m3rcr_xr.cluster.workers: what the Dask preload does in each worker process (torch
threads, GPU pinning, Ctrl-C, a GPU advertised but missing)."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import distributed
import pytest

import m3rcr_xr
from m3rcr_xr import cluster as mc
from m3rcr_xr.exceptions import UsageError


def test_the_workers_preload_the_package_which_exports_the_hook():
    """Job scripts and ``dask worker --preload m3rcr_xr.cluster`` name the package, not
    the module the hook is written in: dask runs the ``dask_setup`` it finds there."""
    from distributed.preloading import Preload

    assert mc.PRELOAD == "m3rcr_xr.cluster"
    preload = Preload(None, mc.PRELOAD, [], None)
    assert preload.module.dask_setup is mc.workers.dask_setup


def test_dask_setup_sets_torch_threads_and_pins_by_rank(monkeypatch):
    monkeypatch.setenv(mc.TORCH_THREADS_ENV, "3")
    monkeypatch.setenv(mc.PIN_GPU_ENV, "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with m3rcr_xr.set_options(torch_threads=None):
        mc.dask_setup(_worker("SLURMCluster-7-1"))
        assert m3rcr_xr.get_options()["torch_threads"] == 3
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"


def test_only_the_workers_of_a_local_cluster_ignore_ctrl_c(monkeypatch):
    """A local cluster's workers leave SIGINT to the client that owns them (each printed
    a traceback of its own on Ctrl-C); a worker started otherwise (``dask worker
    --preload``, a batch job's) still stops on it."""
    before = signal.getsignal(signal.SIGINT)
    try:
        monkeypatch.delenv(mc.LOCAL_WORKER_ENV, raising=False)
        mc.dask_setup(_worker("cpu-worker"))
        assert signal.getsignal(signal.SIGINT) is before
        monkeypatch.setenv(mc.LOCAL_WORKER_ENV, "1")
        mc.dask_setup(_worker("cpu-worker"))
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    spec = mc.local._worker_spec(mc.cpu_layout(2, 1), None, "1GiB", {})
    assert spec["options"]["env"][mc.LOCAL_WORKER_ENV] == "1"


def _worker(name: str, **resources: float) -> SimpleNamespace:
    """What the preload reads of a Dask worker."""
    return SimpleNamespace(name=name, state=SimpleNamespace(total_resources=resources))


def test_a_worker_advertising_a_gpu_torch_cannot_see_logs_an_error(monkeypatch, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.setattr(mc.workers, "torch_gpu_count", lambda: 0)
    with caplog.at_level("ERROR", logger="m3rcr_xr.cluster"):
        mc.dask_setup(_worker("cpu-worker"))  # no GPU asked: none missing
        assert caplog.records == []
        mc.dask_setup(_worker("gpu-7", GPU=1))
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "worker gpu-7 advertises GPU=1 but torch sees no CUDA device in it "
        "(CUDA_VISIBLE_DEVICES='7', torch "
    )
    monkeypatch.setattr(mc.workers, "torch_gpu_count", lambda: 1)
    assert mc.missing_gpu(_worker("gpu-0", GPU=1)) is None


def test_device_auto_on_a_worker_without_its_gpu_fails_naming_it(monkeypatch):
    from m3rcr_xr import runner

    runner.clear_model_cache()
    monkeypatch.setattr(mc.workers, "torch_gpu_count", lambda: 0)
    monkeypatch.setattr(distributed, "get_worker", lambda: _worker("gpu-7", GPU=1))
    ref = runner.ModelRef.create("dsen2_cr", "untrained", config={"preset": "small"})
    with pytest.raises(UsageError, match=r"device='auto' would run on the CPU: worker gpu-7 "):
        runner.cached_model(ref)
    explicit = runner.ModelRef.create(
        "dsen2_cr", "untrained", config={"preset": "small"}, device="cpu"
    )
    assert runner.cached_model(explicit)[1] == "cpu"  # the CPU asked for: it runs there
    monkeypatch.setattr(distributed, "get_worker", lambda: _worker("cpu-worker"))
    assert runner.cached_model(ref)[1] == "cpu"
    runner.clear_model_cache()


@pytest.mark.parametrize(
    ("name", "rank"),
    [("job-0", 0), ("job-3", 3), ("job", 0), ("tcp://1.2.3.4:5", 0), (7, 0), ("-2", 0)],
)
def test_rank_comes_from_the_worker_name(name, rank):
    assert mc.workers._rank(name) == rank
