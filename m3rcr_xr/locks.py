"""The store's lock: one writer at a time, for local paths and fsspec URLs alike.

A writer holds :data:`LOCK` inside the store while it writes (:func:`locked`): an OS
lock on a local file (``flock``; a byte-range lock on Windows), released by the OS when
the process ends, so a killed writer never blocks the resume; on object stores a
marker object created with a conditional write (``If-None-Match``), removed when the
writer ends; a rerun (one at a time: :data:`TAKEOVER`) takes over the marker of a
killed writer when that writer provably no longer runs (same machine, boot and PID
namespace; its pid free or another process's), and refuses otherwise. The lock file is
not part of the Zarr hierarchy and is removed once the store is complete.

A local file that a run writes as it goes (a training checkpoint, exported weights) has
the same OS lock, on a hidden file beside it (:func:`locked_file`): a second run on
the same path is refused at its start, not left to replace the first one's file with
its own as it goes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .exceptions import M3RCRError, StoreError, argument
from .location import Target, open_own_file, read_json

log = logging.getLogger(__name__)

#: the writer's lock: a file (local) or a marker object (object stores) in the store
LOCK = ".m3rcr-lock"
#: the object a rerun holds while it takes over a stale marker (object stores): made by
#: a conditional write, it lets one rerun at a time remove that marker
TAKEOVER = LOCK + ".takeover"


@contextlib.contextmanager
def locked(target: Target) -> Iterator[None]:
    """Hold the store's lock while writing; refuse when another writer holds it.

    The folder of a local store is created here (and removed again if it is still
    empty at the end and this writer created it).
    """
    if not target.local:
        with _marker(target):
            yield
        return
    busy = _busy(target, "another process holds its lock file")
    with _folder(target.path), _flock(target.key(LOCK), "the store's lock file", busy, StoreError):
        yield


@contextlib.contextmanager
def locked_file(
    path: str | os.PathLike[str], name: str, error: Callable[[str], M3RCRError]
) -> Iterator[None]:
    """Hold the lock of the local file ``path`` while this process writes it; refuse
    when another process, or another writer of this one, holds it.

    The lock is the OS lock of :func:`locked` on a hidden file beside ``path``
    (:func:`lock_file`), released by the OS when the process ends and removed at the
    end (a killed writer leaves the empty file; the next writer takes it). Its folder is
    created here if need be (and removed again if it is still empty at the end).

    Parameters
    ----------
    path
        The file to write, a local path.
    name
        The argument that gave it, for messages (``out``: ``--out`` on the CLI).
    error
        The exception of a refusal, made from its message.

    Raises
    ------
    error
        Another writer holds the lock, ``path`` is a URL (a run writes local files)
        or a folder, or its folder cannot be made or written; naming the argument and
        the path.
    """
    flag = argument(name, os.fspath(path))
    if "://" in os.fspath(path):  # a path to Path(): s3://b/x.pth would be in folder s3:/b
        raise error(f"{flag}: a URL; this file is written on the local file system only")
    if Path(path).name in ("", "..") or os.path.isdir(path):  # ".", "/", "runs/"
        raise error(f"{flag}: a folder; give the path of a file")
    lock = lock_file(path)
    busy = (
        f"{flag}: another run is writing this file (it holds {lock}); wait for it to end "
        f"or choose another {argument(name)}"
    )
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(_folder(str(lock.parent)))
            held.enter_context(_flock(str(lock), f"the lock file of {flag}", busy, error))
        except OSError as err:  # a folder that cannot be made or written, say
            raise error(f"{flag}: cannot write there ({err.strerror or err})") from None
        yield


def lock_file(path: str | os.PathLike[str]) -> Path:
    """The lock file of the local file ``path`` (:func:`locked_file`): beside it, hidden.

    Examples
    --------
    >>> lock_file("runs/run.pth").as_posix()
    'runs/.run.pth.m3rcr-lock'
    """
    path = Path(path)
    return path.with_name(f".{path.name}{LOCK}")


@contextlib.contextmanager
def _folder(path: str) -> Iterator[None]:
    """The folder ``path``, created if missing and then removed again at the end if it
    is still empty (nothing was written there)."""
    created = not os.path.isdir(path)
    os.makedirs(path, exist_ok=True)
    try:
        yield
    finally:
        if created and not os.listdir(path):
            os.rmdir(path)


if sys.platform == "win32":
    import msvcrt

    def try_lock(fd: int) -> bool:
        """Lock the open file ``fd`` for this process without waiting: False where
        another process holds it. The OS releases it when the process ends."""
        try:  # the file's first byte: locking past its end is allowed
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _release(fd: int, path: str) -> None:
        # Windows removes no file that is open: closing (which unlocks) comes first; a
        # writer that opened it meanwhile keeps it and removes it at its own end
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)

else:
    import fcntl

    def try_lock(fd: int) -> bool:
        """Lock the open file ``fd`` for this process without waiting: False where
        another process holds it. The OS releases it when the process ends."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _release(fd: int, path: str) -> None:
        # removed while still held: a writer that opened it just before finds that its
        # file is no longer the one at the path (below), and tries again. Only if it
        # is still this one: a user may have removed it, and another writer made its own
        if _is_open_file(path, fd):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def _flock(path: str, what: str, busy: str, error: Callable[[str], M3RCRError]) -> Iterator[None]:
    """An exclusive OS lock on the lock file ``path`` (``what`` it is, for messages);
    the OS drops it when the process dies. Held: ``error(busy)``.

    The file is removed at the end. It is never followed as a symbolic link, so the
    lock cannot create or hold a file elsewhere, and a file of that name that is not a
    lock file (:func:`_is_lock_file`) is refused, not taken and removed.
    """
    while True:
        fd = open_own_file(path, os.O_RDWR, what)
        if not try_lock(fd):
            os.close(fd)
            raise error(busy)
        if _is_open_file(path, fd):  # not removed by the writer that held it meanwhile
            break
        os.close(fd)
    if not _is_lock_file(fd):
        os.close(fd)
        raise error(
            f"{path}: {what} is a file that holds data, which m3rcr_xr's lock files never "
            "do; it is not removed: rename or remove it yourself"
        )
    held = _HELD[fd] = object()
    try:
        yield
    finally:
        if _HELD.get(fd) is held:  # not a child forked meanwhile: it closed its copy
            del _HELD[fd]
            _release(fd, path)


#: the lock files this process holds, by file descriptor: a child it forks (a DataLoader
#: worker, a ``fork`` multiprocessing pool) closes its copies at once. An OS lock
#: (``flock``) belongs to the open file, which fork shares: a child that outlived a
#: killed writer (a worker ends seconds after its parent) held the writer's lock, and a
#: rerun then was refused as if the writer still ran.
_HELD: dict[int, object] = {}


def _close_held_in_child() -> None:
    """In a child just forked: close its copies of the lock files (the parent's lock is
    held by the parent's own descriptors, and goes with the parent)."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_close_held_in_child)


def _is_lock_file(fd: int) -> bool:
    """Whether the open file ``fd`` can be a lock file of this library: empty (as every
    local one is made), or an object store's marker (:func:`_owner`) copied here with
    its store."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > 4096:  # a marker is ~200 bytes
        return False
    if info.st_size == 0:
        return True
    os.lseek(fd, 0, os.SEEK_SET)  # not os.pread: Windows has none
    try:
        record = json.loads(os.read(fd, info.st_size))
    except ValueError:  # not JSON, or not text
        return False
    return isinstance(record, dict) and {"host", "pid"} <= record.keys()


def _is_open_file(path: str, fd: int) -> bool:
    """Whether the file at ``path`` is the one open as ``fd``."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (opened.st_dev, opened.st_ino)


@contextlib.contextmanager
def _marker(target: Target) -> Iterator[None]:
    """A marker object made by a conditional write, for object stores.

    Object stores have no locks that end with a process: a writer that is killed
    leaves the marker. A rerun takes it over when its writer provably no longer runs
    (:func:`_gone`); otherwise the message says which object to delete.
    """
    key = target.key(LOCK)
    owner = _owner()
    holder = _claim(target, LOCK, owner)
    if holder is not None and _gone(holder):
        holder = _take_over(target, holder, owner)
    if holder is not None:
        raise StoreError(
            _busy(target, f"marker {target.fs.unstrip_protocol(key)} from {holder}")
            + "; if that writer is no longer running, delete the marker and run again"
        )
    try:
        yield
    finally:
        if os.getpid() == owner["pid"]:  # not a child forked meanwhile: the marker is ours
            target.fs.rm_file(key)  # not rm: it takes a name with glob characters for a pattern


def _claim(target: Target, name: str, owner: dict[str, Any]) -> dict[str, Any] | None:
    """Write the object ``name`` of the store, holding ``owner``, unless there is one:
    None when written, else the record of the writer that holds it."""
    try:
        with target.fs.open(target.key(name), "xb") as handle:
            handle.write(json.dumps(owner).encode())
    except FileExistsError:
        return read_json(target, name) or {}
    return None


def _take_over(
    target: Target, stale: dict[str, Any], owner: dict[str, Any]
) -> dict[str, Any] | None:
    """Replace the marker ``stale`` of a writer that no longer runs by ``owner``, once:
    None when taken, else the record of the writer that holds it now.

    Deletes are unconditional: a rerun that read the stale marker just before another
    replaced it would remove the new one. So a rerun removes the marker only while it
    holds :data:`TAKEOVER` (made by a conditional write), and only if the marker is
    still the stale one then: of reruns racing for it, the others find the winner's
    marker in the stale one's place, or fail to make :data:`TAKEOVER` and are refused,
    as when a rerun killed while it held it left it.
    """
    key, claim = target.key(LOCK), target.key(TAKEOVER)
    taker = _claim(target, TAKEOVER, owner)
    if taker is not None:
        raise StoreError(
            _busy(
                target,
                f"a rerun taking over its stale marker holds {target.fs.unstrip_protocol(claim)}"
                f" from {taker}",
            )
            + "; if no writer is running (that takeover was cut off), delete that object and"
            " run again"
        )
    try:
        if read_json(target, LOCK) == stale:
            try:
                target.fs.rm_file(key)
            except FileNotFoundError:
                pass  # deleted by hand meanwhile
            else:
                log.warning(
                    "%s: removed the marker %s of a writer that is no longer running "
                    "(host %s, pid %s, since %s)",
                    target.name,
                    target.fs.unstrip_protocol(key),
                    stale.get("host"),
                    stale.get("pid"),
                    stale.get("since"),
                )
        return _claim(target, LOCK, owner)
    finally:
        target.fs.rm_file(claim)


def _owner() -> dict[str, Any]:
    """This writer's record in the marker: what the message of a refused writer shows
    (host, pid, since) and, on Linux, what tells whether it still runs (:func:`_gone`)."""
    pid = os.getpid()
    owner = {"host": socket.gethostname(), "pid": pid, "since": time.ctime()}
    return {**owner, **(_machine() or {}), "started": _started(pid)}


def _machine() -> dict[str, Any] | None:
    """This process's boot and PID namespace, in which (with the host name) a pid names
    one process: None without Linux's /proc."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return {"boot_id": boot, "pid_namespace": namespace}


@functools.cache
def machine_token() -> str:
    """A short digest of where a pid names one process: the host name, and on Linux
    the boot and PID namespace (:func:`_machine`), as :func:`_gone` tells them apart.
    Hidden files named with it (:func:`m3rcr_xr.files.hidden_name`) are judged only by
    the processes that share it: on a folder shared between machines (NFS, a cluster's
    scratch), another machine's pid says nothing here. Without /proc (macOS) it is the
    host name's alone. The same all through a process (taken once).

    Examples
    --------
    >>> len(machine_token())
    8
    """
    where = [socket.gethostname(), _machine()]
    return hashlib.sha256(json.dumps(where, sort_keys=True).encode()).hexdigest()[:8]


def _started(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (field 22 of
    /proc/PID/stat): a pid reused by a later process has another. None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the name, which may hold ")"
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _gone(holder: dict[str, Any]) -> bool:
    """Whether the writer of the marker ``holder`` provably no longer runs.

    It ran on this machine since its last boot and in this PID namespace, and its pid
    is now free or another process's (one started at another time). Anything else (a
    marker of another machine, of another container with the same host name, of a
    version without these fields; no /proc) is no proof.
    """
    pid, started, machine = holder.get("pid"), holder.get("started"), _machine()
    if machine is None or holder.get("host") != socket.gethostname():
        return False  # no /proc (never on Windows, where os.kill below ends the process)
    if any(holder.get(name) != value for name, value in machine.items()):
        return False
    if type(pid) is not int or type(started) is not int:
        return False
    if pid_free(pid):
        return True
    now = _started(pid)
    return now is not None and now != started


def pid_free(pid: int) -> bool:
    """Whether no process of this PID namespace has the pid ``pid`` now. False where
    that is no answer: on Windows (where ``os.kill`` ends the process), for a pid of 0
    or below (it would signal process groups) or beyond any pid."""
    if sys.platform == "win32" or not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)  # signal 0 sends nothing: it asks whether the pid exists
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process has it
    return False


def _busy(target: Target, why: str) -> str:
    return f"{target.name}: another writer is writing this store ({why})"
