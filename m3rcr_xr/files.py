"""Writing a single local file so that a reader or a crash never sees half of it.

:func:`replace_atomically` is how this library writes its small files (tables,
training checkpoints, exported weights): the content goes to a hidden temporary file
beside the destination, which is renamed over it only when complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["replace_atomically"]


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
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        # the mode any new file gets here (0o666 less the umask): some writers make
        # theirs readable by their owner only (safetensors: 0o600), unlike every other
        # file the library writes
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        mode = os.fstat(fd).st_mode & 0o777
        os.close(fd)
        write(partial)
        os.chmod(partial, mode)
        if check is not None:
            check(path)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
