"""The writer of a store, one step at a time.

:func:`initialise` creates the store's arrays, :func:`write_steps` writes its steps
one by one and records each in the root, and :func:`finish` completes it in one
atomic write of the root.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from typing import Any

import xarray as xr

from ..identity import FINGERPRINT, ID_OBJECT, STORE_ID
from ..location import Target, read_json
from ..locks import LOCK, TAKEOVER
from ..progress import compute_with_progress, progress_bar, show_progress
from ..resources import annotate, required_resources
from .root import (
    COMPLETE,
    MEMBERS,
    PROGRESS,
    STEP_CHUNKS,
    set_attrs,
    write_own,
    write_root,
)

#: zarr's options for every write. Every chunk is written, even one holding only the
#: fill value: zarr's test of each chunk against it (``write_empty_chunks=False``, its
#: default) took a quarter of an ingest's CPU time, and a scene has few empty chunks
_ZARR_WRITE: dict[str, Any] = {"consolidated": False, "zarr_format": 3, "write_empty_chunks": True}
#: GDAL's block cache while a store is written, unless the user sets GDAL_CACHEMAX
READ_CACHE_BYTES = 16 * 2**20


def initialise(ds: xr.Dataset, target: Target, fingerprint: str, chunks_per_step: int) -> None:
    """Create the arrays and write the in-memory coordinates; no data yet. The root
    records the store's steps (:data:`STEP_CHUNKS`).

    The store's new identifier comes first (:data:`ID_OBJECT`: alone, the folder counts
    as empty), then the root, with this library's attributes and the identifier: a kill
    while the arrays are created leaves a store that is recognised, and started over.
    Mode ``"a"``, not ``"w"``: the destination was checked under the lock to hold no
    Zarr node, and ``"w"`` would delete whatever else is in the folder.
    """
    store_id = secrets.token_hex(16)
    write_own(target, ID_OBJECT, store_id.encode(), "the store's identifier")
    attrs = {
        COMPLETE: False,
        FINGERPRINT: fingerprint,
        PROGRESS: [],
        STEP_CHUNKS: chunks_per_step,
        MEMBERS: sorted(str(name) for name in ds.variables),
        STORE_ID: store_id,
    }
    write_root(target, {"zarr_format": 3, "node_type": "group", "attributes": attrs})
    template = ds.copy()
    template.attrs = {**ds.attrs, **attrs}
    template.to_zarr(target.zarr_store, mode="a", compute=False, **_ZARR_WRITE)


def write_steps(
    ds: xr.Dataset,
    store: Any,
    target: Target,
    dim: str,
    steps: list[slice],
    done: set[int],
    progress: bool | None,
) -> None:
    resources = required_resources(ds)  # e.g. decloud's {"GPU": 1}, kept for the writes
    show = show_progress(progress)
    # one step: show dask's own progress inside it; several: one tick a step
    with (
        _small_block_cache(),
        progress_bar(
            total=len(steps),
            desc=f"writing {_name(target.name)}",
            disable=not show or len(steps) == 1,
        ) as bar,
    ):
        bar.update(len(done))
        for index in _pending(steps, done):
            with annotate(resources):
                _write_step(ds, store, dim, steps[index], show=show and len(steps) == 1)
            done.add(index)
            set_attrs(target, {PROGRESS: sorted(done)})
            bar.update(1)


@contextlib.contextmanager
def _small_block_cache() -> Iterator[None]:
    """Hold GDAL's block cache to :data:`READ_CACHE_BYTES` while writing.

    The chunks of a raster are read once each, in whole tiles: GDAL's block cache (5 %
    of the RAM by default) would only keep every block read so far, which made the peak
    memory of an ingest 1.3 times that of reading the files whole. The limit is GDAL's
    process-wide one, restored afterwards; a ``GDAL_CACHEMAX`` the user set (in the
    environment or an active ``rasterio.Env``) is left alone.
    """
    import rasterio

    user_set = "GDAL_CACHEMAX" in os.environ or (
        rasterio.env.hasenv() and "GDAL_CACHEMAX" in rasterio.env.getenv()
    )
    if user_set:
        yield
        return
    with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_BYTES):
        yield


def _name(store: Any) -> str:
    return str(store).rstrip("/").rsplit("/", 1)[-1]


def _pending(steps: list[slice], done: set[int]) -> Iterator[int]:
    return (i for i in range(len(steps)) if i not in done)


def _write_step(ds: xr.Dataset, store: Any, dim: str, region: slice, show: bool = False) -> None:
    data_vars = [name for name in ds.data_vars if dim in ds[name].dims]
    block = ds[data_vars].isel({dim: region})
    block = block.drop_vars(list(block.coords))  # written with the metadata
    block.attrs = {}
    writes = block.to_zarr(store, region={dim: region}, compute=False, **_ZARR_WRITE)
    compute_with_progress(writes, show=show)


@contextlib.contextmanager
def quiet_own_files() -> Iterator[None]:
    """Zarr warns about the lock file and the identifier when it lists the store's
    members: they are not part of the hierarchy, and zarr is right to skip them."""
    names = "|".join(map(re.escape, (LOCK, TAKEOVER, ID_OBJECT)))
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=f"Object at ({names}) is not recognized", category=UserWarning
        )
        yield


def finish(target: Target, ds: xr.Dataset) -> None:
    """The last step, one atomic write: the complete flag with the consolidated
    metadata (zarr-python's inline form: each array's ``zarr.json`` under its name)."""
    members = {}
    for name in ds.variables:
        members[str(name)] = read_json(target, f"{name}/zarr.json")
    doc = read_json(target, "zarr.json") or {}
    doc["attributes"] = {**doc.get("attributes", {}), COMPLETE: True}
    doc["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": members}
    write_root(target, doc)
