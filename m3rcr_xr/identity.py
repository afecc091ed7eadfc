"""Identities: what data a store or a file was written from, and which stores are ours.

A write resumed, a GeoTIFF kept on a rerun and a training run resumed each carry on
from what an earlier run did with some data; they do so only on the same data, so that
a store, a file or a model never mixes two inputs (a file re-ingested since, a chunk
corrected in place, a store replaced). What identifies data is found without reading
it: metadata, listings and Dask tokens.

* :func:`sources`: where data was read from (xarray's ``encoding["source"]``), each a
  :class:`Source` that keeps the ``storage_options`` it was opened with, and a file's
  identity when it was opened (:func:`opened_file`);
* :func:`source_identities`: for each source, what changes when it changes (a store's
  own fingerprint and its listing, a file's size and version), and whether a change can
  be seen at all; a file changed since it was opened is refused there (and by
  :func:`check_since_open`);
* :func:`data_fingerprint`: a digest of a Dataset's layout, its Dask graph and its
  sources' identities, the same in every process. :func:`~m3rcr_xr.store.to_zarr` keeps
  it in the store (:data:`FINGERPRINT`) to resume only the same data;
  :func:`m3rcr_xr.cog.written_from` and training checkpoints compare it too;
* :func:`is_ours`: whether a Zarr store is one of this library's, by its identifier
  (:data:`STORE_ID`, matched by the object :data:`ID_OBJECT`): only such a store's
  fingerprint says what it was written from (a copy that other software wrote keeps
  the attribute, not always the data).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import dask.base
import numpy as np
import xarray as xr

from .exceptions import InputFileError, StoreError
from .href import redacted
from .location import Target, reaching, read_bytes, read_json, version_of, version_stamp

#: the root attribute in which a store keeps the fingerprint of the data it was written
#: from (:func:`data_fingerprint`)
FINGERPRINT = "m3rcr_fingerprint"
#: the store's identifier, a random string written once when it is created, both in this
#: root attribute and in the store's own object :data:`ID_OBJECT`. Other software that
#: copies the store (``xr.open_zarr(S).to_zarr(...)``) keeps the attributes, not the
#: object: a root whose identifier has no matching object is such a copy, never a store
#: of this library
STORE_ID = "m3rcr_store_id"
#: the object (no Zarr node) that holds the store's identifier, beside its root
ID_OBJECT = ".m3rcr-store"


# ------------------------------------------------------------------------ sources
class Source(str):
    """A source's path or URL (a plain ``str`` to any reader) that also holds the
    ``storage_options`` it was opened with, so that :func:`~m3rcr_xr.store.to_zarr` can
    reach it again to identify it (credentials given only as options, none in the
    environment), and, for a file, its identity when it was opened (``at_open``,
    :func:`opened_file`; None where unknown), so that a file changed since is refused
    (:func:`source_identities`).

    The options stay out of its ``str``, ``repr`` and JSON form: they are never
    printed, nor written to a store's attributes.
    """

    storage_options: dict[str, Any]
    at_open: tuple[str, bool] | None

    def __new__(
        cls,
        url: str,
        storage_options: dict[str, Any] | None = None,
        at_open: tuple[str, bool] | None = None,
    ) -> Source:
        source = super().__new__(cls, url)
        source.storage_options = dict(storage_options or {})
        source.at_open = at_open
        return source


def _options(source: Any) -> dict[str, Any]:
    """The ``storage_options`` a source was opened with (:class:`Source`), else none."""
    return dict(source.storage_options) if isinstance(source, Source) else {}


def _at_open(source: Any) -> tuple[str, bool] | None:
    """A file's identity when it was opened (:class:`Source`), else None."""
    return source.at_open if isinstance(source, Source) else None


def opened_file(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Source:
    """``path``, a file being opened, as a :class:`Source` that holds its identity now
    (:func:`_source_identity`), for xarray's ``encoding["source"]``: a lazy array keeps
    reading the file long after it was opened (GDAL's block cache, rioxarray's open
    handle), so :func:`source_identities` refuses one that changed since.

    The readers of this library call it once their files are opened
    (:func:`m3rcr_xr.open_quartet`, :func:`m3rcr_xr.open_stac`,
    :func:`m3rcr_xr.open_udm2`). It costs one
    ``fs.info`` of the file: a ``stat`` locally, a HEAD request remotely.
    """
    source = Source(os.fspath(path), storage_options)
    source.at_open = _source_identity(source)
    return source


def sources(obj: xr.Dataset | xr.DataArray) -> list[str]:
    """Where the data of ``obj`` was read from: paths and URLs, sorted, no repeats.

    Taken from ``encoding["source"]`` of ``obj`` and of each of its variables, xarray's
    own convention (``xr.open_dataset`` sets it), extended to a list for data
    assembled from many files. The readers of this library fill it in:
    :func:`m3rcr_xr.open_quartet`, :func:`m3rcr_xr.open_m3rcr` and
    :func:`m3rcr_xr.open_stac` with their files (each a :class:`Source` holding its
    identity when it was opened, :func:`opened_file`), :func:`m3rcr_xr.open_udm2` with
    its file (and the masks made of it pass it on), :func:`m3rcr_xr.open_zarr` with
    the store (a :class:`Source`, holding the ``storage_options`` it was opened with),
    :func:`m3rcr_xr.decloud` with its input's. This list keeps both; of a source named
    twice, it keeps the options and the identity at open that either holds.

    A source is listed with its identity at open only where named by data still to be
    read (:func:`_lazy`): a variable in memory (``.load()``, ``.compute()``) cannot mix
    a file's old and new data, so a file changed or removed since it was opened is
    refused only while some data of it is lazy.
    """
    holders: list[Any] = [obj, *obj.variables.values()] if isinstance(obj, xr.Dataset) else [obj]
    if isinstance(obj, xr.DataArray):
        holders += list(obj.coords.values())
    found: dict[str, Source] = {}
    for holder in holders:
        value = holder.encoding.get("source")
        if value is None:
            continue
        lazy = _lazy(holder)
        for v in [value] if isinstance(value, str | os.PathLike) else value:
            source = Source(Target.of(v).url, _options(v), _at_open(v) if lazy else None)
            found[source] = _merged(found[source], source) if source in found else source
    return [found[url] for url in sorted(found)]


def _lazy(holder: xr.Dataset | xr.DataArray | xr.Variable) -> bool:
    """Whether some data of ``holder`` is still to be read from its files (Dask, or
    xarray's lazily indexed arrays), not all in memory (NumPy). A Dataset's own
    ``encoding`` names the files of all its variables: lazy if any is."""
    if isinstance(holder, xr.Dataset):
        return any(_lazy(variable) for variable in holder.variables.values())
    # xarray's own test (no public one reads nothing); where it is gone, lazy: refused
    return not getattr(holder, "_in_memory", False)


def _merged(kept: Source, other: Source) -> Source:
    """One source named twice: the options of the one opened with them (``other``'s if
    both are), the identity at open of the one that holds it (``kept``'s if both do)."""
    return Source(
        kept,
        other.storage_options or kept.storage_options,
        kept.at_open if kept.at_open is not None else other.at_open,
    )


# ----------------------------------------------------------------- stores of ours
def is_ours(target: Target, doc: dict[str, Any]) -> bool:
    """Whether ``doc``, the root ``zarr.json`` at ``target``, is that of a store of this
    library: ``m3rcr_*`` keys in its group's attributes, and its identifier
    (:data:`STORE_ID`) the one in the store's :data:`ID_OBJECT`. A root whose
    identifier has no matching object is a copy that other software wrote; one with no
    identifier is a store of an earlier version, known by its attributes alone.
    """
    attrs = doc.get("attributes") or {}
    if doc.get("node_type") != "group" or not any(str(k).startswith("m3rcr_") for k in attrs):
        return False
    if STORE_ID not in attrs:
        return True
    stored = read_bytes(target, ID_OBJECT)
    return stored is not None and stored.decode(errors="replace") == str(attrs[STORE_ID])


# ------------------------------------------------------------------- fingerprints
def data_fingerprint(
    ds: xr.Dataset,
    inputs: Iterable[str] = (),
    *,
    identities: dict[str, tuple[str, bool]] | None = None,
) -> str:
    """What identifies ``ds``'s data, the same in every process: the fingerprint
    :func:`~m3rcr_xr.store.to_zarr` keeps to resume a write, and training checkpoints to
    refuse a resume on other data.

    Layout, dtypes, coordinates and attributes; the Dask token of each data variable
    (its graph: file names and modification times of lazily opened rasters, a
    content hash of arrays from memory, the checkpoint hash of decloud); and the
    identity of each input (``inputs``, usually :func:`sources`: a store's own
    fingerprint, the listing of a Zarr store of other software, a file's size and
    version: :func:`~m3rcr_xr.location.version_of`), which the token may miss; or their
    ``identities``, as :func:`source_identities` gives them (to reach each input once
    when the caller needs them too). Nothing is read but metadata and listings; an array
    in memory is hashed. A file changed since it was opened is refused
    (:func:`source_identities`).

    Examples
    --------
    >>> import m3rcr_xr
    >>> ds = m3rcr_xr.synthetic_collection(1, 32, seed=1)
    >>> data_fingerprint(ds) == data_fingerprint(m3rcr_xr.synthetic_collection(1, 32, seed=1))
    True
    >>> data_fingerprint(ds) == data_fingerprint(m3rcr_xr.synthetic_collection(1, 32, seed=2))
    False
    """
    return _fingerprint(ds, source_identities(inputs) if identities is None else identities)


def _fingerprint(ds: xr.Dataset, identities: dict[str, tuple[str, bool]]) -> str:
    """:func:`data_fingerprint`, given the inputs' identities (:func:`source_identities`)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({k: int(v) for k, v in ds.sizes.items()}, sort_keys=True).encode())
    for name in sorted(ds.variables, key=str):
        var = ds.variables[name]
        digest.update(f"{name}:{var.dims}:{var.dtype}".encode())
        digest.update(json.dumps(var.attrs, sort_keys=True, default=str).encode())
        digest.update(json.dumps(var.encoding, sort_keys=True, default=repr).encode())
        if name in ds.coords:
            digest.update(_coordinate_bytes(var.values))
    digest.update(json.dumps(ds.attrs, sort_keys=True, default=str).encode())
    digest.update(
        dask.base.tokenize(*(ds[name].data for name in sorted(ds.data_vars, key=str))).encode()
    )
    for source, (identity, _) in sorted(identities.items()):
        digest.update(f"{source}:{identity}".encode())
    return digest.hexdigest()


def source_identities(
    inputs: Iterable[str], *, since_open: bool = True
) -> dict[str, tuple[str, bool]]:
    """For each input (a path or URL, as :func:`sources` lists them), what changes when
    it changes, and whether a change can be seen at all, each input reached once.

    A store (a folder): its own fingerprint, if it is one of this library's (the data it
    was written from), and a digest of its listing (each key's size and modification
    time, or ETag: a chunk rewritten in place changes it; what a copy that keeps the
    times keeps, :func:`_listing_identity`); one listing, no chunk read. A file: its
    size and version (:func:`~m3rcr_xr.location.version_of`: modification time and
    inode locally, ETag, HTTP ``Last-Modified``...); one that reports its
    size alone (an HTTP server that sends neither ``ETag`` nor ``Last-Modified``) is not
    versioned (False): a file replaced by one of the same size looks the same.

    With ``since_open``, a file whose identity when it was opened is known
    (:func:`opened_file`) and differs now is refused: what a lazy array read of it
    before (GDAL's block cache) and what it reads after would be of two files.

    Raises
    ------
    StoreError
        An input out of reach, naming it.
    InputFileError
        With ``since_open``: a file changed since it was opened, naming it.
    """
    identities = {source: _source_identity(source) for source in inputs}
    if since_open:
        for source, identity in identities.items():
            _check_since_open(source, identity)
    return identities


def check_since_open(inputs: Iterable[str]) -> None:
    """Refuse those of ``inputs`` (as :func:`sources` lists them) that changed since they
    were opened, as :func:`source_identities` does; only those whose identity at open is
    known (:func:`opened_file`) are reached, one ``fs.info`` each.

    Raises
    ------
    InputFileError
        A file changed since it was opened, naming it.
    StoreError
        Such a file out of reach, naming it.
    """
    for source in inputs:
        if _at_open(source) is not None:
            _check_since_open(source, _source_identity(source))


def _check_since_open(source: str, identity: tuple[str, bool]) -> None:
    """Refuse ``source`` if its ``identity`` now is not the one it had when it was opened
    (:class:`Source`, :func:`opened_file`)."""
    at_open = _at_open(source)
    if at_open is None or at_open == identity:
        return
    if identity == _MISSING:
        raise InputFileError(
            f"{redacted(source)}: removed since it was opened, and data of it is still to "
            "be read (lazy); put it back, or load the data (.load()) before removing it"
        )
    raise InputFileError(
        f"{redacted(source)}: changed since it was opened (rewritten or replaced), so "
        "what was read of it may mix its old and new data; open it again"
    )


#: the identity of a source that is not there (:func:`_source_identity`)
_MISSING = ("missing", True)


def _source_identity(source: str) -> tuple[str, bool]:
    """What changes when an input changes, and whether a change can be seen at all.

    For a folder (a Zarr store), its listing (:func:`_listing_identity`: a chunk
    rewritten in place changes it), after a store of this library's own fingerprint (the
    data it was written from; not that of a copy other software wrote); else a file's
    size and version (:func:`~m3rcr_xr.location.version_of`: modification time, a local
    file's inode, ETag, HTTP ``Last-Modified``...). A file that reports
    its size alone (an HTTP server that sends no ``ETag`` nor ``Last-Modified``) is not
    versioned (False): a file replaced by one of the same size looks the same.

    The source is reached with the ``storage_options`` it was opened with
    (:class:`Source`); a source out of reach is a :class:`StoreError` naming it.
    """
    target = Target.of(source, _options(source))
    with reaching(target, "the input"):
        target.fs.invalidate_cache(target.path)
        try:
            info = target.fs.info(target.path)
        except FileNotFoundError:
            return _MISSING
        if info.get("type") != "directory":
            return version_of(info), version_stamp(info) is not None
        doc = read_json(target, "zarr.json")
        # a copy that other software wrote keeps the fingerprint, not (always) the data
        attrs = doc["attributes"] if doc is not None and is_ours(target, doc) else {}
        return f"{attrs.get(FINGERPRINT, '')}:{_listing_identity(target)}", True


def _listing_identity(target: Target) -> str:
    """A digest of every key under a folder with its size and modification time (ETag
    on object stores): any chunk rewritten in place changes it, which a Dask token of
    an ``xr.open_zarr`` store (its top folder's modification time) misses. Not a local
    key's inode (:func:`~m3rcr_xr.location.version_of`, ``portable``): a
    store copied with its times (``cp -a``, ``rsync -a``) is the same data, and a resume
    (of training too) on the copy goes on; a chunk rewritten in place with its size kept
    and its modification time set back goes unseen.

    It costs one recursive listing: a ``stat`` of each file locally, one request per
    1000 keys on S3 (a store of 100 000 chunks: 100 requests), nothing read.
    """
    digest = hashlib.sha256()
    listing = target.fs.find(target.path, detail=True)
    for name in sorted(listing):
        relative = name[len(target.path) :]
        digest.update(f"{relative}\0{version_of(listing[name], portable=True)}\0".encode())
    return f"listing:{digest.hexdigest()}"


def _coordinate_bytes(values: np.ndarray) -> bytes:
    if values.dtype.kind in "OUT":  # strings: hash the text, not object pointers
        return "\x00".join(map(str, values.ravel())).encode()
    return np.ascontiguousarray(values).tobytes()


# ------------------------------------------------- the input a prediction was made from
#: the attribute of a prediction (``decloud``, ``decloud_std``) that holds the
#: fingerprint of the store it was made from (:func:`store_fingerprint`), where its
#: input came from exactly one store of this library: it tells a prediction of one scene
#: from that of another on the same grid
INPUT_FINGERPRINT = "input_fingerprint"


def own_sources(array: xr.DataArray) -> list[str]:
    """:func:`sources` of ``array``'s own variable, not of its coordinates: those of
    stores merged together (``xr.merge``) are taken from the first store."""
    return sources(array.drop_vars(list(array.coords)))


def store_fingerprint(inputs: Iterable[str]) -> str | None:
    """The fingerprint (:data:`FINGERPRINT`) that the one store ``inputs`` name keeps,
    where they name exactly one store of this library: what its data were written from.

    None for anything else: no input or several, a file, a Zarr store of other
    software or a copy of one of this library's that other software wrote (which keeps
    the attribute, not always the data), a store out of reach or whose fingerprint is
    cleared (an unfinished one). Reads the root ``zarr.json`` and the identifier
    :func:`is_ours` compares; no listing, no chunk.
    """
    found = list(inputs)
    if len(found) != 1:
        return None
    try:
        target = Target.of(found[0], _options(found[0]))
        doc = read_json(target, "zarr.json")
        if doc is None or not is_ours(target, doc):
            return None
    except StoreError:  # out of reach: not known, which checks nothing
        return None
    return str(doc["attributes"].get(FINGERPRINT) or "") or None
