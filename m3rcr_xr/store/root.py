"""A store's root ``zarr.json`` and the files of its own.

The root's attributes make a store one of this library's and record how far it is
written (complete, steps done, its arrays, its steps' chunks). The root is only ever
replaced whole (:func:`write_root`): a kill leaves the old root or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from ..exceptions import StoreError
from ..identity import ID_OBJECT
from ..location import Target, open_own_file, read_json
from ..locks import LOCK, TAKEOVER

COMPLETE = "m3rcr_complete"
PROGRESS = "m3rcr_steps_done"
#: the store's own arrays (its variables), recorded when it is created: all that an
#: overwrite removes
MEMBERS = "m3rcr_members"
#: the chunks a step of the store writes, recorded when it is created: a resume writes
#: the steps the store began with, whatever the plan of the version that resumes it
STEP_CHUNKS = "m3rcr_chunks_per_step"
#: where a new root ``zarr.json`` is written before it replaces the old one (locally)
ROOT_TMP = "zarr.json.m3rcr-tmp"
#: the files of the store's own that are no Zarr node: a folder of these alone is empty
OWN_FILES = frozenset({LOCK, TAKEOVER, ID_OBJECT, ROOT_TMP})


def basename(path: str) -> str:
    """The last name of a path or key, a trailing ``/`` ignored."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def read_json_quietly(target: Target, key: str) -> dict[str, Any] | None:
    """:func:`~m3rcr_xr.location.read_json`, None for what cannot be read as a metadata document."""
    with contextlib.suppress(StoreError, OSError):
        return read_json(target, key)
    return None


def array_name(name: Any) -> bool:
    """Whether ``name`` can name an array at a store's root: a string, not a path."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name


def set_attrs(target: Target, attrs: dict[str, Any]) -> None:
    """Update the root group's attributes in one atomic write of the root ``zarr.json``;
    consolidated metadata is dropped, as only a complete store has it."""
    doc = read_json(target, "zarr.json")
    if doc is None:
        raise StoreError(f"{target.name}: zarr.json disappeared while writing the store")
    doc["attributes"] = {**(doc.get("attributes") or {}), **attrs}
    doc.pop("consolidated_metadata", None)
    write_root(target, doc)


def write_root(target: Target, doc: dict[str, Any]) -> None:
    """Replace the root ``zarr.json`` whole: readers and a kill see the old or the new."""
    data = json.dumps(doc, indent=2).encode()
    if not target.local:
        write_own(target, "zarr.json", data, "the root")  # one PUT: all or nothing
        return
    write_own(target, ROOT_TMP, data, "the root's temporary file")
    os.replace(target.key(ROOT_TMP), target.key("zarr.json"))


def write_own(target: Target, name: str, data: bytes, what: str) -> None:
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
