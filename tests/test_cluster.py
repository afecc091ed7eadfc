"""m3rcr_xr.cluster: the local clusters (m3rcr_xr.cluster.local) and a running one
(m3rcr_xr.cluster.scheduler).

The local clusters are real (worker processes); GPUs are faked by replacing the
detection, since CI has none. :func:`connect` and the command line's ``--scheduler`` run
against a cluster the tests start. The GPUs, layouts, worker preload and job scripts
have test files of their own (test_cluster_gpus.py, test_cluster_layout.py,
test_cluster_workers.py, test_cluster_jobqueue.py); jobs on a real Slurm are in
test_slurm.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import ModuleType

import dask
import distributed
import numpy as np
import pytest
import torch
from distributed import Client, get_task_stream

import m3rcr_xr
from m3rcr_xr import cluster as mc
from m3rcr_xr.cli import main
from m3rcr_xr.cluster import connect
from m3rcr_xr.exceptions import InputFileError, MissingFileError, UsageError
from tests.conftest import TINY

SMALL = {"preset": "small"}
#: the cores local_cluster shares out: those this process may use
CORES = dask.system.CPU_COUNT


# ---------------------------------------------------------------- GPUs chosen
def test_a_gpu_count_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(mc.gpus, "gpu_devices", lambda: ["0"])
    with pytest.raises(UsageError, match="has 1 GPU"):
        mc.local_cluster(gpus=2)
    with pytest.raises(UsageError, match="'auto'"):
        mc.local_cluster(gpus="all")
    with pytest.raises(UsageError, match="gpus=True: must be an integer >= 0, not bool"):
        mc.local_cluster(gpus=True)


def test_gpu_ids_this_process_cannot_use_are_refused(monkeypatch):
    # inside a job given GPUs 2 and 3: torch's index 0 is no id of theirs
    monkeypatch.setattr(mc.gpus, "gpu_devices", lambda: ["2", "3"])
    monkeypatch.setattr(mc.local, "_gpu_cluster", lambda layout, *args: layout.gpus)
    monkeypatch.setattr(mc.local, "_dask_cuda", lambda: None)
    message = r"gpus=\[0, '7'\]: no GPU 0, 7 here; this process may use \['2', '3'\]"
    with pytest.raises(UsageError, match=message):
        mc.local_cluster(gpus=[0, "7"])
    assert mc.local_cluster(gpus=[3]) == ("3",)
    monkeypatch.setattr(mc.gpus, "gpu_devices", lambda: [])
    with pytest.raises(UsageError, match=r"no GPU 0 here; this process may use none"):
        mc.local_cluster(gpus=[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_workers": True}, "n_workers=True: must be an integer >= 1, not bool"),
        ({"threads_per_worker": 0}, "threads_per_worker=0: must be an integer >= 1"),
        ({"memory_limit": "lots"}, "memory_limit='lots': expected a memory size"),
    ],
)
def test_bad_local_cluster_arguments_are_refused_before_any_process(monkeypatch, kwargs, match):
    monkeypatch.setattr(mc.local, "_cpu_cluster", _no_cluster)
    with pytest.raises(UsageError, match=match):
        mc.local_cluster(gpus=0, **kwargs)


def _no_cluster(*args, **kwargs):
    raise AssertionError("a cluster was started")


# ------------------------------------------------------------ local clusters
@pytest.mark.slow
def test_cpu_cluster_shares_the_cores_among_workers(small_checkpoint, forked_workers):
    with (
        forked_workers(),
        mc.local_cluster(2, gpus=0, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        info = client.scheduler_info()["workers"].values()
        assert [w["nthreads"] for w in info] == [1, 1]
        assert all(not w["resources"] for w in info)
        expected = max(1, CORES // 2)
        options = client.run(lambda: m3rcr_xr.get_options()["torch_threads"])
        assert set(options.values()) == {expected}
        scene = m3rcr_xr.synthetic_scene((200, 200), chunks=100)
        out = m3rcr_xr.decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=64)
        result = client.compute(out).result()
        np.testing.assert_allclose(result.values, out.compute(scheduler="threads").values, atol=0.1)
        assert set(client.run(torch.get_num_threads).values()) == {expected}
        # Ctrl-C in a terminal reaches the workers too: they leave it to the client
        ignored = client.run(lambda: signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
        assert set(ignored.values()) == {True}


@pytest.mark.slow
def test_fake_gpus_get_one_pinned_worker_each(monkeypatch, small_checkpoint, forked_workers):
    monkeypatch.setattr(mc.gpus, "gpu_devices", lambda: ["0", "1"])
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # the layout without dask-cuda
    with (
        forked_workers(),
        mc.local_cluster(dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        workers = client.scheduler_info()["workers"]
        names = {info["name"]: address for address, info in workers.items()}
        assert sorted(names) == ["gpu-0", "gpu-1"]
        assert all(info["resources"] == {"GPU": 1} for info in workers.values())
        devices = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
        assert devices == {names["gpu-0"]: "0", names["gpu-1"]: "1"}
        scene = m3rcr_xr.synthetic_scene((300, 300), chunks=100)
        out = m3rcr_xr.decloud(
            scene,
            "dsen2_cr",
            small_checkpoint,
            config=SMALL,
            tile=48,
            resources={"GPU": 1},
            device="cpu",
        )
        with get_task_stream(client) as stream:
            result = client.compute(out.data, optimize_graph=False).result()
        tiles = {e["worker"] for e in stream.data if "decloud-tiles" in str(e["key"])}
        assert tiles == set(workers)
        np.testing.assert_allclose(result, out.compute(scheduler="threads").values, atol=0.1)


# ------------------------------------------------------------------- dask-cuda
class FakeLocalCUDACluster:
    """Records what ``local_cluster`` gives dask-cuda, and the nannies' environment then."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.environ = dict(dask.config.get("distributed.nanny.environ"))


@pytest.fixture
def fake_dask_cuda(monkeypatch):
    module = ModuleType("dask_cuda")
    module.LocalCUDACluster = FakeLocalCUDACluster
    monkeypatch.setitem(sys.modules, "dask_cuda", module)
    return module


def test_dask_cuda_makes_the_gpu_cluster_when_installed(monkeypatch, fake_dask_cuda):
    monkeypatch.setattr(mc.gpus, "gpu_devices", lambda: ["0", "1"])
    cluster = mc.local_cluster(dashboard_address=None, env={"MY_VAR": "x"}, resources={"MEM": 2})
    assert isinstance(cluster, FakeLocalCUDACluster)
    layout = mc.gpu_layout(CORES, ["0", "1"])
    options = cluster.kwargs
    assert options["CUDA_VISIBLE_DEVICES"] == ["0", "1"] and options["n_workers"] == 2
    assert options["threads_per_worker"] == layout.threads_per_worker
    assert options["resources"] == {"GPU": 1, "MEM": 2}
    assert options["preload"][0] == mc.PRELOAD and options["host"] == "127.0.0.1"
    assert "env" not in options  # dask-cuda replaces it: the nannies' environ carries it
    assert cluster.environ[mc.TORCH_THREADS_ENV] == str(layout.torch_threads)
    assert cluster.environ["MY_VAR"] == "x"
    assert "MY_VAR" not in dask.config.get("distributed.nanny.environ")  # set while made only


def test_the_gpu_layout_without_dask_cuda_and_the_cpu_layout_without_gpus(monkeypatch):
    monkeypatch.setattr(mc.local, "_gpu_cluster", lambda *args: "one worker per GPU")
    monkeypatch.setattr(mc.local, "_cpu_cluster", lambda *args: "CPU workers")
    monkeypatch.setattr(mc.gpus, "gpu_devices", lambda: ["0"])
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # not installed
    assert mc.local._dask_cuda() is None
    assert mc.local_cluster() == "one worker per GPU"
    monkeypatch.setitem(sys.modules, "dask_cuda", ModuleType("dask_cuda"))
    assert mc.local_cluster(gpus=0) == "CPU workers"


@pytest.mark.parametrize("gpus", [0, 2])
def test_local_cluster_shares_the_cores_this_process_may_use(monkeypatch, gpus):
    """dask's count (CPU affinity, cgroup quota), not the machine's ``os.cpu_count()``."""
    layouts = []
    monkeypatch.setattr(mc.local, "_cpu_cluster", lambda layout, *args: layouts.append(layout))
    monkeypatch.setattr(mc.local, "_gpu_cluster", lambda layout, *args: layouts.append(layout))
    monkeypatch.setattr(mc.local, "_dask_cuda", lambda: None)
    monkeypatch.setattr(mc.gpus, "gpu_devices", lambda: ["0", "1"])
    monkeypatch.setattr(os, "cpu_count", lambda: 256)
    monkeypatch.setattr(dask.system, "CPU_COUNT", 12)
    mc.local_cluster(gpus=gpus)
    expected = mc.gpu_layout(12, ["0", "1"]) if gpus else mc.cpu_layout(12)
    assert layouts == [expected]


# -------------------------------------------------------- a running cluster: connect
@pytest.fixture(scope="module")
def running_cluster():
    """A cluster started beside the command, as a user's would be (one worker thread pool,
    in this process so that the test can read what its worker did)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster:
        yield cluster


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"  # closed once the block ends


def _scheduler_file(path: Path, address: str) -> Path:
    path.write_text(json.dumps({"type": "Scheduler", "address": address}))
    return path


def test_connect_by_address_or_file_gives_a_default_client(running_cluster, tmp_path):
    address = running_cluster.scheduler_address
    with connect(address) as client:
        assert client.scheduler.address == address
        assert distributed.get_client() is client  # dask's collections compute there
    assert client.status == "closed"
    with connect(scheduler_file=_scheduler_file(tmp_path / "s.json", address)) as client:
        assert client.scheduler.address == address


def test_connect_refuses_both_or_neither_and_a_bad_timeout(tmp_path):
    with pytest.raises(UsageError, match="one of them, not neither"):
        connect()
    with pytest.raises(UsageError, match="not both"):
        connect("tcp://127.0.0.1:1", scheduler_file=tmp_path / "s.json")
    with pytest.raises(UsageError, match="timeout=0"):
        connect("tcp://127.0.0.1:1", timeout=0)


def test_connect_to_a_dead_address_fails_within_the_timeout():
    address = _closed_port()
    start = time.monotonic()
    with pytest.raises(UsageError, match=f"no Dask scheduler answered at {address} within 1 s"):
        connect(address, timeout=1)
    assert time.monotonic() - start < 15  # the default timeout is 30 s


def test_a_missing_or_foreign_scheduler_file_is_named(tmp_path):
    with pytest.raises(MissingFileError, match="scheduler file .*gone.json does not exist"):
        connect(scheduler_file=tmp_path / "gone.json", timeout=0.2)
    (tmp_path / "other.json").write_text('{"workers": []}')
    with pytest.raises(InputFileError, match="other.json is not a Dask scheduler file"):
        connect(scheduler_file=tmp_path / "other.json", timeout=0.2)


def _tasks_on(cluster, run) -> set[str]:
    """The task-name prefixes the cluster's workers ran while ``run()`` ran."""
    with distributed.Client(cluster) as observer, distributed.get_task_stream(observer) as stream:
        assert run() == 0
    return {distributed.utils.key_split(event["key"]) for event in stream.data}


def test_cli_computes_on_a_running_cluster(running_cluster, tmp_path, capsys):
    scene = tmp_path / "in.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((96, 80), chunks=48), scene)
    config = [f"--config={key}={value}" for key, value in TINY.items()]
    by_file = [
        "--scheduler-file",
        str(_scheduler_file(tmp_path / "s.json", running_cluster.scheduler_address)),
    ]
    decloud = ["decloud", str(scene), str(tmp_path / "out.zarr"), "--tile", "32", *config]
    decloud += ["--checkpoint", "untrained"]
    ran = _tasks_on(running_cluster, lambda: main([*decloud, *by_file]))
    assert any(name.startswith("decloud-tiles") for name in ran), ran
    by_address = ["--scheduler", running_cluster.scheduler_address]
    evaluate = ["evaluate", str(scene), "--pred", "cloudy"]
    assert _tasks_on(running_cluster, lambda: main([*evaluate, *by_address]))
    assert "PSNR" in capsys.readouterr().out


def test_cli_with_a_dead_scheduler_exits_2_naming_it_and_writes_nothing(tmp_path, capsys):
    address = _closed_port()
    argv = ["decloud", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")]
    assert main([*argv, "--scheduler", address, "--scheduler-timeout", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("m3rcr decloud: error: no Dask scheduler answered at " + address)
    assert "\n" not in error and not (tmp_path / "out.zarr").exists()


def test_cli_scheduler_options_exclude_each_other(tmp_path, capsys):
    argv = ["ingest", "a", "b", "--scheduler", "tcp://x:1", "--scheduler-file", "s.json"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
