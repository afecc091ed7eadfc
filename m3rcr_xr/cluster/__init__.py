"""Dask clusters for decloud, on one machine or an HPC batch system.

One machine (:func:`local_cluster`) or an HPC batch system (:func:`slurm_cluster`,
:func:`pbs_cluster`, thin helpers over dask-jobqueue), and a client of one that is
already running (:func:`connect`).

Every worker made here

- runs in its own process (a ``Nanny``), so that torch's threads and a GPU belong to one
  worker;
- advertises the resource ``GPU=1`` when it owns a GPU, which is what
  ``decloud(..., resources={"GPU": 1})`` asks of its tile tasks (for placement only: a
  worker runs one tile task at a time on its GPU whatever its threads);
- sees only its own GPU (``CUDA_VISIBLE_DEVICES``), so that ``device="auto"`` picks it;
- imports this package as a Dask *preload*: :func:`dask_setup` reads the environment the
  cluster gave the worker (:data:`TORCH_THREADS_ENV`, :data:`PIN_GPU_ENV`) and sets the
  ``torch_threads`` option, so that the workers of a machine together use its cores
  once, not once each.

Its modules: :mod:`~m3rcr_xr.cluster.gpus` finds the GPUs this process may use,
:mod:`~m3rcr_xr.cluster.layout` shares cores and GPUs among worker processes,
:mod:`~m3rcr_xr.cluster.workers` is what runs in each worker (the preload hook and the
environment it reads), :mod:`~m3rcr_xr.cluster.local` makes the clusters of this machine,
:mod:`~m3rcr_xr.cluster.jobqueue` those of batch jobs, and
:mod:`~m3rcr_xr.cluster.scheduler` connects to one that is running.

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

from .gpus import GpuSpec, gpu_devices
from .jobqueue import pbs_cluster, slurm_cluster
from .layout import WorkerLayout, cpu_layout, gpu_layout
from .local import local_cluster
from .scheduler import SCHEDULER_TIMEOUT, connect
from .workers import (
    LOCAL_WORKER_ENV,
    PIN_GPU_ENV,
    PRELOAD,
    TORCH_THREADS_ENV,
    dask_setup,
    missing_gpu,
    pin_gpu,
)

__all__ = [
    "LOCAL_WORKER_ENV",
    "PIN_GPU_ENV",
    "PRELOAD",
    "SCHEDULER_TIMEOUT",
    "TORCH_THREADS_ENV",
    "GpuSpec",
    "WorkerLayout",
    "connect",
    "cpu_layout",
    "dask_setup",
    "gpu_devices",
    "gpu_layout",
    "local_cluster",
    "missing_gpu",
    "pbs_cluster",
    "pin_gpu",
    "slurm_cluster",
]
