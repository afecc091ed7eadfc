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
  source file, with its inode locally, which tells a file replaced by one of the same
  size and time (the fingerprint of each source store of
  this library; the listing of a Zarr store of other software: each key's size and
  modification time, or ETag; over HTTP, the ``ETag``, ``Content-MD5``, ``Digest`` or
  ``Last-Modified`` header). An unfinished store of other data is never resumed, nor
  one written from an input that reports its size alone (a change of it could not be
  seen). A resume removes the temporary files (``KEY.<uuid>.partial``) of zarr's
  writes that a killed writer cut off in the arrays' folders. A store with no step
  recorded (killed while its arrays were created or its first steps written) holds
  none of its data: it is started over, whatever data it was for. Variables without
  the dim the steps write along are written with the metadata.
* **Inputs changed since they were opened.** A lazy scene keeps reading its files
  after it was opened (GDAL's block cache holds what was looked at): a file changed
  since (rewritten or replaced) would give the store rows of both. Each file's
  identity when it was opened (:func:`~m3rcr_xr.identity.opened_file`) is compared
  with the one taken before anything is written, and such a file is refused.
* **One writer.** A writer holds the store's lock while it writes (an OS lock on a
  local file, a marker object on object stores; a killed writer never blocks the
  resume): see :mod:`m3rcr_xr.locks` for its rules.
* **Completion.** The root ``zarr.json`` is only ever replaced whole (a temporary file
  and ``os.replace`` locally, one PUT on object stores). Completion is a single such
  write holding both the ``m3rcr_complete`` flag and the consolidated metadata, so a
  kill at any moment leaves a complete store or an unfinished one that resumes. Before
  it, the inputs are identified again: a store whose input changed while it was
  written (another process re-ingested it) is left unfinished, and not resumed.

Its modules: :mod:`~m3rcr_xr.store.root` reads and replaces a store's root
``zarr.json`` (the attributes that make it ours and record its progress),
:mod:`~m3rcr_xr.store.destinations` tells what is at a destination and refuses those
never written to, :mod:`~m3rcr_xr.store.layout` chunks a dataset, cuts its write into
steps and prepares it as written, :mod:`~m3rcr_xr.store.removal` removes a store's own
keys and nothing else, :mod:`~m3rcr_xr.store.writing` creates the arrays, writes the
steps and completes the store, :mod:`~m3rcr_xr.store.resume` tells whether a write
resumes (the data's fingerprint, an earlier run's steps, inputs that changed), and
:mod:`~m3rcr_xr.store.reading` opens a store. :func:`to_zarr` is here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import xarray as xr

from ..exceptions import M3RCRError
from ..href import redacted
from ..identity import data_fingerprint, sources
from ..location import Target, write_errors
from ..locks import locked
from ..schema import validate
from .destinations import StoreState, check_destination, dangling_link, folder_obstacle
from .layout import (
    CHUNKS_PER_STEP,
    KEPT_ENCODING,
    PIXELS_PER_STEP,
    check_names,
    step_regions,
    step_size,
    store_chunks,
    write_dim,
)
from .reading import is_complete, open_zarr, store_state
from .removal import clear, remove_partial_writes, remove_store
from .resume import check_unchanged, identified, plan, unversioned_reason, written_from
from .root import COMPLETE, MEMBERS, PROGRESS, STEP_CHUNKS
from .writing import READ_CACHE_BYTES, finish, initialise, quiet_own_files, write_steps

__all__ = [
    "CHUNKS_PER_STEP",
    "COMPLETE",
    "KEPT_ENCODING",
    "MEMBERS",
    "PIXELS_PER_STEP",
    "PROGRESS",
    "READ_CACHE_BYTES",
    "STEP_CHUNKS",
    "StoreState",
    "check_destination",
    "dangling_link",
    "data_fingerprint",
    "folder_obstacle",
    "is_complete",
    "open_zarr",
    "remove_store",
    "sources",
    "store_chunks",
    "store_state",
    "to_zarr",
    "written_from",
]

log = logging.getLogger(__name__)


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
    InputFileError
        Before anything is written: a file of ``ds`` changed (or removed) since it was
        opened (:func:`m3rcr_xr.open_quartet`, :func:`m3rcr_xr.open_stac`,
        :func:`m3rcr_xr.open_udm2`) while data of it is lazy; open it again.
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
    check_names(ds)
    target = Target.of(store, storage_options)
    inputs = sources(ds)
    check_destination(store, inputs=inputs, overwrite=overwrite, storage_options=storage_options)
    ds, identities, fingerprint = identified(ds, inputs)
    dim = write_dim(ds)
    chunks_per_step = step_size(ds, dim)
    unversioned = [source for source, (_, versioned) in identities.items() if not versioned]
    with write_errors(target), locked(target), quiet_own_files():
        names = [str(name) for name in ds.variables]
        planned = plan(target, fingerprint, overwrite, names, unversioned)
        fresh = planned is None
        done: set[int] = set()
        if planned is not None:  # a resume writes the steps the store began with
            done, chunks_per_step = planned
        steps = step_regions(ds, dim, chunks_per_step)
        if fresh:
            if unversioned:
                log.warning(
                    "%s: %s%s; if this write is interrupted, it cannot be resumed",
                    redacted(store),
                    unversioned_reason(unversioned[0]),
                    f" (and {len(unversioned) - 1} other(s))" if len(unversioned) > 1 else "",
                )
            try:
                initialise(ds, target, fingerprint, chunks_per_step)
            except Exception:
                # no data written yet (an encoding zarr refuses, say): take it back; if
                # that fails too (a full disk), the next write starts it over anyway
                with contextlib.suppress(Exception):
                    clear(target)
                raise
        else:
            log.info(
                "%s: resuming, %d of %d steps already written",
                redacted(store),
                len(done),
                len(steps),
            )
            remove_partial_writes(target, map(str, ds.variables))
        try:
            write_steps(ds, target.zarr_store, target, dim, steps, done, progress)
        except M3RCRError:
            # the data itself is wrong (a value found while reading): a resume could
            # only fail again, so a store this call began is taken back; an interrupted
            # write (a kill, Ctrl-C, an I/O error) stays, to be resumed; the folder, if
            # this call made it, goes with the lock
            if fresh:
                clear(target)
            raise
        check_unchanged(target, inputs, identities)
        finish(target, ds)
