"""Writing local files so that a reader or a crash never sees half of one, nor a file
of one run beside its fellow of another.

:func:`replace_atomically` is how this library writes its small files (tables,
training checkpoints, exported weights): the content goes to a hidden temporary file
beside the destination, which is renamed over it only when complete.
:func:`replace_together` does so for files that belong together (the two tables of
``m3rcr evaluate --semantic``).

The hidden files of a write (:func:`hidden_name`: ``.NAME.<machine>-<pid>.partial``,
and ``.NAME.<machine>-<pid>.previous`` for :func:`m3rcr_xr.to_cog`'s file set aside)
are named for the process that writes them and its machine
(:func:`~m3rcr_xr.locks.machine_token`). A write that is killed leaves them (no
``except`` runs); the next write of the same file removes those of a process that
provably no longer runs (:func:`remove_stale`), and never those of another machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from .locks import machine_token, pid_free

__all__ = ["replace_atomically", "replace_together"]

log = logging.getLogger(__name__)

#: a file to write and how: ``write(partial)`` fills the temporary file ``partial``
Writer = tuple[Path, Callable[[Path], object]]

#: the writer in a hidden name (:func:`owner`): its machine's token and its pid
OWNER = r"(?P<machine>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})"
#: a hidden copy of the file ``NAME`` (:func:`hidden_name`), or as earlier versions named
#: it, without the machine (``.NAME.PID.partial``)
_HIDDEN = re.compile(
    rf"\.(?P<name>.+)\.(?:{OWNER}|(?P<old_pid>[0-9]{{1,10}}))\.(?P<kind>partial|previous)",
    re.DOTALL,
)


def owner() -> str:
    """How this process names its hidden files: ``<machine>-<pid>`` (:data:`OWNER`)."""
    return f"{machine_token()}-{os.getpid()}"


def versions(paths: Sequence[Path]) -> list[tuple[int, ...] | None]:
    """What each local file of ``paths`` is now (a link itself, not followed): its
    device, inode, size and modification time, which a file written (replaced, or
    rewritten in place) changes; None where nothing is. Not its change time, which
    ``chmod`` moves too."""
    found: list[tuple[int, ...] | None] = []
    for path in paths:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            found.append(None)
            continue
        found.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return found


def hidden_name(name: str, kind: str) -> str:
    """The hidden name of this process's ``kind`` of copy of the file ``name``:
    ``partial`` (being written) or ``previous`` (the file it replaces, set aside).

    Examples
    --------
    >>> hidden_name("d.tif", "partial") == f".d.tif.{owner()}.partial"
    True
    """
    return f".{name}.{owner()}.{kind}"


def hidden_path(path: Path, kind: str) -> Path:
    """:func:`hidden_name` of the file ``path``, beside it."""
    return path.with_name(hidden_name(path.name, kind))


def replace_atomically(
    path: Path, write: Callable[[Path], object], *, check: Callable[[Path], None] | None = None
) -> None:
    """``write`` a temporary file beside ``path`` (hidden, named for this process), then
    rename it over ``path``: readers and a crash see the old file or the new one, never
    half of one. ``check(path)``, when given, runs again just before the rename (a file
    that appeared at ``path`` meanwhile is judged then). The temporary file is removed
    when anything fails; what a killed write of ``path`` left is removed first
    (:func:`remove_stale`).

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "table.txt"
    >>> replace_atomically(target, lambda partial: partial.write_text("done"))
    >>> target.read_text()
    'done'
    """
    replace_together([(path, write)], check=check)


def replace_together(
    writers: Sequence[Writer],
    *,
    remove: Sequence[Path] = (),
    check: Callable[[Path], None] | None = None,
) -> None:
    """Write the files of ``writers`` (and remove those of ``remove``, an earlier run's
    fellows of them) so that no crash, a kill included, leaves a new file beside an old
    one of the set.

    Each file is written whole to its temporary file first, as by
    :func:`replace_atomically`; then ``check`` runs on every path again; then the old
    files of the set but the first are removed, and only then are the new ones renamed
    in, in order. A kill leaves the old first file alone, or the first new files: never
    an old file with a new one. The temporary files are removed when anything fails;
    those a killed write of these files left are removed before any is written
    (:func:`remove_stale`).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> replace_together([(folder / name, lambda partial: partial.write_text("done"))
    ...                   for name in ("a.txt", "b.txt")])
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt', 'b.txt']
    """
    paths = [path for path, _ in writers]
    partials = [hidden_path(path, "partial") for path in paths]
    for path in paths:
        remove_stale(path.parent, [path.name])
    try:
        for partial, (_, write) in zip(partials, writers, strict=True):
            _write_partial(partial, write)
        if check is not None:
            for path in [*paths, *remove]:
                check(path)
        for earlier in [*paths[1:], *remove]:  # before the first new file is in
            earlier.unlink(missing_ok=True)
        for partial, path in zip(partials, paths, strict=True):
            os.replace(partial, path)
    except BaseException:
        for partial in partials:
            partial.unlink(missing_ok=True)
        raise


def _write_partial(partial: Path, write: Callable[[Path], object]) -> None:
    """``write`` the temporary file ``partial``, with the mode of any new file there."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    # the mode any new file gets here (0o666 less the umask): some writers make theirs
    # readable by their owner only (safetensors: 0o600), unlike every other file the
    # library writes
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    write(partial)
    os.chmod(partial, mode)


class HiddenCopy(NamedTuple):
    """A hidden copy (:func:`hidden_name`) found in a folder (:func:`hidden_copies`)."""

    #: the entry found
    path: Path
    #: the name of the file it is a copy of
    name: str
    #: ``partial`` or ``previous``
    kind: str
    #: its writer's machine token; None in a name of an earlier version
    machine: str | None
    pid: int


def hidden_copies(
    folder: Path,
    names: Collection[str],
    hidden_of: Callable[[os.DirEntry[str]], str | None] | None = None,
) -> Iterator[HiddenCopy]:
    """The hidden copies in ``folder`` of its files ``names``: the entries whose name
    is a :func:`hidden_name`, files or links (not folders). ``hidden_of(entry)``, when
    given, says instead which hidden name an entry stands for (None: none), for a
    writer's own files of a copy (odc-geo's folder of the parts of a partial file)."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        hidden = _plain(entry) if hidden_of is None else hidden_of(entry)
        found = None if hidden is None else _HIDDEN.fullmatch(hidden)
        if found is None or found["name"] not in names:
            continue
        pid = int(found["pid"] or found["old_pid"])
        yield HiddenCopy(Path(entry.path), found["name"], found["kind"], found["machine"], pid)


def _plain(entry: os.DirEntry[str]) -> str | None:
    return None if entry.is_dir(follow_symlinks=False) else entry.name


def no_longer_runs(machine: str | None, pid: int) -> bool:
    """Whether the process ``pid`` of the machine ``machine`` (its
    :func:`~m3rcr_xr.locks.machine_token`) provably no longer runs: it is this machine,
    and no process here has that pid (:func:`~m3rcr_xr.locks.pid_free`; never on
    Windows). Another machine's pid says nothing here: on a folder shared between
    machines, its live write would look dead."""
    return machine == machine_token() and pid_free(pid)


def left_behind(copy: HiddenCopy) -> bool:
    """Whether ``copy`` is what a write that no longer runs left: named for a process
    of this machine that :func:`no_longer_runs`, or for this one (a pid used again
    since; this process writes that name itself next).

    A copy named by an earlier version (``.NAME.PID.partial``: no machine) is judged by
    its pid alone: it goes when its pid is free here. It could be the live write of an
    earlier version on another machine sharing the folder, now: that write then fails
    at its rename, its destination left as it was, which a rerun mends. Kept instead,
    the leftovers of every kill before the upgrade (a checkpoint's size each) would stay
    for good.
    """
    machine = machine_token() if copy.machine is None else copy.machine
    if copy.pid == os.getpid() and machine == machine_token():
        return True
    return no_longer_runs(machine, copy.pid)


def remove_stale(folder: Path, names: Collection[str]) -> None:
    """Remove the hidden copies (:func:`hidden_copies`) of the files ``names`` of
    ``folder`` that a killed write left (:func:`left_behind`): a live write keeps its
    own, and another machine's (or this one's before a restart: nothing tells them
    apart) are kept, a warning naming each. A copy set aside (``previous``) goes only
    where its file is there again; else it holds the file as it was before a write cut
    off in its renames, and a warning names it."""
    for copy in hidden_copies(folder, names):
        if not left_behind(copy):
            if copy.machine not in (None, machine_token()):
                log.warning(
                    "%s: kept: left by a write of %s on another machine (or on this one "
                    "before a restart), or being written there now; remove it once no "
                    "write of %s runs",
                    copy.path,
                    copy.name,
                    copy.name,
                )
            continue
        if copy.kind == "previous" and not os.path.lexists(folder / copy.name):
            log.warning(
                "%s: %s as it was before a write of it was cut off; this write puts a new "
                "%s in its place: copy it elsewhere now to keep it (the next write of %s "
                "removes it)",
                copy.path,
                copy.name,
                copy.name,
                copy.name,
            )
            continue
        with contextlib.suppress(FileNotFoundError):  # another rerun removed it first
            copy.path.unlink()
