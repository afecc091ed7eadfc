"""Writing local files so that a reader or a crash never sees half of one, nor a file
of one run beside its fellow of another.

:func:`replace_atomically` is how this library writes its small files (tables,
training checkpoints, exported weights): the content goes to a hidden temporary file
beside the destination, which is renamed over it only when complete.
:func:`replace_together` does so for files that belong together (the two tables of
``m3rcr evaluate --semantic``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["replace_atomically", "replace_together"]

#: a file to write and how: ``write(partial)`` fills the temporary file ``partial``
Writer = tuple[Path, Callable[[Path], object]]


def replace_atomically(
    path: Path, write: Callable[[Path], object], *, check: Callable[[Path], None] | None = None
) -> None:
    """``write`` a temporary file beside ``path`` (hidden, named for this process), then
    rename it over ``path``: readers and a crash see the old file or the new one, never
    half of one. ``check(path)``, when given, runs again just before the rename (a file
    that appeared at ``path`` meanwhile is judged then). The temporary file is removed
    when anything fails.

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
    an old file with a new one. The temporary files are removed when anything fails.

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
    partials = [path.with_name(f".{path.name}.{os.getpid()}.partial") for path in paths]
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
