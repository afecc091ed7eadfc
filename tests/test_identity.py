"""What identifies data (m3rcr_xr/identity.py): sources, their identities, fingerprints.

Writes that resume, or refuse to, by these identities (:func:`m3rcr_xr.to_zarr` end to
end) are tested in tests/test_store.py and tests/test_s3.py.
"""

import os

import numpy as np
import pytest
import xarray as xr
import zarr

import m3rcr_xr
from m3rcr_xr import identity
from m3rcr_xr.store import layout
from m3rcr_xr.testing import serve_directory
from tests.conftest import geotiff_scene


def test_an_input_file_that_changed_changes_the_fingerprint(tmp_path):
    files = geotiff_scene(tmp_path, 100)

    def fingerprint() -> str:
        scene = m3rcr_xr.open_quartet(**files)
        return identity.data_fingerprint(layout.prepare(scene), identity.sources(scene))

    first = fingerprint()
    assert fingerprint() == first  # reopening the same files: the same data
    stat = files["sar"].stat()
    with files["sar"].open("ab") as handle:  # same modification time, other size:
        handle.write(b"\0")  # the graph's token (name, mtime) misses it
    os.utime(files["sar"], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint() != first


def test_source_identities_see_a_chunk_rewritten_and_an_unversioned_file(tmp_path):
    """A store's identity: its own fingerprint and its listing (a chunk rewritten in
    place changes the latter only); a file served with no version is flagged. Given to
    data_fingerprint, the identities give what its inputs give."""
    path, served = tmp_path / "s.zarr", tmp_path / "served"
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_collection(1, 16, seed=1), path)
    served.mkdir()
    (served / "a.tif").write_bytes(b"A" * 10)
    with serve_directory(served, last_modified=False) as url:
        found = identity.source_identities([str(path), f"{url}/a.tif"])
    (before, versioned), (_, http_versioned) = found[str(path)], found[f"{url}/a.tif"]
    assert versioned and not http_versioned
    ds = m3rcr_xr.open_zarr(path)
    identities = identity.source_identities(identity.sources(ds))
    assert identity.data_fingerprint(ds, identities=identities) == identity.data_fingerprint(
        ds, identity.sources(ds)
    )
    zarr.open_array(path / "cloudy", mode="r+")[0, 0, 0, 0] = 7
    after, _ = identity.source_identities([str(path)])[str(path)]
    assert after != before and after.split(":")[0] == before.split(":")[0]


def test_a_source_keeps_its_storage_options_out_of_sight():
    """The options a store was opened with travel with its name (through copies,
    pickles and :func:`identity.sources`), never into its text."""
    import copy
    import json
    import pickle

    options = {"key": "k", "secret": "SECRET"}
    opened = identity.Source("s3://b/s.zarr", options)
    data = xr.Dataset({"a": ("y", [1, 2])})
    data.encoding["source"] = "s3://b/s.zarr"  # the same store, named without options
    data["a"].encoding["source"] = [opened]
    (found,) = identity.sources(data)
    for kept in (found, copy.deepcopy(found), pickle.loads(pickle.dumps(found))):
        assert kept == "s3://b/s.zarr" and kept.storage_options == options
        assert "SECRET" not in repr(kept) + str(kept) + f"{kept}" + json.dumps([kept])


def test_a_local_file_replaced_with_its_size_and_time_kept_is_told_apart(tmp_path):
    """Size and modification time alone are the same (``cp -p`` then ``mv``); its inode
    is not. A ``chmod`` (or a hard link, a ``chown``), which changes no data, keeps the
    identity: the change time it moves was part of it, and refused reruns."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"A" * 100)
    first, before = identity._source_identity(str(path)), path.stat()
    path.chmod(0o444)
    os.link(path, tmp_path / "backup.bin")
    assert identity._source_identity(str(path)) == first
    other = tmp_path / "b.bin"
    other.write_bytes(b"B" * 100)
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, path)
    assert path.stat().st_size == before.st_size
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert identity._source_identity(str(path)) != first


def test_a_file_changed_since_it_was_opened_is_refused(tmp_path):
    """The identity a file had when it was opened travels with its name (copies,
    pickles, :func:`identity.sources`, which keeps it where the file is named twice),
    and :func:`identity.source_identities` refuses the file once it differs."""
    import copy
    import pickle

    path = tmp_path / "a.bin"
    path.write_bytes(b"A" * 100)
    data = xr.Dataset({"a": ("y", [1, 2])}).chunk()  # lazy: it would read the file
    data.encoding["source"] = [identity.opened_file(path)]
    data["a"].encoding["source"] = str(path)  # the same file, named without it
    (found,) = identity.sources(data)
    for kept in (found, copy.deepcopy(found), pickle.loads(pickle.dumps(found))):
        assert kept == str(path) and kept.at_open == identity._source_identity(str(path))
    assert identity.source_identities([found]) == {str(path): found.at_open}
    os.replace(path, tmp_path / "old.bin")  # replaced: another file of the same size
    path.write_bytes(b"A" * 100)
    with pytest.raises(m3rcr_xr.InputFileError, match=r"a\.bin: changed since it was opened"):
        identity.source_identities([found])
    with pytest.raises(m3rcr_xr.InputFileError, match="changed since it was opened"):
        identity.data_fingerprint(data, identity.sources(data))
    now = identity.source_identities([found], since_open=False)  # a write's own check
    assert now[str(path)] != found.at_open


def test_a_source_of_data_in_memory_is_listed_without_its_identity_at_open(tmp_path):
    """Only data still to be read can mix a file's old and new data: a variable in
    memory names its file (the same list, the same fingerprint) without its identity at
    open, so the file changed or removed is not refused; a Dataset's own sources keep it
    while any of its variables is lazy."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"A" * 100)
    data = xr.Dataset({"a": ("y", np.arange(4)), "b": ("y", np.arange(4))})
    data["a"].encoding["source"] = [identity.opened_file(path)]
    lazy = data.chunk()
    assert identity.sources(data) == identity.sources(lazy) == [str(path)]
    assert identity.sources(data)[0].at_open is None
    assert identity.sources(lazy)[0].at_open == identity._source_identity(str(path))
    assert identity.data_fingerprint(data, identity.sources(data)) == identity.data_fingerprint(
        data, [str(path)]
    )
    whole = xr.Dataset({"a": ("y", np.arange(4))})
    whole.encoding["source"] = [identity.opened_file(path)]
    assert identity.sources(whole)[0].at_open is None
    assert identity.sources(whole.assign(b=lazy["b"]))[0].at_open is not None
    path.unlink()
    identity.check_since_open(identity.sources(data))
    with pytest.raises(m3rcr_xr.InputFileError, match=r"a\.bin: removed since it was opened"):
        identity.check_since_open(identity.sources(lazy))


def test_a_zarr_store_of_other_software_on_s3_changed_in_place_is_told_apart(bucket):
    """Such a source is identified by its listing: each key with its ETag."""
    url = f"s3://{bucket}/theirs.zarr"
    values = zarr.open_group(url, mode="w").create_array(
        "values", shape=(8,), chunks=(4,), dtype="i4"
    )
    values[:] = np.arange(8)
    first = identity._source_identity(url)
    assert identity._source_identity(url) == first
    values[4:] = 0  # one chunk rewritten in place: same keys, same size
    assert identity._source_identity(url) != first
