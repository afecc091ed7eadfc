"""What is at a destination, and the destinations a store is never written to.

:func:`inspect_store` tells a store of this library (complete or not) from nothing,
an empty folder, a file, and a folder or Zarr store of other software;
:func:`check_destination` refuses, before any work, what
:func:`~m3rcr_xr.store.to_zarr` would not write: one of these, a complete store
without ``overwrite``, a destination overlapping an input or inside a store of this
library, a local path where no folder can be made.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Literal

from ..exceptions import StoreError, argument
from ..identity import STORE_ID, is_ours
from ..location import Target, check_apart, check_bucket, reaching, read_json, reason
from .root import COMPLETE, OWN_FILES, basename, read_json_quietly

StoreState = Literal["missing", "file", "empty", "foreign", "unfinished", "complete"]
#: what a root that carries an identifier without its object
#: (:func:`~m3rcr_xr.identity.is_ours`) is
COPY = "a copy of a store of m3rcr_xr written by other software (xarray's to_zarr, say)"


def inspect_store(target: Target) -> tuple[StoreState, dict[str, Any] | None]:
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
            names = {basename(p) for p in fs.ls(path, detail=False)}
            return ("empty" if names <= OWN_FILES else "foreign"), None
        if not is_ours(target, doc):
            return "foreign", doc
    return ("complete" if doc["attributes"].get(COMPLETE) else "unfinished"), doc


def refuse(target: Target, state: StoreState, doc: dict[str, Any] | None, overwrite: bool) -> None:
    """Raise for a destination never to be written, or a complete store not to be
    replaced; return for one that may be (what to do with it is decided later)."""
    if state == "file":
        raise StoreError(f"{target.name}: is a file, not a Zarr store; choose another destination")
    if state == "foreign":
        what = "a Zarr store of other software" if doc else "a folder of other files"
        if doc and copied(doc):
            what = COPY
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
    """Refuse a destination :func:`~m3rcr_xr.store.to_zarr` would not write, before any
    work is done.

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
        As in :func:`~m3rcr_xr.store.to_zarr`.

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
    state, doc = inspect_store(target)  # first: a store out of reach is named as such
    _refuse_inside_a_store(target)
    refuse(target, state, doc, overwrite)
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
        doc = read_json_quietly(enclosing, "zarr.json")
        if doc is not None and is_ours(enclosing, doc):
            raise StoreError(
                f"{target.name}: lies inside {enclosing.name}, a store of this library; "
                "write it somewhere else"
            )


def copied(doc: dict[str, Any]) -> bool:
    """Whether a root ``zarr.json`` that is no store of this library's
    (:func:`~m3rcr_xr.identity.is_ours`) is :data:`COPY`: it carries a store's
    identifier."""
    return STORE_ID in (doc.get("attributes") or {})
