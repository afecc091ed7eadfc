"""Torch's CPU threads for tile tasks: the machine's cores shared once among the tasks
that may run at once on it, and each thread's own count given back afterwards.

Each task that runs a network at the same time as others uses torch's intra-op
threads; a machine whose tasks together ask for more threads than it has cores runs
slower (each thread waits for a core). Tile tasks on the CPU therefore run under
:func:`tile_threads`, at :func:`torch_threads` each.

Examples
--------
>>> import torch
>>> before = torch.get_num_threads()
>>> with tile_threads(1):
...     torch.get_num_threads()
1
>>> torch.get_num_threads() == before
True
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import dask
import dask.base
import dask.local
import dask.system

from .options import OPTIONS


def torch_threads() -> int:
    """Torch threads for each tile task of this process on the CPU.

    The ``torch_threads`` option where it is set (the clusters of :mod:`m3rcr_xr.cluster`
    set it in their workers); else the cores Dask sees (CPU affinity and cgroup quotas
    counted) over the tasks that may run at once on this machine
    (:func:`parallel_tasks`), at least 1.
    """
    if OPTIONS["torch_threads"] is not None:
        return OPTIONS["torch_threads"]
    return max(1, dask.system.CPU_COUNT // max(1, parallel_tasks()))


def parallel_tasks() -> int:
    """Tasks that may run at once on this machine.

    In a ``distributed`` worker the threads of every worker on its host, as the
    scheduler counts them (a ``LocalCluster`` splits the cores among several worker
    processes: each worker's own threads would count a share as the whole); else the
    threads of Dask's local scheduler (:func:`local_threads`).
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return local_threads()
    return _host_threads(worker.address) or worker.state.nthreads


def local_threads() -> int:
    """Threads of Dask's local scheduler, as its configuration says: 1 under the
    synchronous scheduler (``dask.config.set(scheduler="synchronous")``), else the
    ``num_workers`` setting, else the cores.

    A task cannot see the arguments of the ``compute()`` that runs it: with
    ``compute(scheduler="synchronous")`` or ``compute(num_workers=n)`` each tile task
    still counts the cores as shared by ``CPU_COUNT`` tasks. Set them in the
    configuration instead (``with dask.config.set(scheduler="synchronous")``, or
    ``num_workers=n``), or set the ``torch_threads`` option.

    Examples
    --------
    >>> with dask.config.set(scheduler="synchronous"):
    ...     local_threads()
    1
    >>> with dask.config.set(scheduler="threads", num_workers=3):
    ...     local_threads()
    3
    """
    try:
        scheduler = dask.base.get_scheduler()
    except (RuntimeError, ValueError):  # "distributed" in the configuration, no client
        scheduler = None
    if scheduler is dask.local.get_sync:
        return 1
    return dask.config.get("num_workers", None) or dask.system.CPU_COUNT


@functools.cache
def _host_threads(address: str) -> int:
    """Threads of the workers on the host of the worker at ``address``; 0: unknown.

    Asked of the scheduler once per worker (a round trip), at its first tile task.
    """
    from distributed import get_client
    from distributed.comm import get_address_host

    host = get_address_host(address)
    try:
        threads = get_client().nthreads()
    except OSError:  # the scheduler is out of reach: the worker's own count serves
        return 0
    return sum(count for peer, count in threads.items() if get_address_host(peer) == host)


@contextlib.contextmanager
def tile_threads(threads: int) -> Iterator[None]:
    """Torch at ``threads`` intra-op threads in this thread, for one tile task; the
    count this thread had before, after it.

    Torch keeps the count per thread (OpenMP's and MKL's settings are per thread; a
    thread takes the last count set anywhere when it first runs torch), so each task
    sets it in the thread that runs its forward passes: a pool thread that ran torch
    before keeps no stale count, and a decloud computed in a user's process (the
    threaded scheduler, a ``LocalCluster`` of threads) leaves the user's threads as
    they were.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # cheap (well under a microsecond)
    try:
        yield
    finally:
        torch.set_num_threads(before)
