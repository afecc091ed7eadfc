"""files: atomic replacement of a file, and of files that belong together."""

from __future__ import annotations

import os
import stat

import pytest

from m3rcr_xr.files import replace_atomically, replace_together


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
