"""m3rcr_xr.cluster.jobqueue: the job scripts of Slurm and PBS clusters (written, not
submitted: jobs on a real Slurm are in test_slurm.py)."""

from __future__ import annotations

import re
import sys

import pytest

from m3rcr_xr import cluster as mc
from m3rcr_xr.exceptions import UsageError


def _directives(script: str, prefix: str = "#SBATCH") -> list[str]:
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith(prefix)]


def test_slurm_job_asks_for_gpus_and_advertises_them():
    with mc.slurm_cluster(
        "gpu",
        gpus_per_job=2,
        cores=8,
        memory="16GB",
        walltime="00:30:00",
        job_extra_directives=["--exclusive"],
    ) as cluster:
        script = cluster.job_script()
    directives = _directives(script)
    assert "--gres=gpu:2" in directives and "--exclusive" in directives
    assert "-p gpu" in directives and any(d.startswith("--mem=") for d in directives)
    command = script.strip().splitlines()[-1]
    assert command.startswith(f"{sys.executable} -m distributed.cli.dask_worker")
    assert "--nworkers 2" in command and "--nthreads 4" in command
    assert "--resources GPU=1" in command and "--preload m3rcr_xr.cluster" in command
    assert f"export {mc.PIN_GPU_ENV}=1" in script
    assert f"export {mc.TORCH_THREADS_ENV}=1" in script


def test_slurm_mem_per_gpu_drops_the_mem_line():
    with mc.slurm_cluster(
        None, gpus_per_job=1, cores=4, memory="8GB", walltime="01:00:00", mem_per_gpu="8G"
    ) as cluster:
        directives = _directives(cluster.job_script())
    assert "--mem-per-gpu=8G" in directives and "--gres=gpu:1" in directives
    assert not any(re.match(r"--mem=", d) for d in directives)


def _memory_limits(script: str) -> list[str]:
    words = script.strip().splitlines()[-1].split()
    return [words[i + 1] for i, word in enumerate(words) if word == "--memory-limit"]


def test_slurm_mem_per_gpu_sizes_the_workers_memory_limit():
    """Slurm gives the job mem_per_gpu x GPUs: the workers' limits share that, not more."""
    job = {"gpus_per_job": 2, "cores": 8, "walltime": "01:00:00", "mem_per_gpu": "16G"}
    with mc.slurm_cluster("gpu", **job) as cluster:
        assert _memory_limits(cluster.job_script()) == ["16.00GiB"]  # a worker per GPU
    with mc.slurm_cluster("gpu", **job, memory="20GB") as cluster:  # less: the user's
        assert _memory_limits(cluster.job_script()) == ["9.31GiB"]  # 10 GB
    with pytest.raises(UsageError, match=r"memory='64GB' is more than Slurm gives.*32\.00 GiB"):
        mc.slurm_cluster("gpu", **job, memory="64GB")
    with pytest.raises(UsageError, match="mem_per_gpu='16GB': expected a Slurm memory size"):
        mc.slurm_cluster("gpu", **{**job, "mem_per_gpu": "16GB"})


def test_slurm_cpu_job_has_no_gpu_and_sets_torch_threads():
    with mc.slurm_cluster(
        "cpu", cores=8, memory="16GB", walltime="01:00:00", processes=2
    ) as cluster:
        script = cluster.job_script()
    assert "gres" not in script and "GPU=" not in script and mc.PIN_GPU_ENV not in script
    assert "--nworkers 2" in script and "--nthreads 4" in script
    assert f"export {mc.TORCH_THREADS_ENV}=1" in script


def test_bad_job_arguments_are_refused():
    with pytest.raises(UsageError, match="one worker process per GPU"):
        mc.slurm_cluster(
            "q", gpus_per_job=2, processes=1, cores=4, memory="8GB", walltime="01:00:00"
        )
    with pytest.raises(UsageError, match="mem_per_gpu needs"):
        mc.slurm_cluster("q", cores=4, memory="8GB", walltime="01:00:00", mem_per_gpu="1G")
    with pytest.raises(UsageError, match="gpus_per_job"):
        mc.pbs_cluster("q", gpus_per_job=-1, cores=4, memory="8GB", walltime="01:00:00")


@pytest.mark.parametrize("make", [mc.slurm_cluster, mc.pbs_cluster])
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gpus_per_job": True}, "gpus_per_job=True: must be an integer >= 0, not bool"),
        ({"gpus_per_job": 4, "cores": 2}, "gpus_per_job=4 > cores=2"),
        ({"processes": True}, "processes=True: must be an integer >= 1, not bool"),
        ({"cores": True}, "cores=True: must be an integer >= 1, not bool"),
        ({"memory": "lots"}, "memory='lots': expected a memory size such as 32GB"),
    ],
)
def test_bad_job_sizes_are_refused_naming_the_argument(make, kwargs, match):
    job = {"cores": 8, "memory": "32GB", "walltime": "01:00:00", **kwargs}
    with pytest.raises(UsageError, match=match):
        make("q", **job)


def test_slurm_memory_beside_mem_per_gpu_must_be_a_size():
    with pytest.raises(UsageError, match="memory='lots': expected a memory size"):
        mc.slurm_cluster(
            "q", gpus_per_job=2, cores=8, mem_per_gpu="16G", memory="lots", walltime="01:00:00"
        )


def test_pbs_job_asks_for_gpus_in_the_select_statement():
    with mc.pbs_cluster(
        "gpuq", gpus_per_job=1, cores=4, memory="8GB", walltime="01:00:00"
    ) as cluster:
        script = cluster.job_script()
    assert re.search(r"^#PBS -l select=1:ncpus=4:ngpus=1:mem=\d+MB$", script, re.MULTILINE)
    assert "--resources GPU=1" in script and "--preload m3rcr_xr.cluster" in script
    with mc.pbs_cluster(
        "q", cores=4, memory="8GB", walltime="01:00:00", resource_spec="nodes=1:ppn=4"
    ) as cluster:
        assert "#PBS -l nodes=1:ppn=4" in cluster.job_script()
