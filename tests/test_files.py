"""files: atomic replacement of a file."""

from __future__ import annotations

import os
import stat

from m3rcr_xr.files import replace_atomically


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
