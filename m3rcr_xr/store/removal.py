"""Removing a store of this library: its own arrays, root and identifier, nothing else.

:func:`clear` is what an overwrite and :func:`remove_store` do; a user's files or
arrays in the store's folder, and other stores, stay. :func:`remove_partial_writes`
removes the temporary files of zarr's writes that a killed writer left.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..exceptions import StoreError
from ..identity import FINGERPRINT, ID_OBJECT
from ..location import Target, read_json, write_errors
from ..locks import locked
from .destinations import inspect_store, refuse
from .root import COMPLETE, MEMBERS, PROGRESS, array_name, basename, read_json_quietly, set_attrs

#: zarr-python's temporary file of a local write, left behind by a writer killed in it
_ZARR_PARTIAL = re.compile(r"[^/]+\.[0-9a-f]{32}\.partial")


def remove_store(
    store: str | os.PathLike, *, storage_options: dict[str, Any] | None = None
) -> None:
    """Remove a store of this library, complete or not, as a replacement does: its own
    arrays, root metadata and identifier (:func:`clear`), nothing else; a local folder
    left empty goes too. Nothing there is nothing to do.

    Raises
    ------
    StoreError
        Anything else there (a file, a folder of other files, a Zarr store of other
        software, a copy of a store of this library that other software wrote), or
        another writer is writing the store.
    """
    target = Target.of(store, storage_options)
    state, doc = inspect_store(target)
    if state == "missing":
        return
    refuse(target, state, doc, overwrite=True)
    with write_errors(target), locked(target):
        clear(target)
    if target.local and not os.listdir(target.path):
        os.rmdir(target.path)


def clear(target: Target) -> None:
    """Remove a store of this library: its own arrays (:func:`own_arrays`) and its root,
    nothing else (another store, or a user's files or arrays in its folder, stay).

    The root is first marked unfinished with no fingerprint, so that a kill half-way
    leaves a store that is replaced again, never one that opens with arrays missing.
    Its identifier (:data:`ID_OBJECT`) goes last: a kill before leaves a root that it
    matches, one after a folder that counts as empty.
    """
    doc = read_json(target, "zarr.json")
    if doc is not None:
        members = own_arrays(target, doc)
        set_attrs(target, {COMPLETE: False, FINGERPRINT: "", PROGRESS: [], MEMBERS: members})
        remove_partial_writes(target, members)
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


def own_arrays(target: Target, doc: dict[str, Any]) -> list[str]:
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
    bad = [n for n in names if not array_name(n)]
    if bad:
        raise StoreError(f"{target.name}: {MEMBERS} names {bad[0]!r}, not an array of the store")
    return [str(n) for n in names]


def _folders(target: Target) -> list[str]:
    """The names of the folders in the store's folder."""
    entries = target.fs.ls(target.path, detail=True)
    return [basename(entry["name"]) for entry in entries if entry["type"] == "directory"]


def _node_type(target: Target, name: str) -> str | None:
    """``"array"`` or ``"group"`` for a Zarr node in the folder ``name``, else None."""
    return (read_json_quietly(target, f"{name}/zarr.json") or {}).get("node_type")


def remove_partial_writes(target: Target, names: Iterable[str]) -> None:
    """Remove the temporary files of zarr's chunk and metadata writes (``KEY.<uuid
    hex>.partial``) that a killed writer left in the folders of the arrays ``names`` of
    a local store; a resume writes those keys again. Object stores have no such files."""
    if not target.local:
        return
    for name in names:
        for path in Path(target.key(name)).rglob("*.partial"):
            if _ZARR_PARTIAL.fullmatch(path.name):
                path.unlink(missing_ok=True)
