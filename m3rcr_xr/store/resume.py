"""Whether a write resumes a store, and whether a store holds the data it was written from.

The fingerprint a store keeps is that of the data as :func:`~m3rcr_xr.store.to_zarr`
writes it (:func:`identified`; :func:`written_from` compares it); :func:`plan` tells,
under the lock, the steps an earlier, unfinished run of the same data wrote, and
:func:`check_unchanged` refuses to complete a store whose inputs changed while it was
written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import xarray as xr

from ..exceptions import StoreError, argument
from ..href import redacted
from ..identity import FINGERPRINT, data_fingerprint, source_identities, sources
from ..location import Target
from .destinations import inspect_store, refuse
from .layout import prepare
from .removal import clear, own_arrays
from .root import PROGRESS, STEP_CHUNKS, basename

#: the steps of a store that records none (:data:`STEP_CHUNKS`): every earlier version's
_EARLIER_STEP_CHUNKS = 8


def written_from(
    ds: xr.Dataset, store: str | os.PathLike, *, storage_options: dict[str, Any] | None = None
) -> bool:
    """Whether ``store`` is a complete store that :func:`~m3rcr_xr.store.to_zarr` wrote
    from ``ds``'s data: the fingerprint it keeps is the one it computes for ``ds`` (the
    same layout and inputs, none changed since). Reads metadata and listings only;
    nothing of ``ds`` is computed but what ``to_zarr`` computes before it writes
    (coordinates, variables without the dim it writes along).

    Raises
    ------
    StoreError
        An input of ``ds`` out of reach.
    InputFileError
        A file of ``ds`` changed since it was opened (as :func:`to_zarr` refuses it).
    """
    state, doc = inspect_store(Target.of(store, storage_options))
    if state != "complete" or doc is None:
        return False
    return doc["attributes"].get(FINGERPRINT) == identified(ds, sources(ds))[2]


def identified(
    ds: xr.Dataset, inputs: Sequence[str]
) -> tuple[xr.Dataset, dict[str, tuple[str, bool]], str]:
    """``ds`` as :func:`~m3rcr_xr.store.to_zarr` writes it (:func:`prepare`), the identities of its
    ``inputs`` (:func:`~m3rcr_xr.identity.sources`, taken before: the prepared variables
    no longer name them) and the fingerprint :func:`~m3rcr_xr.store.to_zarr` keeps in the store."""
    prepared = prepare(ds)
    identities = source_identities(inputs)
    return prepared, identities, data_fingerprint(prepared, identities=identities)


def plan(
    target: Target,
    fingerprint: str,
    overwrite: bool,
    names: Sequence[str],
    unversioned: Sequence[str] = (),
) -> tuple[set[int], int] | None:
    """Under the lock: the steps an earlier, unfinished run of the same data wrote
    (to skip) and its chunks a step (:data:`STEP_CHUNKS`), or None to start afresh
    (after removing a store being replaced). The arrays ``names`` are checked first to
    take nothing of the folder but the store's. A resume from an ``unversioned`` input
    (:func:`~m3rcr_xr.identity.source_identities`) is refused: the store could mix the
    old file's pixels with the new one's; so is one whose steps cannot be known."""
    state, doc = inspect_store(target)
    refuse(target, state, doc, overwrite)
    if doc is None:  # nothing there, or an empty folder
        return None
    _check_free(target, doc, names)
    attrs = doc["attributes"]
    # no step written yet (killed while it was created, replaced or writing its first
    # steps): it holds none of its data, so it is started over, whatever data it was for
    started = not attrs.get(PROGRESS)
    if overwrite or started:
        clear(target)
        return None
    if attrs.get(FINGERPRINT) != fingerprint:
        raise StoreError(
            f"{target.name}: an unfinished store of other data is there (other inputs, "
            "the same files changed since, or written by another version of m3rcr_xr); "
            f"pass {argument('overwrite', True)} to start it over"
        )
    if unversioned:
        raise StoreError(
            f"{target.name}: cannot resume this unfinished store: "
            f"{unversioned_reason(unversioned[0])}; "
            f"pass {argument('overwrite', True)} to start it over"
        )
    chunks_per_step = attrs.get(STEP_CHUNKS, _EARLIER_STEP_CHUNKS)
    if type(chunks_per_step) is not int or chunks_per_step < 1:
        raise StoreError(
            f"{target.name}: cannot resume this unfinished store: its {STEP_CHUNKS} "
            f"({attrs[STEP_CHUNKS]!r}) is no number of chunks, so its steps are unknown; "
            f"pass {argument('overwrite', True)} to start it over"
        )
    return set(attrs.get(PROGRESS, [])), chunks_per_step


def unversioned_reason(source: str) -> str:
    """Why a write from ``source`` (an input that reports no version) cannot resume."""
    return (
        f"the input {redacted(source)} reports its size but no version (no ETag nor "
        "Last-Modified), so a change since the first run cannot be detected"
    )


def _check_free(target: Target, doc: dict[str, Any], names: Sequence[str]) -> None:
    """Refuse ``names`` of arrays to write that name a file or folder beside the store's
    own arrays (a user's array added to its folder): Zarr would write into it, and
    the next replacement would remove it as the store's.

    Raises
    ------
    StoreError
        Naming them.
    """
    there = {basename(path) for path in target.fs.ls(target.path, detail=False)}
    taken = sorted(set(names) & there - set(own_arrays(target, doc)))
    if taken:
        raise StoreError(
            f"{target.name}: {', '.join(map(repr, taken))} in its folder is not the store's "
            "own (another program's array or file); remove or rename it, or the variable"
        )


def check_unchanged(
    target: Target, inputs: Sequence[str], identities: dict[str, tuple[str, bool]]
) -> None:
    """Refuse to complete a store whose ``inputs`` changed while it was written from them
    (another process re-ingested one): its steps may hold both versions. Each input is
    identified once more (:func:`~m3rcr_xr.identity.source_identities`), against its
    ``identities`` taken before the first step.

    Raises
    ------
    StoreError
        Naming the input. The store is left unfinished, and a resume refuses it: its
        fingerprint is that of the input as it was.
    """
    now = source_identities(inputs, since_open=False)  # against the start, said below
    changed = [source for source in inputs if now[source] != identities[source]]
    if changed:
        raise StoreError(
            f"{target.name}: the input {redacted(changed[0])} changed while it was read, so "
            "the store may mix its old and new data; it is left unfinished and cannot be "
            f"resumed: write it again with {argument('overwrite', True)}"
        )
