"""How a machine's (or a batch job's) cores and GPUs are shared among Dask worker
processes, and the checks of the sizes a cluster is given (counts, memory sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..exceptions import UsageError, argument, check_integer


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


def check_count(name: str, value: int | None) -> None:
    """A :class:`UsageError` naming ``name`` unless ``value`` is None or an integer >= 1."""
    if value is not None:
        check_integer(name, value)


def byte_size(name: str, value: str) -> int:
    """A memory size as Dask reads it (``32GB``, ``16 GiB``), in bytes; a
    :class:`UsageError` naming ``name`` where dask would raise a bare ``ValueError``.

    Examples
    --------
    >>> byte_size("memory", "2 KiB")
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

    check_count("n_workers", n_workers)
    check_count("threads_per_worker", threads_per_worker)
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
    check_count("n_workers", n_workers)
    check_count("threads_per_worker", threads_per_worker)
    if n_workers is not None and n_workers > len(devices):
        raise UsageError(
            f"n_workers={n_workers}: one worker per GPU, and there are "
            f"{len(devices)} ({list(devices)})"
        )
    devices = tuple(devices[:n_workers] if n_workers else devices)
    threads = threads_per_worker or max(1, cores // len(devices))
    torch_threads = max(1, cores // (len(devices) * threads))
    return WorkerLayout(len(devices), threads, torch_threads, devices)
