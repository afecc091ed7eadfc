"""Lazy reading of ``.npy`` files, local or remote, never unpickling.

:func:`open_npy` reads the header only; :class:`NpyFile` reads a slice when indexed, so
``dask.array.from_array(NpyFile(...))`` reads chunk by chunk, and its graph holds the
path and the header, never the values: a cloud mask tens of thousands of pixels a side
is neither read at open time nor shipped to every worker with the graph.

Examples
--------
>>> import tempfile, numpy as np, dask.array as da
>>> path = tempfile.mkdtemp() + "/mask.npy"
>>> np.save(path, np.eye(4, dtype=np.uint8))
>>> npy = open_npy(path)
>>> npy.shape, npy.dtype
((4, 4), dtype('uint8'))
>>> da.from_array(npy, chunks=2)[1:3, 1:3].compute()
array([[1, 0],
       [0, 1]], dtype=uint8)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import href
from .exceptions import InputFileError
from .location import version_of

_READ_HEADER = {(1, 0): np.lib.format.read_array_header_1_0}


@dataclass(frozen=True)
class NpyFile:
    """The layout of a ``.npy`` file: what its header declares and where its data starts.

    Indexing with slices reads that part only: a memory map of a local file, a byte range
    of a remote one (the rows, or for Fortran order the columns, the slice spans).
    Pickles as the path and the header, so a Dask graph built on it stays small.
    """

    path: str | Path
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int
    size: int
    #: its version at open (:func:`~m3rcr_xr.location.version_of`): each read checks it
    version: str = ""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def truncated(self) -> bool:
        """Whether the file holds fewer bytes than its header declares."""
        return self.offset + self.nbytes > self.size

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self._read(key)
        except InputFileError:
            raise
        except href.read_errors() as err:  # at compute time: an expired signature's 403...
            href.raise_if_refused(self.path, err)
            raise InputFileError(f"{self.path}: cannot be read ({err})") from href.cause(err)

    def _read(self, key: Any) -> np.ndarray:
        fs, path = href.filesystem(self.path)
        if _version(fs, path) != self.version:  # its header may no longer be this one
            raise InputFileError(f"{self.path}: changed since it was opened; open it again")
        if not href.is_remote(self.path):
            order: Literal["F", "C"] = "F" if self.fortran_order else "C"
            mapped = np.memmap(self.path, self.dtype, "r", self.offset, self.shape, order)
            return np.array(mapped[key])  # a copy: the map closes with this task
        return self._read_range(fs, path, key)

    def _read_range(self, fs: Any, path: str, key: Any) -> np.ndarray:
        """``self[key]`` of a remote 2-D file: the contiguous band of rows (C order) or
        columns (Fortran order) that ``key`` spans, in one range request (all of them
        for a key other than a slice of step > 0 there)."""
        given: tuple[Any, ...] = np.index_exp[key]
        rows, cols, *_ = (*given, slice(None), slice(None))
        if rows is Ellipsis:
            rows = slice(None)
        major, minor = (cols, rows) if self.fortran_order else (rows, cols)
        extent, length = (self.shape[::-1] if self.fortran_order else self.shape)[:2]
        band_key = major
        if isinstance(major, slice) and (major.step or 1) > 0:
            start, stop, _ = major.indices(extent)
            stop = max(stop, start)
            band_key = slice(None, None, major.step)
        else:
            start, stop = 0, extent
        step = length * self.dtype.itemsize
        first = self.offset + start * step
        data = fs.cat_file(path, start=first, end=first + (stop - start) * step)
        band = np.frombuffer(data, self.dtype).reshape(stop - start, length)
        if self.fortran_order:
            return np.array(band.T[minor, band_key])
        return np.array(band[band_key, minor])

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, str(self.path), self.shape, str(self.dtype), self.version)


def _version(fs: Any, path: str) -> str:
    """A file's version (:func:`~m3rcr_xr.location.version_of`: size and modification
    time, inode locally, ETag remotely), as a resume identifies it."""
    return version_of(fs.info(path))


def open_npy(path: str | Path) -> NpyFile:
    """The header of the ``.npy`` file at ``path`` (local or remote); no value is read.

    Raises
    ------
    ValueError
        Not a ``.npy`` header, or an array of Python objects (which would need pickle).
    OSError, EOFError
        The file cannot be read.
    """
    fs, fspath = href.filesystem(path)
    with fs.open(fspath, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = _READ_HEADER.get(version, np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(handle)
        offset = handle.tell()
    if dtype.hasobject:
        raise ValueError(f"an array of dtype {dtype} holds Python objects, refused unpickled")
    info = fs.info(fspath)
    return NpyFile(
        path, tuple(shape), dtype, fortran_order, offset, int(info["size"]), _version(fs, fspath)
    )
