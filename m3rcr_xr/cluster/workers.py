"""What runs in each worker process: the Dask preload hook :func:`dask_setup` and the
environment the clusters give their workers for it.

:func:`dask_setup` reads that environment (:data:`TORCH_THREADS_ENV`,
:data:`PIN_GPU_ENV`, :data:`LOCAL_WORKER_ENV`) and sets the ``torch_threads`` option,
so that the workers of a machine together use its cores once, not once each; it pins
each worker of a multi-GPU job to its GPU, and says so when a worker advertises a GPU it
cannot use (:func:`missing_gpu`). Dask looks the hook up in the module it preloads,
:data:`PRELOAD`: the package ``m3rcr_xr.cluster``, which exports it (``dask worker
--preload m3rcr_xr.cluster``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from ..options import set_options
from ..resources import GPU_RESOURCE
from .gpus import torch_gpu_count, visible_devices

log = logging.getLogger(__name__)

#: environment variable read by each worker at start: its torch intra-op threads
TORCH_THREADS_ENV = "M3RCR_TORCH_THREADS"
#: environment variable: "1" makes the workers of a multi-GPU job take one GPU each
PIN_GPU_ENV = "M3RCR_PIN_GPU"
#: environment variable: "1" for the workers of :func:`~m3rcr_xr.cluster.local_cluster`,
#: which ignore Ctrl-C (SIGINT): the terminal sends it to the whole process group, and the
#: client, which owns them, closes them itself; each would print a traceback of its own
#: otherwise
LOCAL_WORKER_ENV = "M3RCR_LOCAL_WORKER"
#: the module the workers preload: this package, which exports :func:`dask_setup` (the
#: name job scripts and ``dask worker --preload`` have always given)
PRELOAD = "m3rcr_xr.cluster"


def _rank(name: Any) -> int:
    """The index of a worker among the processes of its job (``--nworkers``
    names them ``<name>-<i>``); 0 for a lone worker."""
    head, sep, tail = str(name).rpartition("-")
    return int(tail) if sep and head and tail.isdigit() else 0


def pin_gpu(name: Any) -> str | None:
    """Restrict this process to one of the job's GPUs, chosen by the worker's rank.

    Must run before CUDA starts in the process (a preload does).
    """
    visible = visible_devices()
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
    if torch_gpu_count():
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
    """Dask preload hook, run in each worker process before any task (see the module doc).

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
