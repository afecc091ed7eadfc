"""Zarr stores of scenes and collections: chunked, compressed, resumable, CRS kept.

:func:`to_zarr` writes in steps along the leading spatial or patch dim, each step a
region that lines up with the store's chunks (misaligned regions lose data,
xarray#8371), and records the steps done in the store's attributes. A run killed
half-way and started again with the same data skips the finished steps.

Safety rules, for local paths and fsspec URLs alike:

* **Destinations.** Without ``overwrite`` a store is only written where there is
  nothing, into an empty folder, or into an unfinished store of this library holding
  the same data (a resume). With ``overwrite`` a store of this library may also be
  replaced; only its own arrays (:data:`MEMBERS`, recorded when it was created) and
  its root are removed, never other files, arrays or stores in its folder.
  Anything else (a file, a folder of other files, a Zarr store written by other
  software) is refused, even with ``overwrite``. A destination that is, contains or
  lies inside one of the data's sources (:func:`~m3rcr_xr.identity.sources`), or lies
  inside a store of this library, is refused too.
* **Which stores are ours.** A store carries ``m3rcr_*`` root attributes and a random
  identifier, written once when it is created, both in its attributes
  (:data:`~m3rcr_xr.identity.STORE_ID`) and in an object of its own
  (:data:`~m3rcr_xr.identity.ID_OBJECT`, no Zarr node).
  Other software that copies a store (``xr.open_zarr(S).to_zarr(...)``) keeps the
  attributes, not the object: such a copy is a Zarr store of other software, never
  complete, replaced, resumed or removed. A byte copy (``cp -a``, ``rsync -a``,
  ``aws s3 sync``) keeps the object and is ours; so is a store of an earlier version,
  with no identifier.
* **Resumes.** The fingerprint kept in the store (:mod:`m3rcr_xr.identity`) covers the
  layout *and* the data's identity: the Dask graph's token (file names and
  modification times for rasters opened lazily, a content hash for arrays in memory,
  the checkpoint's hash for decloud) and the size and modification time of each
  source file (the fingerprint of each source store of this library; the listing of a
  Zarr store of other software: each key's size and modification time, or ETag; over
  HTTP, the ``ETag``, ``Content-MD5``, ``Digest`` or ``Last-Modified`` header). An unfinished
  store of other data is never resumed, nor one written from an input that reports its
  size alone (a change of it could not be seen). A resume removes the temporary files
  (``KEY.<uuid>.partial``) of zarr's writes that a killed writer cut off in the
  arrays' folders. A store with no step recorded (killed while its arrays were
  created or its first steps written) holds none of its data: it is started over,
  whatever data it was for. Variables without the dim the steps write along are
  written with the metadata.
* **One writer.** A writer holds the store's lock while it writes (an OS lock on a
  local file, a marker object on object stores; a killed writer never blocks the
  resume): see :mod:`m3rcr_xr.locks` for its rules.
* **Completion.** The root ``zarr.json`` is only ever replaced whole (a temporary file
  and ``os.replace`` locally, one PUT on object stores). Completion is a single such
  write holding both the ``m3rcr_complete`` flag and the consolidated metadata, so a
  kill at any moment leaves a complete store or an unfinished one that resumes. Before
  it, the inputs are identified again: a store whose input changed while it was
  written (another process re-ingested it) is left unfinished, and not resumed.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import re
import secrets
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
import zarr

from ..exceptions import M3RCRError, SchemaError, StoreError, argument
from ..href import redacted
from ..identity import (
    FINGERPRINT,
    ID_OBJECT,
    STORE_ID,
    Source,
    data_fingerprint,
    is_ours,
    source_identities,
    sources,
)
from ..location import (
    Target,
    check_apart,
    check_bucket,
    open_own_file,
    reaching,
    read_json,
    reason,
    write_errors,
)
from ..locks import LOCK, TAKEOVER, locked
from ..options import OPTIONS
from ..progress import compute_with_progress, progress_bar, show_progress
from ..resources import annotate, required_resources
from ..schema import VARIABLES, is_collection, validate

log = logging.getLogger(__name__)

COMPLETE = "m3rcr_complete"
PROGRESS = "m3rcr_steps_done"
#: the store's own arrays (its variables), recorded when it is created: all that an
#: overwrite removes
MEMBERS = "m3rcr_members"
#: the most chunks a step writes: the unit of progress and of parallel work
CHUNKS_PER_STEP = 8
#: the most pixels a step writes (a scene's rows x its width, a collection's patches x
#: their pixels), but one chunk: a step is one compute, and what the scheduler holds
#: in it grows with its pixels (decloud: about 13 bytes a pixel), so a scene wider than
#: 8192 pixels writes fewer than :data:`CHUNKS_PER_STEP` chunk rows a step
PIXELS_PER_STEP = 8192 * 8192
#: the chunks a step of the store writes, recorded when it is created: a resume writes
#: the steps the store began with, whatever the plan of the version that resumes it
STEP_CHUNKS = "m3rcr_chunks_per_step"
#: the steps of a store that records none (:data:`STEP_CHUNKS`): every earlier version's
_EARLIER_STEP_CHUNKS = 8
#: zarr's options for every write. Every chunk is written, even one holding only the
#: fill value: zarr's test of each chunk against it (``write_empty_chunks=False``, its
#: default) took a quarter of an ingest's CPU time, and a scene has few empty chunks
_ZARR_WRITE: dict[str, Any] = {"consolidated": False, "zarr_format": 3, "write_empty_chunks": True}
#: GDAL's block cache while a store is written, unless the user sets GDAL_CACHEMAX
READ_CACHE_BYTES = 16 * 2**20
#: where a new root ``zarr.json`` is written before it replaces the old one (locally)
_ROOT_TMP = "zarr.json.m3rcr-tmp"
#: the files of the store's own that are no Zarr node: a folder of these alone is empty
_OWN_FILES = frozenset({LOCK, TAKEOVER, ID_OBJECT, _ROOT_TMP})
#: what a root that carries an identifier without its object
#: (:func:`~m3rcr_xr.identity.is_ours`) is
_COPY = "a copy of a store of m3rcr_xr written by other software (xarray's to_zarr, say)"
#: zarr-python's temporary file of a local write, left behind by a writer killed in it
_ZARR_PARTIAL = re.compile(r"[^/]+\.[0-9a-f]{32}\.partial")

#: the encodings of a data variable that :func:`to_zarr` keeps (codecs, fill value and
#: stored dtype); the others, chunks included, are its own (:func:`store_chunks`). On a
#: variable of the schema, a packing or a dtype that would not read back as the schema's
#: dtype is refused (:func:`_check_decoded_dtypes`)
KEPT_ENCODING = (
    "compressors",
    "filters",
    "serializer",
    "_FillValue",
    "dtype",
    "scale_factor",
    "add_offset",
)

StoreState = Literal["missing", "file", "empty", "foreign", "unfinished", "complete"]


# ------------------------------------------------------------------ what is there
def _inspect(target: Target) -> tuple[StoreState, dict[str, Any] | None]:
    """What is at ``target``, and its root ``zarr.json`` when it has one.

    A store of this library is recognised by ``m3rcr_*`` keys in the attributes of
    its root group and its identifier (:func:`~m3rcr_xr.identity.is_ours`); a folder
    holding nothing but files of a store's own (a writer's lock, an identifier left by
    a store removed or created half-way) counts as empty.
    """
    fs, path = target.fs, target.path
    with reaching(target):
        fs.invalidate_cache(path)  # object stores cache listings; other writers change them
        if fs.isfile(path):
            return "file", None
        if not fs.isdir(path):
            return "missing", None
        doc = read_json(target, "zarr.json")
        if doc is None:
            names = {_basename(p) for p in fs.ls(path, detail=False)}
            return ("empty" if names <= _OWN_FILES else "foreign"), None
        if not is_ours(target, doc):
            return "foreign", doc
    return ("complete" if doc["attributes"].get(COMPLETE) else "unfinished"), doc


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _refuse(target: Target, state: StoreState, doc: dict[str, Any] | None, overwrite: bool) -> None:
    """Raise for a destination never to be written, or a complete store not to be
    replaced; return for one that may be (what to do with it is decided later)."""
    if state == "file":
        raise StoreError(f"{target.name}: is a file, not a Zarr store; choose another destination")
    if state == "foreign":
        what = "a Zarr store of other software" if doc else "a folder of other files"
        if doc and _copied(doc):
            what = _COPY
        raise StoreError(
            f"{target.name}: is {what}, not a store written by m3rcr_xr; it is never "
            f"written over (replaced or resumed), even with {argument('overwrite', True)}: "
            "choose a new or empty folder"
        )
    if state == "complete" and not overwrite:
        raise StoreError(
            f"{target.name}: a complete store exists; pass {argument('overwrite', True)} "
            "to replace it"
        )


def check_destination(
    store: str | os.PathLike,
    *,
    inputs: Iterable[Any] = (),
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Refuse a destination :func:`to_zarr` would not write, before any work is done.

    Reads only; the command line calls it with its own input arguments before it
    opens them.

    Parameters
    ----------
    store
        The destination: a path or an fsspec URL.
    inputs
        Paths or URLs of the inputs; a destination that is, contains or lies inside
        one of them is refused.
    overwrite, storage_options
        As in :func:`to_zarr`.

    Raises
    ------
    StoreError
        The destination is a file, a folder or Zarr store this library did not
        write, a complete store (without ``overwrite``), or overlaps an input; a local path
        where no folder can be made (a symbolic link to nothing, a name too long); or
        the file system or object store cannot be reached (no credentials...).
    """
    target = Target.of(store, storage_options)
    check_apart(store, inputs)
    state, doc = _inspect(target)  # first: a store out of reach is named as such
    _refuse_inside_a_store(target)
    _refuse(target, state, doc, overwrite)
    if state == "missing":
        if target.local:
            _check_creatable(target)
        else:
            check_bucket(target)


def _check_creatable(target: Target) -> None:
    """Refuse a local destination where nothing is and no folder can be made."""
    obstacle = folder_obstacle(target.path, "store")
    if obstacle is not None:
        raise StoreError(f"{target.name}: {obstacle}")


def folder_obstacle(path: str | os.PathLike, what: str = "folder") -> str | None:
    """What keeps a new folder (for a ``what``) from being made at local ``path``, where
    no folder is yet; None if nothing does: a symbolic link to nothing (at the path or a
    folder above it), a name too long, a file on the way.

    Examples
    --------
    >>> folder_obstacle("/dev/null/out")
    'no folder can be made there (Not a directory)'
    """
    path = os.fspath(path)
    try:
        os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        return f"no {what} can be made there ({reason(err)})"
    else:  # something, yet not a folder: a file, or a link that leads nowhere
        return None if os.path.isdir(path) else f"{_not_a_folder(path)}; choose another one"
    above = os.path.dirname(os.path.abspath(path))  # "name" alone: its folder is "."
    while not os.path.lexists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        return f"no {what} can be made there ({_not_a_folder(above)})"
    return None


def _not_a_folder(path: str) -> str:
    """What ``path``, no folder, is instead."""
    return dangling_link(path) or f"{path} is not a folder"


def dangling_link(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is a symbolic link to nothing (a write would follow it);
    None otherwise."""
    path = os.fspath(path)
    if os.path.islink(path) and not os.path.exists(path):
        return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
    return None


def _refuse_inside_a_store(target: Target) -> None:
    """Refuse a destination in a folder of a store of this library: its own arrays
    live there, and a store is replaced as a whole."""
    parent = target.path
    while "/" in parent.strip("/"):
        parent = parent.rstrip("/").rsplit("/", 1)[0] or "/"
        name = parent if target.local else target.fs.unstrip_protocol(parent)
        enclosing = replace(target, name=name, path=parent)
        doc = _read_json_quietly(enclosing, "zarr.json")
        if doc is not None and is_ours(enclosing, doc):
            raise StoreError(
                f"{target.name}: lies inside {enclosing.name}, a store of this library; "
                "write it somewhere else"
            )


def _read_json_quietly(target: Target, key: str) -> dict[str, Any] | None:
    """:func:`~m3rcr_xr.location.read_json`, None for what cannot be read as a metadata document."""
    with contextlib.suppress(StoreError, OSError):
        return read_json(target, key)
    return None


def _copied(doc: dict[str, Any]) -> bool:
    """Whether a root ``zarr.json`` that is no store of this library's
    (:func:`~m3rcr_xr.identity.is_ours`) is :data:`_COPY`: it carries a store's
    identifier."""
    return STORE_ID in (doc.get("attributes") or {})


# ------------------------------------------------------------------------- layout
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


def _chunks_per_step(ds: xr.Dataset, dim: str) -> int:
    """How many chunks along ``dim`` a step of a new store writes: at most
    :data:`CHUNKS_PER_STEP` and :data:`PIXELS_PER_STEP` pixels, at least one.

    Examples
    --------
    >>> import m3rcr_xr
    >>> scene = m3rcr_xr.synthetic_scene((16_384, 16_384), chunks=1024)
    >>> _chunks_per_step(scene, "y"), _chunks_per_step(scene.isel(x=slice(8192)), "y")
    (4, 8)
    """
    pixels = ds.chunksizes[dim][0] * math.prod(ds.sizes[d] for d in ("y", "x") if d != dim)
    return max(1, min(CHUNKS_PER_STEP, PIXELS_PER_STEP // pixels))


def _steps(ds: xr.Dataset, dim: str, chunks_per_step: int) -> list[slice]:
    """Regions along ``dim``, each ``chunks_per_step`` chunks (the last may be fewer)."""
    sizes = ds.chunksizes[dim]
    bounds = np.cumsum((0, *sizes))
    starts = bounds[::chunks_per_step]
    ends = [*starts[1:], bounds[-1]]
    return [slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True) if b > a]


def _prepare(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.chunk(store_chunks(ds))
    # coordinates are small: keep them in memory so they are written with the metadata;
    # strings as variable-length UTF-8, the string type Zarr v3 specifies
    ds = ds.assign_coords({name: _plain(ds[name]) for name in ds.coords})
    # so are data variables without the dim the steps write along (a per-band gain):
    # written with the metadata too, as no step writes them
    dim = _write_dim(ds)
    ds = ds.assign(
        {name: var.compute() for name, var in ds.data_vars.items() if dim not in var.dims}
    )
    for name, var in ds.variables.items():
        kept = KEPT_ENCODING if name in ds.data_vars else ()
        encoding = {key: var.encoding[key] for key in kept if key in var.encoding}
        attrs = dict(var.attrs)  # a new dict: the caller's variables keep theirs
        # a nodata declared the way rioxarray.open_rasterio declares it (in attrs), which
        # xarray refuses to write next to an encoded one
        fill = attrs.pop("_FillValue", None)
        _unpacked(attrs, encoding)
        if var.dtype.kind == "f":
            if fill is not None:  # where xarray's decoding puts it: NaN when read
                encoding.setdefault("_FillValue", fill)
        else:
            # an integer _FillValue would read back masked, as floats: the data model's
            # integers keep their nodata as a value (attrs["nodata"])
            encoding.pop("_FillValue", None)
            if fill is not None and var.dtype.kind in "iu":
                attrs.setdefault("nodata", fill)
        var.encoding, var.attrs = encoding, attrs
    _check_decoded_dtypes(ds)
    return ds


#: packing a variable may declare (rioxarray: in attrs, as it reads a file), and its
#: value that changes nothing
_PACKING = {"scale_factor": 1, "add_offset": 0}


def _unpacked(attrs: dict[str, Any], encoding: dict[str, Any]) -> None:
    """Packing declared in ``attrs`` (as ``rioxarray.open_rasterio`` declares it, which
    xarray refuses to write next to an encoded one) moved into ``encoding``, and packing
    that changes nothing (scale 1, offset 0) dropped from both: a variable is never
    scaled by it, and read back in its own dtype."""
    for key, identity in _PACKING.items():
        value = attrs.pop(key, None)
        if value is not None:
            encoding.setdefault(key, value)
        if key in encoding and np.all(np.asarray(encoding[key]) == identity):
            del encoding[key]


def _check_decoded_dtypes(ds: xr.Dataset) -> None:
    """Refuse an encoding of a variable of the schema that would read back in another
    dtype than the schema's: :func:`open_zarr` would refuse the store it wrote.

    A packed variable (``scale_factor``, ``add_offset``) reads back unpacked as float64
    or int64, whatever its dtype (JSON attributes keep no float32); a ``dtype`` without
    them reads back as that dtype.
    """
    for name, var in ds.data_vars.items():
        if str(name) not in VARIABLES:
            continue
        expected = VARIABLES[str(name)][1]
        packing = [key for key in _PACKING if key in var.encoding]
        stored = var.encoding.get("dtype")
        if packing:
            how, reads = f"{packing[0]}={var.encoding[packing[0]]!s}", "float64 or int64"
        elif stored is not None and np.dtype(stored) != expected:
            how, reads = f"dtype={np.dtype(stored)}", str(np.dtype(stored))
        else:
            continue
        raise SchemaError(
            f"{name}: encoding {how} would read back as {reads}, not the schema's "
            f"{expected}, and the store would not open; remove it from "
            f"ds[{name!r}].encoding"
        )


def _plain(coord: xr.DataArray) -> xr.DataArray:
    coord = coord.compute()
    return coord.astype(object) if coord.dtype.kind == "U" else coord


def _unicode(coord: xr.DataArray) -> xr.DataArray:
    if coord.dtype.kind in "OT":  # object or numpy's StringDType: back to fixed-width str
        return coord.copy(data=np.asarray(coord.values.tolist(), dtype=str))
    return coord


# ------------------------------------------------------------------------ writing
def to_zarr(
    ds: xr.Dataset,
    store: str | os.PathLike,
    *,
    progress: bool | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write a scene or a collection to a Zarr (v3) store, resumably and safely.

    The encodings a data variable carries are kept (:data:`KEPT_ENCODING`: codecs such as
    ``compressors``, a float's ``_FillValue``, ``dtype``); its chunks are the store's own
    (:func:`store_chunks`), whatever ``encoding["chunks"]`` says. An integer's
    ``_FillValue`` is dropped: it would read back masked, as floats. A ``_FillValue`` in
    the attributes (as ``rioxarray.open_rasterio`` declares nodata) goes where xarray's
    decoding puts it: a float's into its encoding, an integer's into ``attrs["nodata"]``
    unless that is set. On a variable of the schema, an encoding that would not read
    back in the schema's dtype (``scale_factor``, ``add_offset``, another ``dtype``) is
    refused, as :func:`open_zarr` would refuse the store. Every chunk is
    written, even one holding only the fill value (xarray's ``write_empty_chunks=True``):
    zarr's test of each chunk against the fill value costs more than the few empty
    chunks of a scene would save.

    Parameters
    ----------
    ds
        A scene or a collection (lazy or in memory).
    store
        A path or any fsspec URL (``s3://bucket/scene.zarr``): nothing there, an empty
        folder, or a store of this library (see the module's safety rules).
    progress
        Show a progress bar; default: the ``progress`` option.
    overwrite
        Replace a store of this library (complete, or unfinished with other data):
        its own keys are removed, other files in its folder are kept. Without it, an
        unfinished store of the same data is resumed, anything else refused.
    storage_options
        For a URL: options of its fsspec file system, as in ``xarray.Dataset.to_zarr``
        (e.g. ``{"key": ..., "secret": ..., "client_kwargs": {"endpoint_url": ...}}``
        for s3fs); default: what the file system finds in the environment.

    Raises
    ------
    StoreError
        Before anything is written: the destination is not one of the above (a copy of
        a store of this library that other software wrote, such as xarray's
        ``to_zarr``, included), overlaps a source of ``ds``, is being written by another
        process, is an unfinished store of other data (or of an input that reports no
        version), or lies in a bucket that does not exist; or the file system is
        read-only or full. After the last step: an input of ``ds`` changed while it was
        read (the store is left unfinished).
    SchemaError
        Before anything is written: a variable's name cannot name an array of a store
        (empty, ``.``, ``..``, or with a ``/``, which Zarr would take for a group); an
        encoding of a variable of the schema would not read back in its dtype.

    Examples
    --------
    >>> import m3rcr_xr
    >>> m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((512, 512)), "scene.zarr")  # doctest: +SKIP
    >>> m3rcr_xr.open_zarr("scene.zarr").rio.crs  # doctest: +SKIP
    CRS.from_epsg(32632)
    """
    validate(ds, required=())
    _check_names(ds)
    target = Target.of(store, storage_options)
    inputs = sources(ds)
    check_destination(store, inputs=inputs, overwrite=overwrite, storage_options=storage_options)
    ds, identities, fingerprint = _identified(ds, inputs)
    dim = _write_dim(ds)
    chunks_per_step = _chunks_per_step(ds, dim)
    unversioned = [source for source, (_, versioned) in identities.items() if not versioned]
    with write_errors(target), locked(target), _quiet_own_files():
        names = [str(name) for name in ds.variables]
        planned = _plan(target, fingerprint, overwrite, names, unversioned)
        fresh = planned is None
        done: set[int] = set()
        if planned is not None:  # a resume writes the steps the store began with
            done, chunks_per_step = planned
        steps = _steps(ds, dim, chunks_per_step)
        if fresh:
            if unversioned:
                log.warning(
                    "%s: %s%s; if this write is interrupted, it cannot be resumed",
                    redacted(store),
                    _unversioned(unversioned[0]),
                    f" (and {len(unversioned) - 1} other(s))" if len(unversioned) > 1 else "",
                )
            try:
                _initialise(ds, target, fingerprint, chunks_per_step)
            except Exception:
                # no data written yet (an encoding zarr refuses, say): take it back; if
                # that fails too (a full disk), the next write starts it over anyway
                with contextlib.suppress(Exception):
                    _clear(target)
                raise
        else:
            log.info(
                "%s: resuming, %d of %d steps already written",
                redacted(store),
                len(done),
                len(steps),
            )
            _remove_partial_writes(target, map(str, ds.variables))
        try:
            _write_steps(ds, target.zarr_store, target, dim, steps, done, progress)
        except M3RCRError:
            # the data itself is wrong (a value found while reading): a resume could
            # only fail again, so a store this call began is taken back; an interrupted
            # write (a kill, Ctrl-C, an I/O error) stays, to be resumed; the folder, if
            # this call made it, goes with the lock
            if fresh:
                _clear(target)
            raise
        _check_unchanged(target, inputs, identities)
        _finish(target, ds)


def _check_unchanged(
    target: Target, inputs: Sequence[str], identities: dict[str, tuple[str, bool]]
) -> None:
    """Refuse to complete a store whose ``inputs`` changed while it was written from them
    (another process re-ingested one): its steps may hold both versions. Each input is
    identified once more (:func:`~m3rcr_xr.identity.source_identities`), against its
    ``identities`` taken before the first step.

    Raises
    ------
    StoreError
        Naming the input. The store is left unfinished, and a resume refuses it: its
        fingerprint is that of the input as it was.
    """
    now = source_identities(inputs)
    changed = [source for source in inputs if now[source] != identities[source]]
    if changed:
        raise StoreError(
            f"{target.name}: the input {redacted(changed[0])} changed while it was read, so "
            "the store may mix its old and new data; it is left unfinished and cannot be "
            f"resumed: write it again with {argument('overwrite', True)}"
        )


def _identified(
    ds: xr.Dataset, inputs: Sequence[str]
) -> tuple[xr.Dataset, dict[str, tuple[str, bool]], str]:
    """``ds`` as :func:`to_zarr` writes it (:func:`_prepare`), the identities of its
    ``inputs`` (:func:`~m3rcr_xr.identity.sources`, taken before: the prepared variables
    no longer name them) and the fingerprint :func:`to_zarr` keeps in the store."""
    prepared = _prepare(ds)
    identities = source_identities(inputs)
    return prepared, identities, data_fingerprint(prepared, identities=identities)


def written_from(
    ds: xr.Dataset, store: str | os.PathLike, *, storage_options: dict[str, Any] | None = None
) -> bool:
    """Whether ``store`` is a complete store that :func:`to_zarr` wrote from ``ds``'s
    data: the fingerprint it keeps is the one :func:`to_zarr` computes for ``ds`` (the
    same layout and inputs, none changed since). Reads metadata and listings only;
    nothing of ``ds`` is computed but what :func:`to_zarr` computes before it writes
    (coordinates, variables without the dim it writes along).

    Raises
    ------
    StoreError
        An input of ``ds`` out of reach.
    """
    state, doc = _inspect(Target.of(store, storage_options))
    if state != "complete" or doc is None:
        return False
    return doc["attributes"].get(FINGERPRINT) == _identified(ds, sources(ds))[2]


def _plan(
    target: Target,
    fingerprint: str,
    overwrite: bool,
    names: Sequence[str],
    unversioned: Sequence[str] = (),
) -> tuple[set[int], int] | None:
    """Under the lock: the steps an earlier, unfinished run of the same data wrote
    (to skip) and its chunks a step (:data:`STEP_CHUNKS`), or None to start afresh
    (after removing a store being replaced). The arrays ``names`` are checked first to
    take nothing of the folder but the store's. A resume from an ``unversioned`` input
    (:func:`~m3rcr_xr.identity.source_identities`) is refused: the store could mix the
    old file's pixels with the new one's; so is one whose steps cannot be known."""
    state, doc = _inspect(target)
    _refuse(target, state, doc, overwrite)
    if doc is None:  # nothing there, or an empty folder
        return None
    _check_free(target, doc, names)
    attrs = doc["attributes"]
    # no step written yet (killed while it was created, replaced or writing its first
    # steps): it holds none of its data, so it is started over, whatever data it was for
    started = not attrs.get(PROGRESS)
    if overwrite or started:
        _clear(target)
        return None
    if attrs.get(FINGERPRINT) != fingerprint:
        raise StoreError(
            f"{target.name}: an unfinished store of other data is there (other inputs, "
            "the same files changed since, or written by another version of m3rcr_xr); "
            f"pass {argument('overwrite', True)} to start it over"
        )
    if unversioned:
        raise StoreError(
            f"{target.name}: cannot resume this unfinished store: {_unversioned(unversioned[0])}"
            f"; pass {argument('overwrite', True)} to start it over"
        )
    chunks_per_step = attrs.get(STEP_CHUNKS, _EARLIER_STEP_CHUNKS)
    if type(chunks_per_step) is not int or chunks_per_step < 1:
        raise StoreError(
            f"{target.name}: cannot resume this unfinished store: its {STEP_CHUNKS} "
            f"({attrs[STEP_CHUNKS]!r}) is no number of chunks, so its steps are unknown; "
            f"pass {argument('overwrite', True)} to start it over"
        )
    return set(attrs.get(PROGRESS, [])), chunks_per_step


def _unversioned(source: str) -> str:
    """Why a write from ``source`` (an input that reports no version) cannot resume."""
    return (
        f"the input {redacted(source)} reports its size but no version (no ETag nor "
        "Last-Modified), so a change since the first run cannot be detected"
    )


def _check_free(target: Target, doc: dict[str, Any], names: Sequence[str]) -> None:
    """Refuse ``names`` of arrays to write that name a file or folder beside the store's
    own arrays (a user's array added to its folder): Zarr would write into it, and
    the next replacement would remove it as the store's.

    Raises
    ------
    StoreError
        Naming them.
    """
    there = {_basename(path) for path in target.fs.ls(target.path, detail=False)}
    taken = sorted(set(names) & there - set(_members(target, doc)))
    if taken:
        raise StoreError(
            f"{target.name}: {', '.join(map(repr, taken))} in its folder is not the store's "
            "own (another program's array or file); remove or rename it, or the variable"
        )


def _clear(target: Target) -> None:
    """Remove a store of this library: its own arrays (:func:`_members`) and its root,
    nothing else (another store, or a user's files or arrays in its folder, stay).

    The root is first marked unfinished with no fingerprint, so that a kill half-way
    leaves a store that is replaced again, never one that opens with arrays missing.
    Its identifier (:data:`ID_OBJECT`) goes last: a kill before leaves a root that it
    matches, one after a folder that counts as empty.
    """
    doc = read_json(target, "zarr.json")
    if doc is not None:
        members = _members(target, doc)
        _set_attrs(target, {COMPLETE: False, FINGERPRINT: "", PROGRESS: [], MEMBERS: members})
        _remove_partial_writes(target, members)
        for name in members:
            folder = target.key(name)
            for key in (f"{folder}/c", f"{folder}/zarr.json"):  # chunks, then metadata
                _remove(target, key)
            if target.local and os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        _remove(target, target.key("zarr.json"))
    identifier = target.key(ID_OBJECT)
    target.fs.invalidate_cache(identifier)
    # a file only: a link or a folder in its place (a write refused it) is not the store's
    if target.fs.isfile(identifier) and not (target.local and os.path.islink(identifier)):
        target.fs.rm_file(identifier)


def remove_store(
    store: str | os.PathLike, *, storage_options: dict[str, Any] | None = None
) -> None:
    """Remove a store of this library, complete or not, as a replacement does: its own
    arrays, root metadata and identifier (:func:`_clear`), nothing else; a local folder
    left empty goes too. Nothing there is nothing to do.

    Raises
    ------
    StoreError
        Anything else there (a file, a folder of other files, a Zarr store of other
        software, a copy of a store of this library that other software wrote), or
        another writer is writing the store.
    """
    target = Target.of(store, storage_options)
    state, doc = _inspect(target)
    if state == "missing":
        return
    _refuse(target, state, doc, overwrite=True)
    with write_errors(target), locked(target):
        _clear(target)
    if target.local and not os.listdir(target.path):
        os.rmdir(target.path)


def _remove(target: Target, key: str) -> None:
    """Remove the file or folder ``key`` of the store and all under it, exactly that.

    fsspec's ``rm`` takes a path with glob characters for a pattern (but on the local
    file system): a variable ``x[1]`` would take a user's array ``x1`` beside it. Such
    a path is listed instead (``find`` takes no pattern) and its keys removed one by
    one; what ``rm`` lists under a plain path is removed as listed, in batches (S3:
    1000 keys a request), folders included.
    """
    fs = target.fs
    fs.invalidate_cache(key)
    if target.local or not glob.has_magic(key):
        if fs.exists(key):
            fs.rm(key, recursive=True)
        return
    for found in fs.find(key):
        fs.rm_file(found)


def _members(target: Target, doc: dict[str, Any]) -> list[str]:
    """The arrays of a store of this library, from its root ``zarr.json``.

    As recorded when it was created (:data:`MEMBERS`); for a store written before they
    were, its consolidated metadata (complete) or its folders that hold a Zarr array
    (unfinished), never a group (another store). Each is a plain name in the store's
    folder, or :class:`StoreError`.
    """
    attrs = doc.get("attributes") or {}
    names = attrs.get(MEMBERS)
    if names is None:
        names = list(((doc.get("consolidated_metadata") or {}).get("metadata")) or {})
    if not names and MEMBERS not in attrs:
        names = [name for name in _folders(target) if _node_type(target, name) == "array"]
    bad = [n for n in names if not _array_name(n)]
    if bad:
        raise StoreError(f"{target.name}: {MEMBERS} names {bad[0]!r}, not an array of the store")
    return [str(n) for n in names]


def _array_name(name: Any) -> bool:
    """Whether ``name`` can name an array at a store's root: a string, not a path."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name


def _check_names(ds: xr.Dataset) -> None:
    for name in ds.variables:
        if not _array_name(name):
            raise SchemaError(
                f"variable {name!r}: not a name a Zarr store can hold as an array (a string, "
                "not empty, '.' or '..', without '/'); rename it"
            )
        if name in _OWN_FILES:
            raise SchemaError(f"variable {name!r}: names a file of the store's own; rename it")


def _folders(target: Target) -> list[str]:
    """The names of the folders in the store's folder."""
    entries = target.fs.ls(target.path, detail=True)
    return [_basename(entry["name"]) for entry in entries if entry["type"] == "directory"]


def _node_type(target: Target, name: str) -> str | None:
    """``"array"`` or ``"group"`` for a Zarr node in the folder ``name``, else None."""
    return (_read_json_quietly(target, f"{name}/zarr.json") or {}).get("node_type")


def _initialise(ds: xr.Dataset, target: Target, fingerprint: str, chunks_per_step: int) -> None:
    """Create the arrays and write the in-memory coordinates; no data yet. The root
    records the store's steps (:data:`STEP_CHUNKS`).

    The store's new identifier comes first (:data:`ID_OBJECT`: alone, the folder counts
    as empty), then the root, with this library's attributes and the identifier: a kill
    while the arrays are created leaves a store that is recognised, and started over.
    Mode ``"a"``, not ``"w"``: the destination was checked under the lock to hold no
    Zarr node, and ``"w"`` would delete whatever else is in the folder.
    """
    store_id = secrets.token_hex(16)
    _write_own(target, ID_OBJECT, store_id.encode(), "the store's identifier")
    attrs = {
        COMPLETE: False,
        FINGERPRINT: fingerprint,
        PROGRESS: [],
        STEP_CHUNKS: chunks_per_step,
        MEMBERS: sorted(str(name) for name in ds.variables),
        STORE_ID: store_id,
    }
    _write_root(target, {"zarr_format": 3, "node_type": "group", "attributes": attrs})
    template = ds.copy()
    template.attrs = {**ds.attrs, **attrs}
    template.to_zarr(target.zarr_store, mode="a", compute=False, **_ZARR_WRITE)


def _write_steps(
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
            _set_attrs(target, {PROGRESS: sorted(done)})
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
def _quiet_own_files() -> Iterator[None]:
    """Zarr warns about the lock file and the identifier when it lists the store's
    members: they are not part of the hierarchy, and zarr is right to skip them."""
    names = "|".join(map(re.escape, (LOCK, TAKEOVER, ID_OBJECT)))
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=f"Object at ({names}) is not recognized", category=UserWarning
        )
        yield


def _set_attrs(target: Target, attrs: dict[str, Any]) -> None:
    """Update the root group's attributes in one atomic write of the root ``zarr.json``;
    consolidated metadata is dropped, as only a complete store has it."""
    doc = read_json(target, "zarr.json")
    if doc is None:
        raise StoreError(f"{target.name}: zarr.json disappeared while writing the store")
    doc["attributes"] = {**(doc.get("attributes") or {}), **attrs}
    doc.pop("consolidated_metadata", None)
    _write_root(target, doc)


def _remove_partial_writes(target: Target, names: Iterable[str]) -> None:
    """Remove the temporary files of zarr's chunk and metadata writes (``KEY.<uuid
    hex>.partial``) that a killed writer left in the folders of the arrays ``names`` of
    a local store; a resume writes those keys again. Object stores have no such files."""
    if not target.local:
        return
    for name in names:
        for path in Path(target.key(name)).rglob("*.partial"):
            if _ZARR_PARTIAL.fullmatch(path.name):
                path.unlink(missing_ok=True)


def _finish(target: Target, ds: xr.Dataset) -> None:
    """The last step, one atomic write: the complete flag with the consolidated
    metadata (zarr-python's inline form: each array's ``zarr.json`` under its name)."""
    members = {}
    for name in ds.variables:
        members[str(name)] = read_json(target, f"{name}/zarr.json")
    doc = read_json(target, "zarr.json") or {}
    doc["attributes"] = {**doc.get("attributes", {}), COMPLETE: True}
    doc["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": members}
    _write_root(target, doc)


def _write_root(target: Target, doc: dict[str, Any]) -> None:
    """Replace the root ``zarr.json`` whole: readers and a kill see the old or the new."""
    data = json.dumps(doc, indent=2).encode()
    if not target.local:
        _write_own(target, "zarr.json", data, "the root")  # one PUT: all or nothing
        return
    _write_own(target, _ROOT_TMP, data, "the root's temporary file")
    os.replace(target.key(_ROOT_TMP), target.key("zarr.json"))


def _write_own(target: Target, name: str, data: bytes, what: str) -> None:
    """Write the store's own file ``name`` (``what`` it is, for messages): one PUT on
    object stores; locally, synced, never through a symbolic link in its place."""
    if not target.local:
        target.fs.pipe_file(target.key(name), data)
        return
    flags = os.O_WRONLY | os.O_TRUNC
    with os.fdopen(open_own_file(target.key(name), flags, what), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


# ------------------------------------------------------------------------ reading
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
    return _inspect(Target.of(store, storage_options))[0]


def is_complete(store: Any, *, storage_options: dict[str, Any] | None = None) -> bool:
    """True when ``store`` is a store of this library written to the end by
    :func:`to_zarr` (or a byte copy of one, which keeps its identifier); False for
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
    """Open a store written by :func:`to_zarr`, lazily, with its CRS.

    ``storage_options`` go to the fsspec file system of a URL, as in :func:`to_zarr`.

    The result records the store in ``encoding["source"]`` (of the dataset and of
    each variable), so that :func:`to_zarr` never writes over its own input; a
    :class:`~m3rcr_xr.identity.Source`, which keeps ``storage_options`` for
    :func:`to_zarr` to identify the input again (never printed nor written).

    Raises
    ------
    StoreError
        Nothing there; not a store of this library (a file, a folder of other files,
        a Zarr store of other software, a copy of a store of this library that other
        software wrote); or a store not written to the end.
    """
    target = Target.of(store, storage_options)
    state, doc = _inspect(target)
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
    if state == "foreign" and doc is not None and _copied(doc):
        raise StoreError(
            f"{target.name}: is {_COPY}, not a store written by m3rcr_xr; open it with "
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
