import dataclasses
import pickle

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3rcr_xr.exceptions import AccessDeniedError
from m3rcr_xr.npy import open_npy
from m3rcr_xr.testing import serve_directory
from tests.conftest import EXPIRED, PRESIGNED, assert_no_credential

VALUES = np.arange(37 * 23, dtype=">u2").reshape(37, 23)  # big-endian: kept as stored


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The same values saved in C and in Fortran order."""
    folder = tmp_path_factory.mktemp("npy")
    np.save(folder / "c.npy", VALUES)
    np.save(folder / "f.npy", np.asfortranarray(VALUES))
    return folder


def _slice(size: int):
    return st.tuples(st.integers(0, size), st.integers(0, size), st.integers(1, 3)).map(
        lambda t: slice(min(t[:2]), max(t[:2]), t[2])
    )


@pytest.mark.parametrize("order", ["c", "f"])
@given(rows=_slice(37), cols=_slice(23))
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_slice_reads_what_numpy_reads(saved, order, rows, cols):
    npy = open_npy(saved / f"{order}.npy")
    assert (npy.shape, npy.dtype, npy.fortran_order) == (VALUES.shape, VALUES.dtype, order == "f")
    np.testing.assert_array_equal(npy[rows, cols], VALUES[rows, cols])


def test_remote_files_are_read_by_range_as_local_ones(saved):
    with serve_directory(saved) as url:
        for order in "cf":
            local, remote = open_npy(saved / f"{order}.npy"), open_npy(f"{url}/{order}.npy")
            assert (remote.shape, remote.offset, remote.size) == (
                local.shape,
                local.offset,
                local.size,
            )
            for key in [
                (slice(3, 30), slice(5, 6)),
                (slice(0, 37), slice(22, 23)),
                (slice(None, None, -1), slice(None)),  # any other key: the whole extent
                (slice(30, 3, -2), slice(None, None, -3)),
                (4, slice(2, 9)),
                (Ellipsis,),
            ]:
                np.testing.assert_array_equal(remote[key], VALUES[key])
            lazy = da.from_array(remote, chunks=(10, 7))
            np.testing.assert_array_equal(lazy.compute(), VALUES)


def test_a_dask_array_on_a_file_holds_its_path_not_its_values(tmp_path):
    np.save(tmp_path / "big.npy", np.ones((1000, 1000), "uint8"))
    lazy = da.from_array(open_npy(tmp_path / "big.npy"), chunks=250)
    assert len(pickle.dumps(dict(lazy.__dask_graph__()))) < 20_000  # the file: 1 MB
    assert int(lazy.sum()) == 1_000_000


def test_an_object_array_is_refused_and_a_short_file_is_seen(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="holds Python objects"):
        open_npy(tmp_path / "objects.npy")
    np.save(tmp_path / "short.npy", np.zeros((100, 100), "uint8"))
    assert not open_npy(tmp_path / "short.npy").truncated
    data = (tmp_path / "short.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-1])
    assert open_npy(tmp_path / "short.npy").truncated


@pytest.mark.parametrize("change", ["order", "truncated"])
@pytest.mark.parametrize("where", ["local", "http"])
def test_a_file_changed_after_it_was_opened_is_refused(tmp_path, change, where):
    """Its header is fixed at open: read with it, another layout would be mis-read
    (a C-order file replacing a Fortran one comes back transposed). Over HTTP, by
    its Last-Modified (all that Python's server sends)."""
    import contextlib
    import os

    from m3rcr_xr import InputFileError

    path = tmp_path / "m.npy"
    np.save(path, np.asfortranarray(VALUES))
    served = serve_directory(tmp_path) if where == "http" else contextlib.nullcontext()
    with served as url:
        npy = open_npy(f"{url}/m.npy" if url else path)
        if change == "order":
            np.save(path, VALUES)
        else:
            path.write_bytes(path.read_bytes()[:-100])
        os.utime(path, ns=(1, 1))  # even within one tick of the clock: the time differs
        with pytest.raises(InputFileError, match="m.npy: changed since it was opened"):
            npy[0:3, 0:3]


def test_a_presigned_url_is_read_by_range_and_an_expired_one_named_redacted(saved):
    with serve_directory(saved, query=PRESIGNED) as url:
        remote = open_npy(f"{url}/c.npy?{PRESIGNED}")
        np.testing.assert_array_equal(remote[3:9, 2:5], VALUES[3:9, 2:5])
        expired = dataclasses.replace(remote, path=f"{url}/c.npy?{EXPIRED}")
        lazy = da.from_array(expired, chunks=(10, 7))
        refused = r"cannot be read: access refused \(HTTP 403 Forbidden\); the URL is presigned"
        with pytest.raises(AccessDeniedError, match=rf"c\.npy\?.*: {refused}") as err:
            lazy.compute()  # a signature that expires between open and compute
    assert_no_credential(err.value)
