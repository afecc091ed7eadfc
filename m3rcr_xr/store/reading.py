"""Reading stores: what is at a location, and a complete store opened with its CRS."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ..exceptions import StoreError, argument
from ..identity import Source
from ..location import Target
from ..schema import validate
from .destinations import COPY, StoreState, copied, inspect_store
from .root import PROGRESS


def store_state(store: Any, *, storage_options: dict[str, Any] | None = None) -> StoreState:
    """What is at ``store``: ``"missing"``; ``"file"``; ``"empty"`` (a folder, or one
    holding only files of a store's own: a lock, an identifier); ``"foreign"`` (a
    folder or Zarr store of other software, or a copy of one of this library's that
    other software wrote); or a store of this library, ``"unfinished"`` or
    ``"complete"``. Reads metadata and a listing only.

    Raises
    ------
    StoreError
        ``store`` cannot be reached (no credentials, a bucket that does not exist...).
    """
    return inspect_store(Target.of(store, storage_options))[0]


def is_complete(store: Any, *, storage_options: dict[str, Any] | None = None) -> bool:
    """True when ``store`` is a store of this library written to the end by
    :func:`~m3rcr_xr.store.to_zarr` (or a byte copy of one, which keeps its identifier); False for
    anything else, a copy that other software wrote included, never an error."""
    try:
        return store_state(store, storage_options=storage_options) == "complete"
    except StoreError:
        return False


def open_zarr(
    store: Any,
    *,
    chunks: Any = None,
    validate_schema: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Open a store written by :func:`~m3rcr_xr.store.to_zarr`, lazily, with its CRS.

    ``storage_options`` go to the fsspec file system of a URL, as in
    :func:`~m3rcr_xr.store.to_zarr`.

    The result records the store in ``encoding["source"]`` (of the dataset and of
    each variable), so that :func:`~m3rcr_xr.store.to_zarr` never writes over its own input; a
    :class:`~m3rcr_xr.identity.Source`, which keeps ``storage_options`` for
    :func:`~m3rcr_xr.store.to_zarr` to identify the input again (never printed nor written).

    Raises
    ------
    StoreError
        Nothing there; not a store of this library (a file, a folder of other files,
        a Zarr store of other software, a copy of a store of this library that other
        software wrote); or a store not written to the end.
    """
    target = Target.of(store, storage_options)
    state, doc = inspect_store(target)
    _check_readable(target, state, doc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=zarr.errors.ZarrUserWarning)
        ds = xr.open_zarr(
            target.zarr_store if target.storage_options else target.url,
            chunks=chunks if chunks is not None else {},
            consolidated=True,
            decode_coords="all",
        )
    # coordinates are small and used everywhere: in memory, strings as str
    ds = ds.assign_coords({name: _unicode(ds[name].load()) for name in ds.coords})
    ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("m3rcr_")}
    for holder in (ds, *ds.variables.values()):
        holder.encoding["source"] = Source(target.url, dict(target.storage_options))
    return validate(ds, required=()) if validate_schema else ds


def _check_readable(target: Target, state: StoreState, doc: dict[str, Any] | None) -> None:
    if state == "missing":
        raise StoreError(f"{target.name}: no Zarr store there")
    if state == "foreign" and doc is not None and copied(doc):
        raise StoreError(
            f"{target.name}: is {COPY}, not a store written by m3rcr_xr; open it with "
            "xarray.open_zarr"
        )
    if state in ("file", "empty", "foreign"):
        what = {
            "file": "a file",
            "empty": "an empty folder",
            "foreign": "a Zarr store without m3rcr_* attributes" if doc else "no zarr.json",
        }[state]
        raise StoreError(f"{target.name}: not a store written by m3rcr_xr ({what})")
    if state == "unfinished":
        done = len((doc or {})["attributes"].get(PROGRESS, []))
        raise StoreError(
            f"{target.name}: the store is incomplete ({done} step(s) written); write the "
            "same data to it again to finish it"
        )
    if not (doc or {}).get("consolidated_metadata"):
        raise StoreError(
            f"{target.name}: marked complete but has no consolidated metadata, so "
            f"m3rcr_xr did not finish it; write it again with {argument('overwrite', True)}"
        )


def _unicode(coord: xr.DataArray) -> xr.DataArray:
    if coord.dtype.kind in "OT":  # object or numpy's StringDType: back to fixed-width str
        return coord.copy(data=np.asarray(coord.values.tolist(), dtype=str))
    return coord
