"""files: atomic replacement of a file, and of files that belong together."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from m3rcr_xr import locks
from m3rcr_xr.files import replace_atomically, replace_together
from tests.conftest import killed_writer


def test_a_file_written_owner_only_gets_the_mode_of_any_new_file(tmp_path):
    """safetensors makes its files 0o600: exported weights a lab shares were readable by
    their owner alone, unlike every other output; the file takes 0o666 less the umask."""

    def private(partial):
        partial.unlink(missing_ok=True)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT, 0o600))

    before = os.umask(0o022)
    try:
        replace_atomically(tmp_path / "w.safetensors", private)
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


class Killed(BaseException):
    """A kill, as far as the files can tell: nothing after it is written."""


def _killed_after(monkeypatch, renames: int) -> None:
    """``os.replace`` raises :class:`Killed` after its first ``renames`` renames."""
    replace, done = os.replace, []

    def rename(source, destination):
        if len(done) == renames:
            raise Killed
        replace(source, destination)
        done.append(destination)

    monkeypatch.setattr(os, "replace", rename)


@pytest.mark.parametrize("renames", [0, 1, 2])
def test_files_replaced_together_are_never_left_of_two_runs(tmp_path, monkeypatch, renames):
    """A kill at any rename leaves the old first file alone or the first new files:
    never a new file beside an old one (nor the file of ``remove``)."""
    names = ["m.csv", "m_semantic.csv", "m_more.csv"]
    for name in [*names, "stale.csv"]:
        (tmp_path / name).write_text("old")
    writers = [(tmp_path / name, lambda partial: partial.write_text("new")) for name in names]
    _killed_after(monkeypatch, renames)
    with pytest.raises(Killed):
        replace_together(writers, remove=[tmp_path / "stale.csv"])
    left = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert left == ({"m.csv": "old"} if renames == 0 else dict.fromkeys(names[:renames], "new"))


def test_files_replaced_together_are_all_written_and_checked_first(tmp_path):
    (tmp_path / "a").write_text("old")
    (tmp_path / "b").write_text("theirs")
    writers = [(tmp_path / name, lambda partial: partial.write_text("new")) for name in "ab"]

    def refuse_b(path):
        if path.name == "b":
            raise ValueError(path)

    with pytest.raises(ValueError):
        replace_together(writers, check=refuse_b)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a": "old", "b": "theirs"}
    (tmp_path / "b").unlink()
    replace_together(writers, remove=[tmp_path / "gone"])  # absent: nothing to remove
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a": "new", "b": "new"}


def _killed_in_its_write(path) -> int:
    """``replace_atomically(path, ...)`` in a forked child killed (``os._exit``, no
    ``except`` runs) halfway through its write; returns the child's pid, reaped."""
    pid = os.fork()
    if pid == 0:  # the child

        def killed(partial):
            partial.write_text("half of a checkpoint")
            os._exit(9)

        try:
            replace_atomically(path, killed)
        finally:
            os._exit(1)  # never here
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    return pid


def test_a_killed_write_leaves_a_partial_the_next_write_removes(tmp_path):
    """SIGKILLed (or OOM-killed) inside its write, ``replace_atomically`` left
    ``.NAME.PID.partial`` for good, as big as a checkpoint, and one more each kill."""
    if locks._machine() is None:
        pytest.skip("needs Linux's /proc to tell that a writer no longer runs")
    target = tmp_path / "run.pth"
    target.write_text("the checkpoint before")
    pid = _killed_in_its_write(target)
    (partial,) = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert partial == f".run.pth.{locks.machine_token()}-{pid}.partial"
    assert target.read_text() == "the checkpoint before"
    replace_atomically(target, lambda partial: partial.write_text("new"))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"run.pth": "new"}


def test_what_another_machine_or_a_live_write_left_stays(tmp_path, caplog):
    """A folder shared between machines (NFS): another machine's partial file, whose
    pid is free here, is its live write, perhaps; so is a live process's here. Both
    stay; a partial of an earlier version (no machine in its name) goes when its pid is
    free here, and those of other files stay."""
    dead, here = killed_writer()["pid"], locks.machine_token()
    other = "0badc0de" if here != "0badc0de" else "0ddba11e"
    gone = [f".t.csv.{here}-{dead}.partial", f".t.csv.{dead}.partial"]  # the last: earlier
    kept = [
        f".t.csv.{other}-{dead}.partial",
        f".t.csv.{here}-1.partial",
        f".u.csv.{here}-{dead}.partial",
    ]
    for name in gone + kept:
        (tmp_path / name).write_text("left")
    with caplog.at_level(logging.WARNING, logger="m3rcr_xr.files"):
        replace_atomically(tmp_path / "t.csv", lambda partial: partial.write_text("new"))
    assert {p.name for p in tmp_path.iterdir()} == {*kept, "t.csv"}
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{tmp_path / kept[0]}: kept: left by a write of t.csv on another")
