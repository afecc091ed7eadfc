"""Locations: a path or fsspec URL, reached, read and written with errors that name it.

What :mod:`m3rcr_xr.store`, :mod:`m3rcr_xr.locks` and :mod:`m3rcr_xr.cog` share about
where they read and write:

* :class:`Target`: a location as the caller wrote it, its fsspec file system and path
  (and the ``storage_options`` it was given), with what xarray and zarr are given;
* errors of reaching a location (the file system's, an object-store client's: no
  credentials, an endpoint out of reach) become a :class:`StoreError` naming it
  (:func:`reaching`, :func:`reason`); so do a full, read-only or forbidden destination
  (:func:`write_errors`) and a bucket that does not exist (:func:`check_bucket`);
* a destination that is, contains or lies inside one of the inputs is refused
  (:func:`check_apart`);
* keys of a location read whole (:func:`read_bytes`, :func:`read_json`), files of a
  store's own opened never through a symbolic link (:func:`open_own_file`);
* a file's version as its file system lists it (:func:`version_of`: size and
  modification time, a local file's inode, ETag, HTTP
  ``Last-Modified``...).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import posixpath
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem

from .exceptions import StoreError
from .href import local_path

log = logging.getLogger(__name__)

#: errors of the file system that make a destination unwritable (named, not traced)
_UNWRITABLE = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENOTDIR}
#: errors of a path that make a destination unwritable when they are about its own path
#: or a folder above it (a symbolic link to nothing, a name too long); about another
#: path, they are an input's, and not the destination's to name
_BAD_PATH = {errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}


@dataclass(frozen=True)
class Target:
    """A store's (or a file's) location: ``name`` as the caller wrote it, a file system
    and a path."""

    name: str
    fs: fsspec.AbstractFileSystem
    path: str
    storage_options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, store: Any, storage_options: dict[str, Any] | None = None) -> Target:
        """``storage_options`` go to the fsspec file system (credentials, endpoint)."""
        if not isinstance(store, str | os.PathLike):
            raise StoreError(f"{store!r}: expected a path or an fsspec URL for a store")
        options = dict(storage_options or {})
        location = os.fspath(store)
        if location[:7].lower() == "file://":  # fsspec reads file://host/p as ./host/p
            location = str(local_path(location))  # another host's is refused
        try:
            fs, path = fsspec.core.url_to_fs(location, **options)
        except (ValueError, ImportError) as err:  # an unknown protocol, a backend missing
            raise StoreError(f"{os.fspath(store)}: cannot open this location ({err})") from err
        return cls(os.fspath(store), fs, path.rstrip("/") or "/", tuple(options.items()))

    @property
    def zarr_store(self) -> Any:
        """What xarray and zarr are given: the absolute path (fsspec's: ``~`` expanded,
        no ``file://``, which zarr would not take), the URL, or a store holding the
        options."""
        if self.local:
            return self.path
        if not self.storage_options:
            return self.name
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=dict(self.storage_options)
        )

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def url(self) -> str:
        """The location in one form: an absolute path, or a URL with its protocol."""
        return self.path if self.local else self.fs.unstrip_protocol(self.path)

    def key(self, name: str) -> str:
        return f"{self.path}/{name}"

    def resolved(self) -> tuple[str, str]:
        """(protocol, path) with symbolic links resolved, to compare locations."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return protocol, os.path.realpath(self.path) if self.local else self.path


def access_errors() -> tuple[type[BaseException], ...]:
    """The errors of reaching a store: the file system's, and those of the object-store
    clients loaded (credentials not found, endpoint not reachable), which are no
    ``OSError``. A client not loaded raised none."""
    errors: list[type[BaseException]] = [OSError]
    for module, name in (
        ("botocore.exceptions", "BotoCoreError"),
        ("google.auth.exceptions", "GoogleAuthError"),
    ):
        error = getattr(sys.modules.get(module), name, None)
        if isinstance(error, type) and issubclass(error, BaseException):
            errors.append(error)
    return tuple(errors)


def reason(err: BaseException) -> str:
    """What went wrong in ``err``, for a message: an OS error's text without its number
    and file name (the message names the location), else the error's text or type."""
    return (err.strerror if isinstance(err, OSError) else None) or str(err) or type(err).__name__


@contextlib.contextmanager
def reaching(target: Target, what: str = "the store") -> Iterator[None]:
    """An error of the file system or object store reaching ``target`` as a
    :class:`StoreError` naming it (``what`` it is) and the reason."""
    try:
        yield
    except access_errors() as err:
        raise StoreError(f"{target.name}: cannot reach {what} ({reason(err)})") from err


def read_bytes(target: Target, key: str) -> bytes | None:
    """The bytes at ``key`` of the store, None when there is none."""
    target.fs.invalidate_cache(target.key(key))  # s3fs sizes files from cached listings
    try:
        return bytes(target.fs.cat_file(target.key(key)))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except access_errors() as err:
        raise StoreError(f"{target.name}: cannot read {key} ({reason(err)})") from err


def read_json(target: Target, key: str) -> dict[str, Any] | None:
    """The JSON document at ``key`` of the store, None when there is none."""
    raw = read_bytes(target, key)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError as err:
        raise StoreError(f"{target.name}: {key} is not valid JSON ({err})") from err
    if not isinstance(doc, dict):
        raise StoreError(f"{target.name}: {key} is not a Zarr metadata document")
    return doc


def open_own_file(path: str, flags: int, what: str) -> int:
    """Open (create) a file of the store's own, never through a symbolic link someone
    put in its place: that would write wherever the link points."""
    try:
        return os.open(path, flags | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise StoreError(f"{path}: {what} is a symbolic link; remove it") from None


def _overlap(destination: Target, source: Target) -> str | None:
    """How ``destination`` overlaps ``source`` ("is", "contains", "lies inside"), if it does."""
    (dest_protocol, dest), (src_protocol, src) = destination.resolved(), source.resolved()
    if dest_protocol != src_protocol:
        return None
    if dest == src:
        return "is"
    if src.startswith(dest.rstrip("/") + "/"):
        return "contains"
    if dest.startswith(src.rstrip("/") + "/"):
        return "lies inside"
    return None


def check_apart(destination: str | os.PathLike, inputs: Iterable[Any], role: str = "input") -> None:
    """Refuse a destination (a store or a file) that is, contains or lies inside one of
    ``inputs`` (paths or fsspec URLs, symbolic links resolved): writing it would destroy
    what is being read (or written: ``role`` names what the others are in messages).

    Raises
    ------
    StoreError
        Naming the destination, the input and how they overlap.
    """
    target = Target.of(destination)
    for source in inputs:
        how = _overlap(target, Target.of(source))
        if how is not None:
            raise StoreError(
                f"{target.name}: the destination {how} the {role} {os.fspath(source)}; "
                "write it somewhere else"
            )


def check_bucket(target: Target) -> None:
    """Refuse a location on object storage (S3, GCS, Azure: a file system with
    buckets) whose bucket does not exist, or cannot be reached (no credentials): its
    first write would fail half-way, with the client's own error. Other file systems
    make folders as they write.

    What the write needs is the listing of its own prefix, which
    :func:`~m3rcr_xr.store.check_destination` (or
    :func:`~m3rcr_xr.cog.check_cog_destination`) makes; the bucket is queried only
    because fsspec answers a listing in a missing bucket as one of an empty prefix
    (``FileNotFoundError``). A principal may write a prefix yet not query its bucket
    (``s3:ListBucket`` limited to a prefix, GCS object roles, an Azure SAS of a
    prefix): a refusal of the query (``PermissionError``) refuses nothing, what the
    principal may do under the prefix decides.
    """
    split = getattr(target.fs, "split_path", None)
    if split is None:
        return
    bucket = split(target.path)[0]
    with reaching(target, f"bucket {bucket}"):
        target.fs.invalidate_cache(bucket)
        try:
            target.fs.info(bucket)
        except FileNotFoundError:
            raise StoreError(f"{target.name}: bucket {bucket} does not exist") from None
        except PermissionError as err:
            log.debug("%s: bucket %s not queried (%s)", target.name, bucket, reason(err))


@contextlib.contextmanager
def write_errors(target: Target) -> Iterator[None]:
    """A full, read-only or forbidden destination as a StoreError naming it."""
    try:
        yield
    except OSError as err:
        ours = err.errno in _BAD_PATH and _on_the_way(target, err.filename)
        if not (isinstance(err, PermissionError) or err.errno in _UNWRITABLE or ours):
            raise
        where = f" ({err.filename})" if err.filename else ""
        raise StoreError(f"{target.name}: writing the store failed: {reason(err)}{where}") from err


def _on_the_way(target: Target, filename: Any) -> bool:
    """Whether ``filename`` (of an OSError) is the local store's path, inside it, or a
    folder above it."""
    if not target.local or not isinstance(filename, str | os.PathLike):
        return False
    path, other = os.path.abspath(target.path), os.path.abspath(filename)
    return other == path or os.path.commonpath([path, other]) in (path, other)


#: what each fsspec file system reports that changes when a file is rewritten: local
#: and SFTP ``mtime``; S3 ``ETag``, ``LastModified``; GCS ``etag``, ``updated``; Azure
#: ``last_modified``; HTTP the response's ``ETag``, ``Content-MD5``, ``Digest`` or
#: ``Last-Modified`` header (as fsspec's ``HTTPFileSystem.info`` names them); memory
#: ``created`` (a file is replaced whole)
_VERSION_KEYS = (
    "mtime",
    "ETag",
    "etag",
    "LastModified",
    "last_modified",
    "updated",
    "Content-MD5",
    "Digest",
    "Last-Modified",
    "created",
)


def version_stamp(info: dict[str, Any]) -> Any:
    """A file's first of :data:`_VERSION_KEYS`; None when it reports none."""
    return next((info[key] for key in _VERSION_KEYS if info.get(key) is not None), None)


def version_of(info: dict[str, Any], *, portable: bool = False) -> str:
    """A file's size and its first of :data:`_VERSION_KEYS` (:func:`version_stamp`), from
    ``info``, its entry in an fsspec listing (``fs.info(path)``); for a local file, its
    inode too (``ino``): a file replaced (renamed over, or copied with its times and
    moved in: ``cp -p``) is another, with its size and modification time kept. Not its
    change time, which would see a rewrite in place with the modification time set back
    (``os.utime``) but moves with ``chmod``, ``chown`` and hard links (backups), none of
    which change the data: refusing those broke reruns and evaluations.

    ``portable``: the size and stamp alone, which a copy that keeps the times (``cp -a``,
    ``rsync -a``) keeps too: for the keys of a store, whose copy on other disks is the
    same data."""
    version = f"{info.get('size')}:{version_stamp(info)}"
    if "ino" in info and not portable:  # the local file system's (LocalFileSystem)
        version += f":{info['ino']}"
    return version


def listing(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, dict[str, Any]]:
    """The entries of ``folder`` on ``fs`` by name (fsspec ``info`` dicts: ``type``,
    ``size``, a version for :func:`version_of`), asked afresh in one listing; none where
    there is no such folder. On object storage one request per 1000 entries, where
    asking for each object costs one or two (s3fs follows a missing object's HEAD with
    a LIST)."""
    fs.invalidate_cache(folder)
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return {}
    return {posixpath.basename(entry["name"].rstrip("/")): entry for entry in entries}
