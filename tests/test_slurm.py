"""decloud on a real single-node Slurm, through :func:`m3rcr_xr.cluster.slurm_cluster`
(and through ``m3rcr decloud --scheduler`` given that cluster's address).

The module starts its own Slurm (munged, slurmctld, slurmd) with ``scripts/slurm-up.sh``
and stops it with ``scripts/slurm-down.sh``, unless ``SLURM_CONF`` already points at a
running controller (then it is used and left running). The node has two fake GPUs
(``gres.conf`` with ``File=/dev/null``): enough for Slurm to schedule ``--gres=gpu:1``
jobs, not to run CUDA, so the GPU jobs decloud with ``device="cpu"``.

Without Slurm (no ``sbatch``, not root, no daemons) the tests skip; with
``M3RCR_REQUIRE_SLURM=1`` (set by ``.ci/run`` under CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, get_task_stream

import m3rcr_xr
from m3rcr_xr.cli import main
from m3rcr_xr.cluster import slurm_cluster
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"

DAEMONS = ("slurmd", "slurmctld", "munged")
pytestmark = pytest.mark.slow


def require_slurm() -> bool:
    """Whether a missing Slurm is a failure (``M3RCR_REQUIRE_SLURM=1``) or a skip."""
    return os.environ.get("M3RCR_REQUIRE_SLURM") == "1"


def unavailable(reason: str) -> None:
    """Skip, or fail under ``M3RCR_REQUIRE_SLURM=1``."""
    if require_slurm():
        pytest.fail(f"{reason} (M3RCR_REQUIRE_SLURM=1)")
    pytest.skip(reason)


def test_a_missing_slurm_skips_unless_required(monkeypatch):
    monkeypatch.delenv("M3RCR_REQUIRE_SLURM", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no sbatch"):
        unavailable("no sbatch")
    monkeypatch.setenv("M3RCR_REQUIRE_SLURM", "1")
    with pytest.raises(pytest.fail.Exception, match="M3RCR_REQUIRE_SLURM=1"):
        unavailable("no sbatch")


# ------------------------------------------------------------------------ Slurm
def _controller_up() -> bool:
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return ping.returncode == 0 and " is UP" in ping.stdout


def _state_dir() -> Path:
    return Path(os.environ.get("M3RCR_SLURM_DIR", "/tmp/m3rcr-slurm"))


def _our_pids(state: Path) -> dict[str, int]:
    files = {name: state / f"{name}.pid" for name in DAEMONS}
    return {name: int(path.read_text()) for name, path in files.items() if path.is_file()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start() -> tuple[str, bool]:
    """Run slurm-up.sh: (SLURM_CONF, whether this call started the daemons)."""
    up = subprocess.run(
        ["bash", str(SCRIPTS / "slurm-up.sh")], capture_output=True, text=True, timeout=120
    )
    if up.returncode != 0:
        unavailable(f"scripts/slurm-up.sh failed:\n{up.stderr}")
    conf = up.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
    return conf, "already running" not in up.stderr


def _stop(state: Path) -> None:
    """Run slurm-down.sh and check that every daemon of ours is gone."""
    pids = _our_pids(state)
    subprocess.run(["bash", str(SCRIPTS / "slurm-down.sh")], check=True, timeout=120)
    left = {name: pid for name, pid in pids.items() if _alive(pid)}
    assert not left, f"still running after slurm-down.sh: {left}"


@pytest.fixture(scope="module")
def slurm() -> Iterator[str]:
    """A running Slurm: its ``SLURM_CONF`` (exported, so the jobs' clients find it)."""
    if shutil.which("sbatch") is None:
        unavailable("sbatch not found: apt-get install slurmctld slurmd slurm-client munge")
    if os.environ.get("SLURM_CONF") and _controller_up():
        yield os.environ["SLURM_CONF"]  # someone else's Slurm: use it, leave it running
        return
    if os.geteuid() != 0 or shutil.which("slurmctld", path="/usr/sbin:/usr/bin") is None:
        unavailable("no running Slurm, and this process cannot start one (needs root)")
    before = os.environ.get("SLURM_CONF")
    conf, started = _start()
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        if started:
            _stop(_state_dir())


# ---------------------------------------------------------------------- decloud
def _cluster(logs: Path, **kwargs):
    return slurm_cluster(
        "debug",
        cores=1,
        memory="1GB",
        walltime="00:10:00",
        log_directory=str(logs),
        death_timeout=30,
        scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"},
        **kwargs,
    )


def _job_ids(cluster) -> list[str]:
    return sorted(job.job_id for job in cluster.workers.values())


def _jobs(cluster) -> dict[str, str]:
    """Our jobs as Slurm sees them: id to "state gres"."""
    ids = ",".join(_job_ids(cluster))
    listing = subprocess.run(
        ["squeue", "-h", "-j", ids, "-o", "%i %T %b"], check=True, capture_output=True, text=True
    ).stdout
    return {line.split()[0]: " ".join(line.split()[1:]) for line in listing.splitlines()}


def _wait_running(cluster, client: Client, n: int) -> None:
    deadline = time.monotonic() + 120
    while len(client.scheduler_info()["workers"]) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{n} workers did not come: jobs {_jobs(cluster)}")
        time.sleep(0.2)


def _decloud_on(client: Client, tiny_checkpoint: Path, **kwargs):
    scene = m3rcr_xr.synthetic_scene((256, 256), seed=4, chunks=128)
    out = m3rcr_xr.decloud(scene, "dsen2_cr", tiny_checkpoint, config=TINY, tile=64, **kwargs)
    with get_task_stream(client) as stream:
        result = client.compute(out.data, optimize_graph=False).result()
    local = out.compute(scheduler="threads").values
    np.testing.assert_allclose(result, local, atol=0.1)
    return {e["worker"] for e in stream.data if "decloud-tiles" in str(e["key"])}


@pytest.fixture(scope="class")
def cpu_jobs(slurm, tmp_path_factory) -> Iterator[tuple]:
    """A cluster of two running CPU jobs and its client, shared by the tests that only
    compute on it (a job's start, and its worker's imports, take seconds). Class-scoped:
    its jobs hold the node's cores, so they must end before other tests ask for jobs."""
    with _cluster(tmp_path_factory.mktemp("logs")) as cluster, Client(cluster) as client:
        cluster.scale(jobs=2)
        _wait_running(cluster, client, 2)
        yield cluster, client


class TestOnTwoCpuJobs:
    """Two tests on one cluster of two CPU jobs (:func:`cpu_jobs`)."""

    def test_decloud_on_two_slurm_jobs_equals_the_local_result(self, cpu_jobs, tiny_checkpoint):
        cluster, client = cpu_jobs
        assert set(_jobs(cluster).values()) == {"RUNNING N/A"}
        job_ids = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert sorted(job_ids.values()) == _job_ids(cluster)
        threads = client.run(lambda: m3rcr_xr.get_options()["torch_threads"])
        assert set(threads.values()) == {1}
        tile_workers = _decloud_on(client, tiny_checkpoint)
        assert tile_workers == set(job_ids)

    def test_the_cli_decloud_runs_on_the_slurm_cluster_it_is_given(
        self, cpu_jobs, tiny_checkpoint, tmp_path
    ):
        cluster, client = cpu_jobs
        scene, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
        m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((128, 128), seed=4, chunks=64), scene)
        config = [f"--config={key}={value}" for key, value in TINY.items()]
        argv = ["decloud", str(scene), str(out), "--checkpoint", str(tiny_checkpoint), *config]
        with get_task_stream(client) as stream:
            code = main([*argv, "--tile", "64", "--scheduler", cluster.scheduler_address])
        assert code == 0
        tile_workers = {e["worker"] for e in stream.data if "decloud-tiles" in str(e["key"])}
        # on the jobs' workers, not in this process (the stream sees the cluster's tasks only)
        assert tile_workers and tile_workers <= set(client.scheduler_info()["workers"])
        assert m3rcr_xr.open_zarr(out)["decloud"].shape == (4, 128, 128)


def test_gpu_jobs_get_a_gres_gpu_and_run_the_gpu_tasks(slurm, tiny_checkpoint, tmp_path):
    # --mem-per-gpu: sbatch refuses it beside the --mem line dask-jobqueue writes
    with _cluster(tmp_path, gpus_per_job=1, mem_per_gpu="1G") as cluster, Client(cluster) as client:
        script = cluster.job_script()
        assert "#SBATCH --gres=gpu:1" in script and "#SBATCH --mem-per-gpu=1G" in script
        assert "#SBATCH --mem=" not in script
        cluster.scale(jobs=2)
        _wait_running(cluster, client, 2)
        assert set(_jobs(cluster).values()) == {"RUNNING gres:gpu:1"}
        workers = client.scheduler_info()["workers"]
        assert all(info["resources"] == {"GPU": 1} for info in workers.values())
        devices = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(devices.values()) == ["0", "1"]  # Slurm gave each job its own
        tile_workers = _decloud_on(client, tiny_checkpoint, resources={"GPU": 1}, device="cpu")
        assert tile_workers == set(workers)
