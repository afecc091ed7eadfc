"""Dask clusters of worker processes on this machine (:func:`local_cluster`): CPU
workers, dask-cuda's ``LocalCUDACluster``, or one named worker per GPU without it.
"""

from __future__ import annotations

import logging
from typing import Any

from ..resources import GPU_RESOURCE
from .gpus import GpuSpec, select_gpus
from .layout import WorkerLayout, byte_size, cpu_layout, gpu_layout
from .workers import LOCAL_WORKER_ENV, PRELOAD, TORCH_THREADS_ENV

log = logging.getLogger(__name__)


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
        byte_size("memory_limit", memory_limit)  # before any process starts
    # the cores this process may use (affinity, cgroup quota), as distributed counts them
    cores = dask.system.CPU_COUNT
    devices = select_gpus(gpus)
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
