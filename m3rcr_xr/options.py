"""Settings that cut across modules, in one place (as ``xarray.set_options``).

Examples
--------
>>> import m3rcr_xr
>>> with m3rcr_xr.set_options(progress=False):
...     m3rcr_xr.get_options()["progress"]
False
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from .exceptions import OptionError

_DEFAULTS: dict[str, Any] = {
    # show progress bars on long work (ingest, to_zarr, decloud, train)
    "progress": True,
    # spatial chunk edge of a scene store, in pixels
    "scene_chunk": 1024,
    # patches per chunk along ``patch`` in a collection store
    "patches_per_chunk": 8,
    # torch intra-op threads per tile task; None = cores / tasks that run at once
    "torch_threads": None,
    # largest raster a reader opens (declared width x height x bands x bytes per value),
    # and largest set of arrays the tiling engine makes for one tile (engine.plan_tiles)
    "max_raster_bytes": 64 * 2**30,
    # folder of downloaded weights; None = $M3RCR_CACHE, else pooch.os_cache("m3rcr_xr")
    "weights_cache": None,
    # replay forward batches on a CUDA GPU from CUDA graphs (m3rcr_xr.cuda_graphs)
    "cuda_graphs": True,
}


def _integer(minimum: int, optional: bool = False) -> Callable[[Any], bool]:
    """A validator of integers >= ``minimum`` (``None`` too when ``optional``).

    ``bool`` is an ``int`` to Python but never a size: ``scene_chunk=True`` is refused.
    """

    def valid(value: Any) -> bool:
        if value is None:
            return optional
        return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

    return valid


_VALIDATORS: dict[str, Callable[[Any], bool]] = {
    "progress": lambda v: isinstance(v, bool),
    "scene_chunk": _integer(16),
    "patches_per_chunk": _integer(1),
    "torch_threads": _integer(1, optional=True),
    "max_raster_bytes": _integer(1),
    "weights_cache": lambda v: v is None or (isinstance(v, str | os.PathLike) and str(v) != ""),
    "cuda_graphs": lambda v: isinstance(v, bool),
}

#: the current options; modules read them as ``OPTIONS[name]`` (as xarray does), users
#: through :func:`get_options`
OPTIONS: dict[str, Any] = dict(_DEFAULTS)


def _check(options: Mapping[str, Any]) -> None:
    for key, value in options.items():
        if key not in _DEFAULTS:
            raise OptionError(f"unknown option {key!r}; known: {sorted(_DEFAULTS)}")
        if not _VALIDATORS[key](value):
            raise OptionError(f"option {key!r} cannot be {value!r}")


class set_options:  # noqa: N801 - named like xarray.set_options, used as a context manager
    """Set options globally, or for a ``with`` block.

    Parameters
    ----------
    progress : bool
        Show progress bars on long work. Default True.
    scene_chunk : int
        Edge, in pixels, of a scene chunk in a Zarr store. Default 1024.
    patches_per_chunk : int
        Patches per chunk in a collection store. Default 8.
    torch_threads : int or None
        Torch threads per tile task on the CPU; None divides the machine's cores
        among the tasks that may run at once on it (:mod:`m3rcr_xr.threads`).
    max_raster_bytes : int
        Largest raster the readers open, as declared in its header (width x height x
        bands x bytes per value). Default 64 GiB: a larger declaration is refused
        before anything is read, as a file of a few hundred bytes can declare it.
    weights_cache : str, os.PathLike or None
        Folder that downloaded weights go to (:func:`m3rcr_xr.weights.fetch`). Default
        None: the ``M3RCR_CACHE`` environment variable, else ``pooch.os_cache("m3rcr_xr")``.
        Worker processes read their own environment: set the variable there to share it.
    cuda_graphs : bool
        On a CUDA GPU, run each batch of tiles by replaying a CUDA graph of the
        network's forward pass, captured on first use per model, batch shape and
        precision (:mod:`m3rcr_xr.cuda_graphs`): the attention networks are bound by
        kernel launches otherwise. Default True; each graph keeps about one batch's
        memory on the device, and a capture that fails turns them off in its process
        (logged). Worker processes read their own options: set it in
        each of them (``Client.run``) to turn it off on a cluster.
    """

    def __init__(self, **kwargs: Any) -> None:
        _check(kwargs)
        self._old = {key: OPTIONS[key] for key in kwargs}
        OPTIONS.update(kwargs)

    def __enter__(self) -> set_options:
        return self

    def __exit__(self, *exc: object) -> None:
        OPTIONS.update(self._old)


def get_options() -> dict[str, Any]:
    """Return a copy of the current options."""
    return dict(OPTIONS)
