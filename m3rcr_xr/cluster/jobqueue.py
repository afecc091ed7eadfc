"""Dask clusters of HPC batch jobs (:func:`slurm_cluster`, :func:`pbs_cluster`): thin
helpers over dask-jobqueue whose jobs carry decloud's workers.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from ..exceptions import UsageError, argument, check_integer
from ..resources import GPU_RESOURCE
from .layout import WorkerLayout, byte_size, check_count, cpu_layout, gpu_layout
from .workers import PIN_GPU_ENV, PRELOAD, TORCH_THREADS_ENV


def _require_jobqueue():
    try:
        import dask_jobqueue
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError("HPC clusters need dask-jobqueue: pip install 'm3rcr_xr[hpc]'") from error
    return dask_jobqueue


def _job_layout(cores: int, gpus_per_job: int, processes: int | None) -> WorkerLayout:
    check_count("cores", cores)
    check_count("processes", processes)
    check_integer("gpus_per_job", gpus_per_job, minimum=0)
    if gpus_per_job > cores:  # each worker needs a thread: --nthreads 0 otherwise
        raise UsageError(
            f"gpus_per_job={gpus_per_job} > cores={cores}: a job runs one worker process "
            "per GPU, each on a core of its own"
        )
    if gpus_per_job:
        if processes not in (None, gpus_per_job):
            raise UsageError(
                f"processes={processes} with gpus_per_job={gpus_per_job}: "
                "a job runs one worker process per GPU"
            )
        return gpu_layout(cores, [str(i) for i in range(gpus_per_job)])
    if processes is not None and processes > cores:
        raise UsageError(f"processes={processes} > cores={cores}")
    return cpu_layout(cores, processes)


def _jobqueue_kwargs(
    layout: WorkerLayout, gpus_per_job: int, python: str | None, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """What every job needs, added to the caller's own lists (never replacing them)."""
    prologue = [f"export {TORCH_THREADS_ENV}={layout.torch_threads}"]
    worker_args = ["--preload", PRELOAD]
    if gpus_per_job:
        worker_args += ["--resources", f"{GPU_RESOURCE}=1"]
    if gpus_per_job > 1:
        prologue.append(f"export {PIN_GPU_ENV}=1")
    return {
        **kwargs,
        "processes": layout.n_workers,
        "python": python or sys.executable,
        "job_script_prologue": [*kwargs.get("job_script_prologue", []), *prologue],
        "worker_extra_args": [*kwargs.get("worker_extra_args", []), *worker_args],
    }


def slurm_cluster(
    queue: str | None,
    *,
    gpus_per_job: int = 0,
    cores: int,
    memory: str | None = None,
    walltime: str,
    processes: int | None = None,
    mem_per_gpu: str | None = None,
    python: str | None = None,
    **kwargs: Any,
):
    """A ``dask_jobqueue.SLURMCluster`` whose jobs carry decloud's workers.

    Parameters
    ----------
    queue
        Slurm partition (``-p``); None for the default one.
    gpus_per_job
        GPUs each job asks for (``--gres=gpu:N``); the job then runs one worker process
        per GPU, each pinned to its GPU and advertising ``GPU=1``.
    cores, memory, walltime
        Per job, as dask-jobqueue takes them (``memory`` is shared among the job's
        workers as their Dask memory limit, ``--memory-limit``, and written as
        ``--mem``). With ``mem_per_gpu``, ``memory`` defaults to what Slurm gives the
        job (``mem_per_gpu`` x ``gpus_per_job``) and may not be more.
    processes
        Worker processes per job on the CPU (default: about sqrt(cores)); with GPUs it
        is ``gpus_per_job``.
    mem_per_gpu
        Ask for memory per GPU instead (``--mem-per-gpu``, Slurm's units: ``16G``,
        ``512M``, a bare number in MiB); the ``--mem`` line that dask-jobqueue always
        writes is then left out, as Slurm refuses both (dask-jobqueue#698). The workers'
        memory limit comes from it, so that Dask spills and pauses before Slurm's
        cgroup ends the job.
    python
        The workers' Python; default this one (``sys.executable``), so that jobs import
        the same m3rcr_xr.
    **kwargs
        Passed to ``SLURMCluster`` (``account``, ``log_directory``, ``job_extra_directives``,
        ``worker_extra_args``, ``job_script_prologue``...); lists are extended, not replaced.

    Returns
    -------
    dask_jobqueue.SLURMCluster
        No job is submitted yet: ``cluster.scale(jobs=n)`` or ``cluster.adapt(...)``.

    Raises
    ------
    UsageError
        A count that is not an integer (``True`` included) or out of range, more GPUs
        or processes than ``cores``, a ``memory`` Dask cannot read, ``mem_per_gpu``
        without ``gpus_per_job``, in units Slurm does not take, or less than ``memory``
        per job.

    Examples
    --------
    >>> cluster = slurm_cluster("gpu", gpus_per_job=1, cores=8, memory="32GB",
    ...                         walltime="01:00:00")  # doctest: +SKIP
    >>> print(cluster.job_script())  # doctest: +SKIP
    """
    jobqueue = _require_jobqueue()
    layout = _job_layout(cores, gpus_per_job, processes)
    if memory is not None:
        byte_size("memory", memory)
    options = _jobqueue_kwargs(layout, gpus_per_job, python, kwargs)
    directives = list(kwargs.get("job_extra_directives", []))
    if gpus_per_job:
        directives.append(f"--gres=gpu:{gpus_per_job}")
    if mem_per_gpu is not None:
        if not gpus_per_job:
            raise UsageError("mem_per_gpu needs gpus_per_job >= 1")
        directives.append(f"--mem-per-gpu={mem_per_gpu}")
        options["job_directives_skip"] = [*kwargs.get("job_directives_skip", []), "--mem="]
        memory = _job_memory(memory, mem_per_gpu, gpus_per_job)
    options["job_extra_directives"] = directives
    return jobqueue.SLURMCluster(
        queue=queue, cores=cores, memory=memory, walltime=walltime, **options
    )


#: Slurm's memory units (binary; a bare number is MiB)
_SLURM_UNITS = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _slurm_bytes(name: str, text: str) -> int:
    """A Slurm memory size (``16G``, ``512M``, ``2048``: MiB) in bytes.

    Examples
    --------
    >>> _slurm_bytes("mem_per_gpu", "16G") == 16 * 2**30
    True
    """
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)\s*", str(text), flags=re.IGNORECASE)
    if match is None:
        raise UsageError(
            f"{argument(name, text)}: expected a Slurm memory size such as 16G or 512M"
        )
    return int(match[1]) * _SLURM_UNITS[match[2].upper()]


def _job_memory(memory: str | None, mem_per_gpu: str, gpus_per_job: int) -> str:
    """The job's ``memory`` for dask-jobqueue with ``--mem-per-gpu``: what Slurm gives
    the job, or less; its workers' memory limits are shares of it."""
    from dask.utils import format_bytes

    given = _slurm_bytes("mem_per_gpu", mem_per_gpu) * gpus_per_job
    if memory is None:
        return str(given)
    if byte_size("memory", memory) > given:
        raise UsageError(
            f"{argument('memory', memory)} is more than Slurm gives the job "
            f"({argument('mem_per_gpu', mem_per_gpu)} x {argument('gpus_per_job', gpus_per_job)}"
            f" = {format_bytes(given)}): the workers would not spill or pause before "
            f"Slurm ends the job; leave {argument('memory')} out or lower it"
        )
    return memory


def pbs_cluster(
    queue: str | None,
    *,
    gpus_per_job: int = 0,
    cores: int,
    memory: str,
    walltime: str,
    processes: int | None = None,
    python: str | None = None,
    **kwargs: Any,
):
    """A ``dask_jobqueue.PBSCluster`` whose jobs carry decloud's workers.

    As :func:`slurm_cluster`; the GPUs are asked for in the PBS Pro select statement
    (``-l select=1:ncpus=C:ngpus=G:mem=M``). Pass ``resource_spec`` for another form
    (Torque: ``nodes=1:ppn=C:gpus=G``).

    Returns
    -------
    dask_jobqueue.PBSCluster
        No job is submitted yet: ``cluster.scale(jobs=n)``.
    """
    jobqueue = _require_jobqueue()
    from dask_jobqueue.pbs import pbs_format_bytes_ceil

    layout = _job_layout(cores, gpus_per_job, processes)
    size = byte_size("memory", memory)
    options = _jobqueue_kwargs(layout, gpus_per_job, python, kwargs)
    if "resource_spec" not in options:
        gpu_part = f":ngpus={gpus_per_job}" if gpus_per_job else ""
        options["resource_spec"] = (
            f"select=1:ncpus={cores}{gpu_part}:mem={pbs_format_bytes_ceil(size)}"
        )
    return jobqueue.PBSCluster(
        queue=queue, cores=cores, memory=memory, walltime=walltime, **options
    )
