"""Zarr stores of scenes and collections: chunked, compressed, resumable, CRS kept.

:func:`to_zarr` writes in steps along the leading spatial or patch dim, each step a
region that lines up with the store's chunks (misaligned regions lose data,
xarray#8371), and records the steps done in the store's attributes. A run killed
half-way and started again skips the finished steps. Consolidated metadata is
written last, together with the ``m3rcr_complete`` flag, so an unfinished store never
opens as if complete: :func:`open_zarr` refuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import xarray as xr
import zarr

from .exceptions import StoreError
from .options import OPTIONS
from .progress import compute_with_progress, progress_bar
from .resources import annotate, required_resources
from .schema import is_collection, validate

log = logging.getLogger(__name__)

COMPLETE = "m3rcr_complete"
PROGRESS = "m3rcr_steps_done"
FINGERPRINT = "m3rcr_fingerprint"
#: chunks written per step: the unit of progress and of parallel work
CHUNKS_PER_STEP = 8


def store_chunks(ds: xr.Dataset) -> dict[str, int]:
    """The chunking of a store: ~1024 px a side for a scene, a few patches for a
    collection; all bands (and polarizations) of a pixel in one chunk."""
    chunks: dict[str, int] = {dim: -1 for dim in ("band", "polarization") if dim in ds.dims}
    if is_collection(ds):
        chunks.update(patch=OPTIONS["patches_per_chunk"], y=-1, x=-1)
    else:
        chunks.update(y=OPTIONS["scene_chunk"], x=OPTIONS["scene_chunk"])
    return chunks


def _write_dim(ds: xr.Dataset) -> str:
    return "patch" if is_collection(ds) else "y"


def _fingerprint(ds: xr.Dataset) -> str:
    """What identifies the data being written: layout, dtypes and coordinates."""
    digest = hashlib.sha256()
    digest.update(json.dumps({k: int(v) for k, v in ds.sizes.items()}, sort_keys=True).encode())
    for name in sorted(ds.variables):
        var = ds.variables[name]
        digest.update(f"{name}:{var.dims}:{var.dtype}".encode())
        if name in ds.coords:
            digest.update(_coordinate_bytes(var.values))
    return digest.hexdigest()


def _coordinate_bytes(values: np.ndarray) -> bytes:
    if values.dtype.kind in "OUT":  # strings: hash the text, not object pointers
        return "\x00".join(map(str, values.ravel())).encode()
    return np.ascontiguousarray(values).tobytes()


def _steps(ds: xr.Dataset, dim: str) -> list[slice]:
    """Regions along ``dim``, each a whole number of chunks."""
    sizes = ds.chunksizes[dim]
    bounds = np.cumsum((0, *sizes))
    starts = bounds[::CHUNKS_PER_STEP]
    ends = [*starts[1:], bounds[-1]]
    return [slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True) if b > a]


def _prepare(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.chunk(store_chunks(ds))
    # coordinates are small: keep them in memory so they are written with the metadata;
    # strings as variable-length UTF-8, the string type Zarr v3 specifies
    ds = ds.assign_coords({name: _plain(ds[name]) for name in ds.coords})
    for var in ds.variables.values():
        var.encoding = {}
    return ds


def _plain(coord: xr.DataArray) -> xr.DataArray:
    coord = coord.compute()
    return coord.astype(object) if coord.dtype.kind == "U" else coord


def _unicode(coord: xr.DataArray) -> xr.DataArray:
    if coord.dtype.kind in "OT":  # object or numpy's StringDType: back to fixed-width str
        return coord.copy(data=np.asarray(coord.values.tolist(), dtype=str))
    return coord


def _open_group(store: Any, mode: str = "r") -> zarr.Group | None:
    try:
        return zarr.open_group(store, mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        return None


def _resumable_steps(store: Any, fingerprint: str, overwrite: bool) -> set[int] | None:
    """Steps already written by an earlier, unfinished run of the same data, or None
    to start afresh. A finished store is only replaced with ``overwrite=True``."""
    group = _open_group(store)
    if group is None:
        return None
    attrs = dict(group.attrs)
    if attrs.get(COMPLETE) and not overwrite:
        raise StoreError(f"{store}: a complete store exists; pass overwrite=True to replace it")
    if overwrite or attrs.get(FINGERPRINT) != fingerprint:
        return None
    return set(attrs.get(PROGRESS, []))


def to_zarr(
    ds: xr.Dataset, store: Any, *, progress: bool | None = None, overwrite: bool = False
) -> None:
    """Write a scene or a collection to a Zarr (v3) store, resumably.

    Parameters
    ----------
    ds
        A scene or a collection (lazy or in memory).
    store
        A path or any fsspec URL (``s3://bucket/scene.zarr``).
    progress
        Show a progress bar; default: the ``progress`` option.
    overwrite
        Replace a complete store of the same name. An unfinished store of the same
        data is resumed; of other data, replaced.

    Examples
    --------
    >>> import m3rcr_xr
    >>> m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((512, 512)), "scene.zarr")  # doctest: +SKIP
    >>> m3rcr_xr.open_zarr("scene.zarr").rio.crs  # doctest: +SKIP
    CRS.from_epsg(32632)
    """
    validate(ds, required=())
    ds = _prepare(ds)
    dim = _write_dim(ds)
    steps = _steps(ds, dim)
    fingerprint = _fingerprint(ds)
    done = _resumable_steps(store, fingerprint, overwrite)
    if done is None:
        _initialise(ds, store, fingerprint)
        done = set()
    else:
        log.info("%s: resuming, %d of %d steps already written", store, len(done), len(steps))
    resources = required_resources(ds)  # e.g. decloud's {"GPU": 1}, kept for the writes
    show = OPTIONS["progress"] if progress is None else progress
    # one step: show dask's own progress inside it; several: one tick a step
    with progress_bar(
        total=len(steps), desc=f"writing {_name(store)}", disable=not show or len(steps) == 1
    ) as bar:
        bar.update(len(done))
        for index in _pending(steps, done):
            with annotate(resources):
                _write_step(ds, store, dim, steps[index], show=show and len(steps) == 1)
            done.add(index)
            _set_attrs(store, {PROGRESS: sorted(done)})
            bar.update(1)
    _finish(store)


def _name(store: Any) -> str:
    return str(store).rstrip("/").rsplit("/", 1)[-1]


def _pending(steps: list[slice], done: set[int]) -> Iterator[int]:
    return (i for i in range(len(steps)) if i not in done)


def _initialise(ds: xr.Dataset, store: Any, fingerprint: str) -> None:
    """Create the arrays and write the in-memory coordinates; no data yet."""
    template = ds.copy()
    template.attrs = {**ds.attrs, COMPLETE: False, FINGERPRINT: fingerprint, PROGRESS: []}
    template.to_zarr(store, mode="w", compute=False, consolidated=False, zarr_format=3)


def _write_step(ds: xr.Dataset, store: Any, dim: str, region: slice, show: bool = False) -> None:
    data_vars = [name for name in ds.data_vars if dim in ds[name].dims]
    block = ds[data_vars].isel({dim: region})
    block = block.drop_vars(list(block.coords))  # written with the metadata
    block.attrs = {}
    writes = block.to_zarr(
        store, region={dim: region}, consolidated=False, zarr_format=3, compute=False
    )
    compute_with_progress(writes, show=show)


def _set_attrs(store: Any, attrs: dict[str, Any]) -> None:
    group = zarr.open_group(store, mode="r+")
    group.attrs.update(attrs)


def _finish(store: Any) -> None:
    _set_attrs(store, {COMPLETE: True})
    with warnings.catch_warnings():
        # zarr-python keeps consolidated metadata for v3 outside the spec, and says so
        warnings.simplefilter("ignore", category=zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(store)


def is_complete(store: Any) -> bool:
    """True when ``store`` was written to the end by :func:`to_zarr`."""
    group = _open_group(store)
    return bool(group is not None and group.attrs.get(COMPLETE))


def open_zarr(store: Any, *, chunks: Any = None, validate_schema: bool = True) -> xr.Dataset:
    """Open a store written by :func:`to_zarr`, lazily, with its CRS.

    Raises
    ------
    StoreError
        The store does not exist or was not written to the end.
    """
    group = _open_group(store)
    if group is None:
        raise StoreError(f"{store}: no Zarr store there")
    if not group.attrs.get(COMPLETE):
        done = len(group.attrs.get(PROGRESS, []))
        raise StoreError(
            f"{store}: the store is incomplete ({done} step(s) written); "
            "run to_zarr again with the same data to finish it"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=zarr.errors.ZarrUserWarning)
        ds = xr.open_zarr(
            store,
            chunks=chunks if chunks is not None else {},
            consolidated=True,
            decode_coords="all",
        )
    # coordinates are small and used everywhere: in memory, strings as str
    ds = ds.assign_coords({name: _unicode(ds[name].load()) for name in ds.coords})
    ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("m3rcr_")}
    return validate(ds, required=()) if validate_schema else ds
