"""Dask clusters for decloud: one machine (:func:`local_cluster`) or an HPC batch system
(:func:`slurm_cluster`, :func:`pbs_cluster`, thin helpers over dask-jobqueue), and a
client of one that is already running (:func:`connect`).

Every worker made here

- runs in its own process (a ``Nanny``), so that torch's threads and a GPU belong to one
  worker;
- advertises the resource ``GPU=1`` when it owns a GPU, which is what
  ``decloud(..., resources={"GPU": 1})`` asks of its tile tasks (for placement only: a
  worker runs one tile task at a time on its GPU whatever its threads);
- sees only its own GPU (``CUDA_VISIBLE_DEVICES``), so that ``device="auto"`` picks it;
- imports this module as a Dask *preload*: :func:`dask_setup` reads the environment the
  cluster gave the worker (:data:`TORCH_THREADS_ENV`, :data:`PIN_GPU_ENV`) and sets the
  ``torch_threads`` option, so that the workers of a machine together use its cores
  once, not once each.

Examples
--------
>>> from distributed import Client
>>> import m3rcr_xr
>>> cluster = m3rcr_xr.local_cluster()  # doctest: +SKIP
>>> client = Client(cluster)  # doctest: +SKIP
>>> cluster = m3rcr_xr.slurm_cluster("gpu", gpus_per_job=1, cores=8, memory="32GB",
...                                  walltime="01:00:00")  # doctest: +SKIP
>>> cluster.scale(jobs=4)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import (
    InputFileError,
    MissingFileError,
    UsageError,
    argument,
    check_integer,
    check_positive,
)
from ..options import set_options
from ..resources import GPU_RESOURCE

log = logging.getLogger(__name__)

#: environment variable read by each worker at start: its torch intra-op threads
TORCH_THREADS_ENV = "M3RCR_TORCH_THREADS"
#: environment variable: "1" makes the workers of a multi-GPU job take one GPU each
PIN_GPU_ENV = "M3RCR_PIN_GPU"
#: environment variable: "1" for the workers of :func:`local_cluster`, which ignore Ctrl-C
#: (SIGINT): the terminal sends it to the whole process group, and the client, which
#: owns them, closes them itself; each would print a traceback of its own otherwise
LOCAL_WORKER_ENV = "M3RCR_LOCAL_WORKER"
#: the module the workers preload (this one: see :func:`dask_setup`)
PRELOAD = __name__

GpuSpec = str | int | Sequence[int | str]


# ------------------------------------------------------------------------ GPUs
def _visible_devices() -> list[str] | None:
    """The ids of ``CUDA_VISIBLE_DEVICES``, or None when it is not set.

    CUDA stops at the first invalid entry (``-1`` hides every device).
    """
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    ids: list[str] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry or entry.startswith("-"):
            break
        ids.append(entry)
    return ids


def _torch_gpu_count() -> int:
    """CUDA devices torch sees in this process."""
    import torch

    return int(torch.cuda.device_count())


def gpu_devices() -> list[str]:
    """CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    The count comes from torch (``torch.cuda.device_count()``); the ids from
    ``CUDA_VISIBLE_DEVICES`` when it is set (so a batch job's allocation is kept), else
    ``0 .. n-1``.

    Examples
    --------
    >>> gpu_devices()  # doctest: +SKIP
    ['0', '1']
    """
    count = _torch_gpu_count()
    visible = _visible_devices()
    if visible is None:
        return [str(index) for index in range(count)]
    return visible[:count]


def _select_gpus(gpus: GpuSpec) -> list[str]:
    """``"auto"``: every visible GPU; an int: the first ``n`` of them; a list: those ids,
    each among :func:`gpu_devices` (a ``CUDA_VISIBLE_DEVICES`` entry, not torch's index
    within it)."""
    if isinstance(gpus, str):
        if gpus != "auto":
            raise UsageError(f"gpus must be 'auto', a count or a list of ids, not {gpus!r}")
        return gpu_devices()
    found = gpu_devices()
    if isinstance(gpus, int):
        check_integer("gpus", gpus, minimum=0)  # True is no count of GPUs
        if not 0 <= gpus <= len(found):
            raise UsageError(f"gpus={gpus}: this machine has {len(found)} GPU(s) {found}")
        return found[:gpus]
    chosen = [str(device) for device in gpus]
    # a worker given an id it cannot see would advertise GPU=1 and run on the CPU, or
    # on a GPU outside the job's allocation
    unknown = [device for device in chosen if device not in found]
    if unknown:
        raise UsageError(
            f"{argument('gpus', list(gpus))}: no GPU {', '.join(unknown)} here; this process "
            f"may use {found or 'none'} (CUDA_VISIBLE_DEVICES ids)"
        )
    return chosen


# --------------------------------------------------------------------- layout
@dataclass(frozen=True)
class WorkerLayout:
    """How a machine's cores (and GPUs) are shared among worker processes.

    ``torch_threads`` is what each task's torch gets, so that ``n_workers *
    threads_per_worker * torch_threads`` does not exceed the cores.
    """

    n_workers: int
    threads_per_worker: int
    torch_threads: int
    gpus: tuple[str, ...] = ()


def _positive(name: str, value: int | None) -> None:
    if value is not None:
        check_integer(name, value)


def _byte_size(name: str, value: str) -> int:
    """A memory size as Dask reads it (``32GB``, ``16 GiB``), in bytes; a
    :class:`UsageError` naming ``name`` where dask would raise a bare ``ValueError``.

    Examples
    --------
    >>> _byte_size("memory", "2 KiB")
    2048
    """
    from dask.utils import parse_bytes

    try:
        return parse_bytes(value)
    except (ValueError, TypeError) as error:
        raise UsageError(
            f"{argument(name, value)}: expected a memory size such as 32GB or 16GiB"
        ) from error


def cpu_layout(
    cores: int, n_workers: int | None = None, threads_per_worker: int | None = None
) -> WorkerLayout:
    """Split ``cores`` among worker processes (about sqrt(cores) of them by default).

    Examples
    --------
    >>> cpu_layout(32)
    WorkerLayout(n_workers=8, threads_per_worker=4, torch_threads=1, gpus=())
    >>> cpu_layout(8, n_workers=2, threads_per_worker=1)
    WorkerLayout(n_workers=2, threads_per_worker=1, torch_threads=4, gpus=())
    """
    from distributed.deploy.utils import nprocesses_nthreads

    _positive("n_workers", n_workers)
    _positive("threads_per_worker", threads_per_worker)
    if n_workers is None and threads_per_worker is None:
        n_workers, threads_per_worker = nprocesses_nthreads(cores)
    workers = n_workers or max(1, cores // (threads_per_worker or 1))
    threads = threads_per_worker or max(1, cores // workers)
    return WorkerLayout(workers, threads, max(1, cores // (workers * threads)))


def gpu_layout(
    cores: int,
    devices: Sequence[str],
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
) -> WorkerLayout:
    """One worker per GPU, the cores shared among them.

    Examples
    --------
    >>> gpu_layout(16, ["0", "1"])
    WorkerLayout(n_workers=2, threads_per_worker=8, torch_threads=1, gpus=('0', '1'))
    """
    _positive("n_workers", n_workers)
    _positive("threads_per_worker", threads_per_worker)
    if n_workers is not None and n_workers > len(devices):
        raise UsageError(
            f"n_workers={n_workers}: one worker per GPU, and there are "
            f"{len(devices)} ({list(devices)})"
        )
    devices = tuple(devices[:n_workers] if n_workers else devices)
    threads = threads_per_worker or max(1, cores // len(devices))
    torch_threads = max(1, cores // (len(devices) * threads))
    return WorkerLayout(len(devices), threads, torch_threads, devices)


# ---------------------------------------------------------------- local cluster
def _worker_spec(
    layout: WorkerLayout, device: str | None, memory_limit: str | int | float, extra: dict[str, Any]
) -> dict[str, Any]:
    from distributed import Nanny

    env = {
        TORCH_THREADS_ENV: str(layout.torch_threads),
        LOCAL_WORKER_ENV: "1",
        **extra.pop("env", {}),
    }
    options: dict[str, Any] = {
        "nthreads": layout.threads_per_worker,
        "memory_limit": memory_limit,
        "host": "127.0.0.1",
        "dashboard": False,
        "silence_logs": logging.WARN,
        "preload": [PRELOAD, *extra.pop("preload", [])],
        **extra,
    }
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
        options["resources"] = {GPU_RESOURCE: 1, **options.get("resources", {})}
    options["env"] = env
    return {"cls": Nanny, "options": options}


def local_cluster(
    n_workers: int | None = None,
    *,
    gpus: GpuSpec = "auto",
    threads_per_worker: int | None = None,
    memory_limit: str | int | float = "auto",
    dashboard_address: str | None = ":8787",
    **worker_kwargs: Any,
):
    """A Dask cluster of worker processes on this machine, laid out for decloud.

    Parameters
    ----------
    n_workers
        Worker processes. With GPUs: one per GPU (fewer takes the first ones). On the
        CPU: by default about the square root of the cores (``distributed``'s split).
    gpus
        ``"auto"`` (every GPU torch sees, within ``CUDA_VISIBLE_DEVICES``), a count, a
        list of device ids, or 0 for CPU workers. Each GPU worker sees only its own
        device and advertises ``GPU=1``.
    threads_per_worker
        Parallel tasks per worker; default: the cores divided among the workers. The
        cores are those this process may use (``dask.system.CPU_COUNT``: CPU affinity
        and cgroup quotas, as ``distributed.LocalCluster`` counts them), not the
        machine's.
    memory_limit
        Per worker (``"auto"``: the machine's memory shared in proportion to threads).
    dashboard_address
        The scheduler's dashboard; None for none.
    **worker_kwargs
        More ``Nanny`` options (``env``, ``preload`` and ``resources`` are merged).

    Returns
    -------
    distributed.SpecCluster
        A ``LocalCluster`` on the CPU. With GPUs, dask-cuda's ``LocalCUDACluster`` when
        dask-cuda is installed: it also binds each worker to the cores nearest its GPU
        and offers RMM memory pools and UCX/NVLink transfers, which matter on
        multi-socket, multi-GPU machines. Without it, a ``SpecCluster`` of one named
        worker per GPU (``gpu-<id>``), which ``scale`` cannot grow (there is no more
        GPU): the same placement, with no dependency beyond ``distributed``. Either
        way a worker runs one tile task at a time on its GPU, its other threads reading
        and writing (see :func:`m3rcr_xr.runner.device_lock`).

    Examples
    --------
    >>> from distributed import Client
    >>> with local_cluster(gpus=0, dashboard_address=None) as cluster:  # doctest: +SKIP
    ...     client = Client(cluster)
    """
    import dask.system

    if isinstance(memory_limit, str) and memory_limit != "auto":
        _byte_size("memory_limit", memory_limit)  # before any process starts
    # the cores this process may use (affinity, cgroup quota), as distributed counts them
    cores = dask.system.CPU_COUNT
    devices = _select_gpus(gpus)
    if devices:
        layout = gpu_layout(cores, devices, n_workers, threads_per_worker)
        dask_cuda = _dask_cuda()
        if dask_cuda is not None:
            return _cuda_cluster(dask_cuda, layout, memory_limit, dashboard_address, worker_kwargs)
        return _gpu_cluster(layout, memory_limit, dashboard_address, worker_kwargs)
    layout = cpu_layout(cores, n_workers, threads_per_worker)
    log.info(
        "local cluster: %d worker(s) x %d thread(s), torch threads %d",
        layout.n_workers,
        layout.threads_per_worker,
        layout.torch_threads,
    )
    return _cpu_cluster(layout, memory_limit, dashboard_address, worker_kwargs)


def _cpu_cluster(
    layout: WorkerLayout,
    memory_limit: Any,
    dashboard_address: str | None,
    worker_kwargs: dict[str, Any],
):
    from distributed import LocalCluster

    options = _worker_spec(layout, None, memory_limit, dict(worker_kwargs))["options"]
    for key in ("nthreads", "host", "dashboard", "silence_logs"):
        options.pop(key)
    return LocalCluster(
        n_workers=layout.n_workers,
        threads_per_worker=layout.threads_per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address=dashboard_address,
        **options,
    )


def _dask_cuda():
    """The ``dask_cuda`` module, or None when it is not installed."""
    try:
        import dask_cuda
    except ImportError:
        return None
    return dask_cuda


def _cuda_cluster(
    dask_cuda: Any,
    layout: WorkerLayout,
    memory_limit: Any,
    dashboard_address: str | None,
    worker_kwargs: dict[str, Any],
):
    """dask-cuda's ``LocalCUDACluster`` with this module's worker options.

    It sets each worker's ``CUDA_VISIBLE_DEVICES`` itself (its own GPU first) and
    replaces the workers' ``env`` with that alone, so the rest of the environment goes
    through ``distributed.nanny.environ``, which the nannies read when they are made.
    """
    import dask

    options = _worker_spec(layout, None, memory_limit, dict(worker_kwargs))["options"]
    env = options.pop("env")
    for key in ("nthreads", "memory_limit", "host", "dashboard", "silence_logs"):
        options.pop(key)
    options["resources"] = {GPU_RESOURCE: 1, **options.get("resources", {})}
    environ = {**dask.config.get("distributed.nanny.environ", {}), **env}
    log.info(
        "local cluster: dask-cuda, one worker per GPU %s, %d thread(s) each",
        list(layout.gpus),
        layout.threads_per_worker,
    )
    with dask.config.set({"distributed.nanny.environ": environ}):
        return dask_cuda.LocalCUDACluster(
            CUDA_VISIBLE_DEVICES=list(layout.gpus),
            n_workers=layout.n_workers,
            threads_per_worker=layout.threads_per_worker,
            memory_limit=memory_limit,
            host="127.0.0.1",
            dashboard_address=dashboard_address,
            **options,
        )


def _gpu_cluster(
    layout: WorkerLayout,
    memory_limit: Any,
    dashboard_address: str | None,
    worker_kwargs: dict[str, Any],
):
    from distributed import Scheduler, SpecCluster

    workers = {
        f"gpu-{device}": _worker_spec(layout, device, memory_limit, dict(worker_kwargs))
        for device in layout.gpus
    }
    scheduler = {
        "cls": Scheduler,
        "options": {
            "host": "127.0.0.1",
            "dashboard": dashboard_address is not None,
            "dashboard_address": dashboard_address,
        },
    }
    log.info(
        "local cluster: one worker per GPU %s, %d thread(s) each",
        list(layout.gpus),
        layout.threads_per_worker,
    )
    return SpecCluster(
        workers=workers, scheduler=scheduler, name="m3rcr-gpu", silence_logs=logging.WARN
    )


# ---------------------------------------------------------------- worker side
def _rank(name: Any) -> int:
    """The index of a worker among the processes of its job (``--nworkers``
    names them ``<name>-<i>``); 0 for a lone worker."""
    head, sep, tail = str(name).rpartition("-")
    return int(tail) if sep and head and tail.isdigit() else 0


def pin_gpu(name: Any) -> str | None:
    """Restrict this process to one of the job's GPUs, chosen by the worker's rank.

    Must run before CUDA starts in the process (a preload does).
    """
    visible = _visible_devices()
    if not visible:
        return None
    device = visible[_rank(name) % len(visible)]
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    return device


def missing_gpu(worker: Any) -> str | None:
    """Why ``worker``, which advertises the ``GPU`` resource, has no GPU to run on
    (torch sees no CUDA device in its process); None when it has one or advertises none.

    Tasks that ask for ``resources={"GPU": 1}`` land on such a worker and, with
    ``device="auto"``, would run on its CPU without a word.
    """
    if not worker.state.total_resources.get(GPU_RESOURCE):
        return None
    if _torch_gpu_count():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        f"worker {worker.name} advertises {GPU_RESOURCE}=1 but torch sees no CUDA device "
        f"in it (CUDA_VISIBLE_DEVICES={visible!r}, torch {_torch_build()})"
    )


def _torch_build() -> str:
    import torch

    return f"{torch.__version__}, CUDA {torch.version.cuda or 'none'}"


def dask_setup(worker: Any) -> None:
    """Dask preload hook, run in each worker process before any task (see module doc).

    A worker that advertises a GPU it cannot use says so in an error in its log (see
    :func:`missing_gpu`), and its tile tasks with ``device="auto"`` fail naming it
    (:func:`m3rcr_xr.runner.cached_model`): it still starts, since a batch job's worker
    that dies at its start leaves the client waiting without a word.
    """
    threads = os.environ.get(TORCH_THREADS_ENV)
    if threads:
        set_options(torch_threads=int(threads))
    if (
        os.environ.get(LOCAL_WORKER_ENV) == "1"
        and threading.current_thread() is threading.main_thread()
    ):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.environ.get(PIN_GPU_ENV) == "1":
        device = pin_gpu(worker.name)
        log.info("worker %s pinned to GPU %s", worker.name, device)
    problem = missing_gpu(worker)  # after pinning: CUDA starts with the worker's own GPU
    if problem:
        log.error("%s: its tile tasks with device='auto' will fail", problem)


# ----------------------------------------------------------------- batch jobs
def _require_jobqueue():
    try:
        import dask_jobqueue
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError("HPC clusters need dask-jobqueue: pip install 'm3rcr_xr[hpc]'") from error
    return dask_jobqueue


def _job_layout(cores: int, gpus_per_job: int, processes: int | None) -> WorkerLayout:
    _positive("cores", cores)
    _positive("processes", processes)
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
        _byte_size("memory", memory)
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
    if _byte_size("memory", memory) > given:
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
    size = _byte_size("memory", memory)
    options = _jobqueue_kwargs(layout, gpus_per_job, python, kwargs)
    if "resource_spec" not in options:
        gpu_part = f":ngpus={gpus_per_job}" if gpus_per_job else ""
        options["resource_spec"] = (
            f"select=1:ncpus={cores}{gpu_part}:mem={pbs_format_bytes_ceil(size)}"
        )
    return jobqueue.PBSCluster(
        queue=queue, cores=cores, memory=memory, walltime=walltime, **options
    )


# ------------------------------------------------------------- running clusters
#: seconds :func:`connect` waits for a scheduler (``m3rcr --scheduler-timeout``)
SCHEDULER_TIMEOUT = 10.0


def _scheduler_file_address(path: Path, deadline: float) -> str:
    """The address in a scheduler file (``dask scheduler --scheduler-file``), waiting
    until ``deadline`` for the file to appear, as a batch job writes it when it starts."""
    while not path.is_file():
        if time.monotonic() > deadline:
            raise MissingFileError(f"scheduler file {path} does not exist")
        time.sleep(0.1)
    try:
        address = json.loads(path.read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputFileError(
            f"scheduler file {path} is not a Dask scheduler file (no address in it: {err!r})"
        ) from err
    if not isinstance(address, str):
        raise InputFileError(f"scheduler file {path}: address {address!r} is not a string")
    return address


def connect(
    address: str | None = None,
    *,
    scheduler_file: str | os.PathLike[str] | None = None,
    timeout: float = SCHEDULER_TIMEOUT,
):
    """A ``distributed.Client`` of a running Dask cluster, made the default scheduler.

    Give the scheduler's ``address`` (``tcp://host:8786``) or the ``scheduler_file`` it
    wrote (``dask scheduler --scheduler-file``, ``dask_jobqueue``, ``dask-mpi``). Work
    computed while the client is open (``decloud``, ``to_zarr``, ``evaluate``) runs on
    the cluster's workers, which must see the same files as this process (inputs,
    checkpoint, local stores: a shared file system or object storage). Close the client
    when done, or use it as a context manager.

    Parameters
    ----------
    address
        The scheduler's address.
    scheduler_file
        A JSON file with the scheduler's address, instead of ``address``. It may appear
        while :func:`connect` waits (a batch job that is starting).
    timeout
        Seconds to wait for the file and for the scheduler to answer.

    Raises
    ------
    UsageError
        Both or neither of ``address`` and ``scheduler_file``, a bad ``timeout``, or no
        scheduler answered at the address within ``timeout`` (the message names it).
    MissingFileError, InputFileError
        The scheduler file did not appear within ``timeout``, or holds no address.

    Examples
    --------
    >>> from m3rcr_xr.cluster import connect
    >>> with connect("tcp://10.0.0.5:8786") as client:  # doctest: +SKIP
    ...     m3rcr_xr.to_zarr(scene.m3rcr.decloud("dsen2_cr", "weights.pth").to_dataset(),
    ...                      "/shared/decloud.zarr")
    """
    from distributed import Client

    if (address is None) == (scheduler_file is None):
        raise UsageError(
            f"give {argument('address')} or {argument('scheduler_file')}, one of them, "
            f"not {'both' if address is not None else 'neither'}"
        )
    seconds = check_positive("timeout", timeout)
    deadline = time.monotonic() + seconds
    if scheduler_file is not None:
        address = _scheduler_file_address(Path(scheduler_file), deadline)
        where = f"{address} (from {scheduler_file})"
    else:
        where = str(address)
    try:
        client = Client(address, timeout=max(deadline - time.monotonic(), 0.1))
    except (OSError, TimeoutError, ValueError) as err:
        raise UsageError(
            f"no Dask scheduler answered at {where} within {seconds:g} s ({err})"
        ) from err
    log.info("connected to the Dask scheduler at %s (dashboard %s)", where, client.dashboard_link)
    return client
