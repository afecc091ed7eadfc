"""Progress bars that work on every scheduler.

``dask.diagnostics.ProgressBar`` shows nothing on a distributed cluster, so the
library's long work goes through :func:`compute_with_progress`, which picks the right
bar for the active scheduler, and :func:`progress_bar` (tqdm) for loops it drives itself.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import dask
from tqdm.auto import tqdm

from .options import OPTIONS


def show_progress(progress: bool | None = None) -> bool:
    """Whether to show a bar: ``progress`` as given, or the ``progress`` option when None.

    Examples
    --------
    >>> from m3rcr_xr import set_options
    >>> with set_options(progress=False):
    ...     show_progress(), show_progress(True)
    (False, True)
    """
    return bool(OPTIONS["progress"] if progress is None else progress)


def progress_bar(total: int, desc: str, disable: bool = False) -> tqdm:
    """A tqdm bar on stderr, quiet when ``disable`` is True."""
    return tqdm(
        total=total,
        desc=desc,
        disable=disable,
        file=sys.stderr,
        unit="step",
        dynamic_ncols=True,
        leave=False,
    )


def distributed_client() -> Any | None:
    """The active ``distributed`` client (tasks then run on its workers), or None."""
    from distributed import get_client

    with contextlib.suppress(ValueError):
        return get_client()
    return None


@contextlib.contextmanager
def _local_bar(show: bool) -> Iterator[None]:
    if not show:
        yield
        return
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr):
        yield


def compute_with_progress(*collections: Any, show: bool = True, **kwargs: Any) -> tuple:
    """``dask.compute(*collections)`` with a progress bar on any scheduler."""
    client = distributed_client()
    if client is None or dask.config.get("scheduler", None) not in (None, "dask.distributed"):
        with _local_bar(show):
            return dask.compute(*collections, **kwargs)
    futures = client.compute(list(collections), **kwargs)
    if show:
        from distributed import progress

        progress(futures, notebook=False)
    return tuple(client.gather(futures))
