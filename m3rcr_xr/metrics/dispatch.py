"""The one place that tells NumPy from dask: apply a block function to either.

Each helper calls the function directly on NumPy arrays and builds the equivalent dask
graph otherwise, so the callers never branch on the array type. Output keys are named
with a ``token`` prefix (not a fixed ``name``), so graphs of two calls never collide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np


def is_lazy(*arrays: Any) -> bool:
    """Whether any of ``arrays`` (bare arrays, or objects with ``.data``) is a dask array."""
    return any(
        isinstance(a, da.Array) or isinstance(getattr(a, "data", None), da.Array) for a in arrays
    )


def map_blocks(
    func: Callable[..., np.ndarray], *arrays: Any, dtype: Any, token: str, **kwargs: Any
) -> Any:
    """``func(*blocks, **kwargs)`` per block; the arrays share their chunks."""
    if not is_lazy(*arrays):
        return func(*(np.asarray(a) for a in arrays), **kwargs)
    return da.map_blocks(func, *arrays, dtype=dtype, token=token, **kwargs)


def map_with_halo(
    func: Callable[..., np.ndarray],
    *arrays: Any,
    halo: int,
    dtype: Any,
    token: str,
    size3: int | None = None,
) -> Any:
    """``func(*blocks, halo)`` on (..., y, x) arrays, each block with a halo around it.

    Every block carries ``halo`` pixels of its neighbours on each side of ``y`` and
    ``x``, zeros past the image edge (a NumPy array is one block), so no value depends on
    the chunking; ``func`` returns the block without the halo, with axis -3 of size
    ``size3`` (None: unchanged; otherwise that axis must be in one chunk). The arrays
    after the first are put on its chunks.
    """
    ndim = np.ndim(arrays[0])
    if not is_lazy(*arrays):
        pad = [(0, 0)] * (ndim - 2) + [(halo, halo), (halo, halo)]
        return func(*(np.pad(np.asarray(a), pad) for a in arrays), halo)
    first = da.asarray(arrays[0])
    depth = {i: (halo if i >= ndim - 2 else 0) for i in range(ndim)}
    boundary = {i: (0 if i >= ndim - 2 else "none") for i in range(ndim)}
    blocks = [
        da.overlap.overlap(da.asarray(a).rechunk(first.chunks), depth=depth, boundary=boundary)
        for a in arrays
    ]
    chunks = list(first.chunks)
    if size3 is not None:
        chunks[-3] = (size3,)
    return da.map_blocks(func, *blocks, halo, dtype=dtype, chunks=tuple(chunks), token=token)
