"""Dask worker resources (``{"GPU": 1}``) on task graphs, kept through writes.

Graph optimisation and ``dask.array.store`` rebuild layers and drop their annotations
(dask#7036, #9541). Decloud annotates its tile tasks; a writer that finds such
annotations in its input builds its own graph under the same annotation, so that the
whole write runs on workers that have the resource.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import dask
import xarray as xr

from .exceptions import UsageError, argument, check_positive

#: the worker resource that decloud's GPU-annotated tasks ask for, and that the
#: clusters of :mod:`m3rcr_xr.cluster` give each GPU worker
GPU_RESOURCE = "GPU"


def annotate(resources: Mapping[str, float] | None) -> contextlib.AbstractContextManager:
    """Annotate the tasks built inside with worker ``resources``; no-op for None."""
    if not resources:
        return contextlib.nullcontext()
    return dask.annotate(resources=dict(resources))


def resource_items(resources: Any) -> tuple[tuple[str, float], ...] | None:
    """``resources`` (``{"GPU": 1}``) as sorted items, checked: names and amounts > 0.

    Raises
    ------
    UsageError
        Not a mapping of names to finite numbers above 0 (``"GPU"``, ``{"GPU": "x"}``):
        a worker would never match it, and the tasks would wait forever.

    Examples
    --------
    >>> resource_items({"GPU": 1, "MEM": 2.5})
    (('GPU', 1.0), ('MEM', 2.5))
    """
    if resources is None:
        return None
    if not isinstance(resources, Mapping) or not all(isinstance(k, str) for k in resources):
        raise UsageError(
            f"{argument('resources', resources)}: must map resource names to amounts, "
            "such as {'GPU': 1}"
        )
    return tuple(
        (name, check_positive(f"resources[{name!r}]", amount))
        for name, amount in sorted(resources.items())
    )


def _layers(ds: xr.Dataset) -> Iterator[Any]:
    for var in ds.data_vars.values():
        if dask.is_dask_collection(var.data):
            yield from getattr(var.data.__dask_graph__(), "layers", {}).values()


def required_resources(ds: xr.Dataset) -> dict[str, float] | None:
    """The worker resources some task behind ``ds`` asks for, or None.

    A layer's annotation may also be a function of the task key (dask gives one to a
    layer that merges graphs built under different annotations); those are skipped:
    the tile tasks' own layers carry the mapping.
    """
    for layer in _layers(ds):
        resources = (getattr(layer, "annotations", None) or {}).get("resources")
        if resources and isinstance(resources, Mapping):
            return dict(resources)
    return None
