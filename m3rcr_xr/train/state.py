"""A run's state on disk: random states, checkpoints (written, read, exported).

Checkpoints follow the published layout (``network``: the state dict with ``module.``
keys, ``optimizer``, ``scheduler``), plus ``step``, the random states (torch, NumPy,
Python), the sampler position, the run's settings and the identity of its data (``data``:
see :meth:`CropDataset.identity`, checked on resuming): a run resumed from one continues
exactly as the uninterrupted run would (bit for bit on the CPU). They are written with
``torch.save`` and read back with ``torch.load(weights_only=True)``; the weights load
with :func:`m3rcr_xr.models.load`.

Checkpoints and exported weights are written to a temporary file beside their path, then
renamed over it, and replace only a file of their own kind written by this library
(:func:`check_checkpoint_destination`, :func:`check_export_destination`): a user's file of
the same name is refused before any work, never overwritten, and so is another run's
checkpoint or exported weights unless the caller resumes that run or asks to overwrite.
A run holds the lock of each file it writes (:func:`writing`) from its start to its end,
so a second run on the same path is refused at its start. Exported weights are the same
bytes for the same weights (:func:`safetensors_bytes`): files are known by their hash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ..exceptions import CheckpointError, UsageError, argument
from ..files import replace_atomically, versions
from ..location import check_apart
from ..locks import locked_file
from ..models import extract_state_dict, model_record
from ..models.checkpoint import read_checkpoint
from ..weights import EXPORT_FORMAT, DefaultCheckpoint, exported_weights
from .data import DATASET_PREFIX, STORE_PREFIX, Source
from .settings import ResolvedSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: what a checkpoint holds to resume a run. The weights entry keeps its published name,
#: "network": the published code saves and loads ``{'network': ...}``, every model
#: record's ``checkpoint_key`` is "network", and models.load and every checkpoint
#: written so far read it there; another name would break all three.
CHECKPOINT_KEYS = ("network", "optimizer", "scheduler", "step", "rng", "sampler", "settings")


def rng_state() -> dict[str, Any]:
    """The torch, NumPy and Python random states, as tensors and plain containers."""
    np_state: Any = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    py_state = state["python"]
    random.setstate(
        (py_state["version"], tuple(int(v) for v in py_state["state"].tolist()), py_state["gauss"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(
    path: Path, payload: dict[str, Any], found: tuple[int, ...] | None
) -> tuple[int, ...] | None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file.

    ``found`` is the :func:`file_version` of what was at ``path`` when the run began, or
    of the checkpoint it wrote last: another file there by the rename (one written by
    hand while the run trained) is refused and kept. Returns the version written, the
    ``found`` of the next save.

    Raises
    ------
    CheckpointError
        Another file at ``path``, naming it.
    """
    replace_atomically(
        path,
        lambda partial: torch.save(payload, partial),
        check=lambda here: _check_found(here, found),
    )
    return file_version(path)


def file_version(path: Path) -> tuple[int, ...] | None:
    """The version of the local file ``path`` (:func:`~m3rcr_xr.files.versions`: its
    inode, size and modification time), None where there is none."""
    return versions([path])[0]


def _check_found(path: Path, found: tuple[int, ...] | None) -> None:
    if file_version(path) != found:
        raise CheckpointError(
            f"{argument('out', str(path))}: another file was put there while this run "
            f"trained; it is left as it is, and this run stops: train again with another "
            f"{argument('out')}"
        )


@contextlib.contextmanager
def writing(files: Mapping[str, str | os.PathLike[str] | None]) -> Iterator[None]:
    """Hold the lock of each file a run writes (``files``: by the argument that gave it,
    ``out``, ``export``; None: no such file) while the run lasts: a second run on one of
    them is refused at its start, and the first writes its files alone
    (:func:`m3rcr_xr.locks.locked_file`).

    Raises
    ------
    CheckpointError
        Another run is writing one of the files, naming it and its argument.
    """
    with contextlib.ExitStack() as held:
        for name, path in files.items():
            if path is not None:
                held.enter_context(locked_file(path, name, CheckpointError))
        yield


def check_checkpoint_destination(
    path: str | os.PathLike[str],
    *,
    name: str = "out",
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Refuse, before any work, a checkpoint path that :func:`train` may not write.

    Training replaces its checkpoint as it goes. A training checkpoint of this library
    already there holds a run of its own: it is replaced only by the run that continues
    it (``resume`` is that file) or with ``overwrite``. Any other file there is the
    user's and is left alone, ``overwrite`` or not. A file is a checkpoint of this
    library when :func:`read_training_checkpoint` reads it (with
    ``torch.load(weights_only=True)``: nothing is unpickled beyond tensors and plain
    containers).

    Parameters
    ----------
    path
        The checkpoint to write.
    name
        The argument that gave it, for the message (``out``; ``--out`` on the CLI).
    resume
        The checkpoint the run resumes, if any.
    overwrite
        Replace a training checkpoint of another run.

    Raises
    ------
    CheckpointError
        Something other than a training checkpoint of m3rcr_xr is at ``path``, or one
        of another run without ``overwrite``: naming its step and training data, and
        how to continue or replace it.
    """
    path, payload = _check_own_file(
        path, name, read_training_checkpoint, "a training checkpoint written"
    )
    if payload is not None and not overwrite and not _same_file(path, resume):
        raise CheckpointError(
            f"{argument(name, str(path))}: the file holds another run, a training "
            f"checkpoint of {payload['settings']['model']} at step {payload['step']} "
            f"{_trained_on(payload)}; pass {argument('resume', str(path))} to continue "
            f"it, {argument('overwrite', True)} to replace it, or choose another {argument(name)}"
        )
    return path


def check_export_destination(
    path: str | os.PathLike[str], *, name: str = "out", overwrite: bool = False
) -> Path:
    """Refuse, before any work, a path that :func:`export_weights` may not write: an
    existing file is replaced only with ``overwrite`` and only when it holds weights
    this library exported (a safetensors file whose header names the model and config
    and has ``format`` ``"m3rcr_xr"``; only the header is read).

    Raises
    ------
    CheckpointError
        Something else is at ``path``, or exported weights without ``overwrite``.
    """
    path, exported = _check_own_file(path, name, _read_export_header, "weights exported")
    if exported is not None and not overwrite:
        raise CheckpointError(
            f"{argument(name, str(path))}: the file holds weights exported by m3rcr_xr "
            f"({exported.model}, step {exported.metadata.get('step', '?')}); pass "
            f"{argument('overwrite', True)} to replace them, or choose another {argument(name)}"
        )
    return path


def check_outside_data(
    path: str | os.PathLike[str], source: Source, val: Source | None = None
) -> None:
    """Refuse, before any work, a file to write (a checkpoint, exported weights) that is
    or lies inside the training store ``source`` or the validation store ``val``: a file
    in a store is no part of it, and it changes the store's listing, by which a resume
    knows its data (xarray Datasets have no place to overlap).

    Raises
    ------
    StoreError
        Naming the file and the store (see :func:`m3rcr_xr.location.check_apart`).
    """
    for data, role in ((source, "training store"), (val, "validation store")):
        if isinstance(data, str | os.PathLike):
            check_apart(path, [data], role=role)


def _read_export_header(path: Path) -> DefaultCheckpoint:
    exported = exported_weights(path)
    if exported is None:
        raise CheckpointError(f"{path}: its header has no format={EXPORT_FORMAT!r}")
    return exported


def _check_own_file(
    path: str | os.PathLike[str], name: str, read: Callable[[Path], T], what: str
) -> tuple[Path, T | None]:
    """``path`` and what ``read`` reads there (None where nothing is), if the file
    there is ``what`` by m3rcr_xr; a CheckpointError naming the argument ``name``
    otherwise."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return path, None
    try:
        if not path.is_file():  # a folder, a dangling link...
            raise CheckpointError(f"{path}: not a file")
        return path, read(path)
    except CheckpointError as exc:
        log.debug("not replacing %s: %s", path, exc)
        raise CheckpointError(
            f"{argument(name, str(path))}: the file exists and is not {what} by m3rcr_xr; "
            f"choose another {argument(name)} or remove it"
        ) from None


def _same_file(path: Path, other: str | os.PathLike[str] | None) -> bool:
    """Whether ``other`` is the file at ``path`` (links and other spellings resolved)."""
    try:
        return other is not None and path.samefile(other)
    except OSError:  # one of them is missing: not the same file
        return False


def _trained_on(payload: Mapping[str, Any]) -> str:
    """What a checkpoint was trained on, for messages: "trained on STORE"."""
    identity = (payload.get("data") or {}).get("train")
    if identity is None:  # an older checkpoint
        return "(its training data not recorded)"
    source = identity["source"]
    return "trained on an xarray Dataset" if source == "dataset" else f"trained on {source}"


def checkpoint_payload(
    step: int,
    next_sample: int,
    settings: ResolvedSettings,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    metrics: Mapping[str, Any] | None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What :func:`train` saves; ``data``: the identities of its training (``train``)
    and validation (``val``, None without) data."""
    record = model_record(settings.model)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {
        record.checkpoint_key: record.published_state(weights),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "rng": rng_state(),
        "sampler": {"next": next_sample, "seed": settings.seed},
        "settings": settings.run_fields(),
    }
    if data is not None:
        payload["data"] = dict(data)
    if scaler is not None:
        payload["scaler"] = scaler.state_dict()
    if metrics:
        payload["metrics"] = json.loads(json.dumps(metrics))  # plain floats and strings
    return payload


def check_same_data(
    resume: str | os.PathLike[str], payload: Mapping[str, Any], data: Mapping[str, Any]
) -> None:
    """Refuse to resume the checkpoint ``payload`` (read from ``resume``) on other data
    than it was trained (and validated) on, or on data with a source that reports no
    version (a change of it could not be seen, as :func:`m3rcr_xr.to_zarr` refuses to
    resume a store of such data); ``data`` as ``checkpoint_payload`` takes it.
    Validation data is compared when both the checkpoint and the run have some. A
    checkpoint written before the data was recorded resumes, with a warning, and so do
    checkpoints that identified an xarray Dataset by its layout only (before its values
    were) or a store by its ``m3rcr_fingerprint`` only (before its listing was), on a
    store of that fingerprint.

    Raises
    ------
    UsageError
        Naming both sources and their fingerprints, or the source with no version.
    """
    saved = payload.get("data")
    if saved is None:
        log.warning(
            "%s records no identity of its training data (an older checkpoint): "
            "cannot check that %s is the data it was trained on",
            resume,
            data["train"]["source"],
        )
    for role, what in (("train", "training"), ("val", "validation")):
        mine, theirs = data.get(role), (saved or {}).get(role)
        if mine is None:
            continue
        if theirs is not None and not _same(resume, mine, theirs, what):
            raise UsageError(
                f"{argument('resume', str(resume))}: the checkpoint's {what} data is "
                f"{_described(theirs)}, not {_described(mine)}{_listing_only(mine, theirs)}"
                "; resume on the same data or start a new run"
            )
        if mine.get("unversioned"):
            raise UsageError(
                f"{argument('resume', str(resume))}: cannot resume on this {what} data: "
                f"{_unversioned(mine['unversioned'])}; start a new run"
            )


def warn_unversioned(data: Mapping[str, Any]) -> None:
    """Warn, at the start of a run, that a checkpoint of it cannot be resumed on ``data``
    (as ``checkpoint_payload`` takes it) read from a source that reports no version, as
    :func:`m3rcr_xr.to_zarr` warns before a write it could not resume."""
    for identity in filter(None, data.values()):
        if identity.get("unversioned"):
            log.warning(
                "%s: %s; if this run is interrupted, it cannot be resumed",
                identity["source"],
                _unversioned(identity["unversioned"]),
            )


def _unversioned(unversioned: list[str]) -> str:
    """Why a run on data read from the ``unversioned`` sources (which report no
    version) cannot be resumed, in :func:`m3rcr_xr.to_zarr`'s words."""
    others = f" (and {len(unversioned) - 1} other(s))" if len(unversioned) > 1 else ""
    return (
        f"the input {unversioned[0]}{others} reports its size but no version (no ETag nor "
        "Last-Modified), so a change since the first run cannot be detected"
    )


def _same(resume: Any, mine: Mapping[str, Any], theirs: Mapping[str, Any], what: str) -> bool:
    """Whether ``mine`` is the data ``theirs`` identifies; True with a warning where an
    older checkpoint's identity cannot tell (a Dataset's layout, a store's own
    fingerprint alone, matching)."""
    if mine["fingerprint"] == theirs["fingerprint"]:
        return True
    if _by_layout(theirs) and _by_layout(mine) is False:
        weaker = "an xarray Dataset, by its sizes, variables and patch ids"
    elif _older_store(theirs) and mine["fingerprint"].startswith(
        f"{STORE_PREFIX}{theirs['fingerprint']}:"  # a store of the fingerprint it kept
    ):
        weaker = "a store, by the data it was written from (not its chunks)"
    else:
        return False
    log.warning(
        "%s identifies its %s data, %s only (an older checkpoint): cannot check that it "
        "is the data it was trained on",
        resume,
        what,
        weaker,
    )
    return True


def _by_layout(identity: Mapping[str, Any]) -> bool | None:
    """For the identity of an xarray Dataset, whether it is the layout-only one of
    earlier versions (no :data:`DATASET_PREFIX`); None for a store's."""
    if identity["source"] != "dataset":
        return None
    return not identity["fingerprint"].startswith(DATASET_PREFIX)


def _older_store(identity: Mapping[str, Any]) -> bool:
    """Whether ``identity`` is a store's of earlier versions: its ``m3rcr_fingerprint``
    alone (no :data:`STORE_PREFIX`)."""
    return identity["source"] != "dataset" and not identity["fingerprint"].startswith(
        (STORE_PREFIX, DATASET_PREFIX)
    )


def _parts(identity: Mapping[str, Any]) -> list[str]:
    """The fingerprint without its prefix, split: ``[fingerprint]`` for a Dataset or an
    older store; for a store, ``[its m3rcr_fingerprint, "listing", digest]``
    (:func:`m3rcr_xr.identity.source_identities`)."""
    fingerprint = identity["fingerprint"]
    return fingerprint.removeprefix(DATASET_PREFIX).removeprefix(STORE_PREFIX).split(":")


def _listing_only(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> str:
    """Why two stores written from the same data differ, where only their listings do:
    a chunk rewritten in place, or a copy that did not keep modification times."""
    ours, others = _parts(mine), _parts(theirs)
    if len(ours) == len(others) > 1 and ours[0] == others[0]:
        return (
            " (written from the same data, but its files changed since: a chunk rewritten"
            " in place, or a copy of the store that did not keep modification times, as"
            " cp -a and rsync -a do)"
        )
    return ""


def _described(identity: Mapping[str, Any]) -> str:
    parts = _parts(identity)
    listing = f", listing {parts[-1][:12]}" if len(parts) > 1 else ""
    return f"{identity['source']} (fingerprint {parts[0][:12]}{listing})"


def read_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint written by :func:`train`, read with ``torch.load(weights_only=True)``.

    Raises
    ------
    CheckpointError
        Unreadable or unsafe file, or one without the training state (optimizer,
        scheduler, step, random states, settings) needed to resume.
    """
    payload = read_checkpoint(path)
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise CheckpointError(
            f"{path}: not a training checkpoint of m3rcr_xr (no "
            f"{', '.join(missing)}); it cannot be resumed"
        )
    return payload


def export_weights(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write a training checkpoint's weights as safetensors, with the model name and its
    configuration in the file's metadata (keys ``model``, ``config`` as JSON, ``step``,
    ``task``; for a classifier ``level`` and ``n_classes`` too, which
    :func:`m3rcr_xr.weights.read_weights` checks against the configuration).

    The file is written beside ``out`` and renamed over it, holding the lock of ``out``
    meanwhile (see :func:`writing`); an existing ``out`` is replaced only with
    ``overwrite`` and when it holds weights this library exported (see
    :func:`check_export_destination`). The same weights give the same bytes.

    Raises
    ------
    CheckpointError
        ``checkpoint`` is no training checkpoint, or ``out`` is a file of someone else,
        or exported weights without ``overwrite``, or another run is writing ``out``.
    """
    with writing({"out": out}):
        out = check_export_destination(out, overwrite=overwrite)
        return write_export(read_training_checkpoint(checkpoint), out, overwrite=overwrite)


def write_export(
    payload: Mapping[str, Any], out: Path, *, name: str = "out", overwrite: bool = False
) -> Path:
    """Write the weights of the training checkpoint ``payload`` (as
    :func:`checkpoint_payload` makes it) as :func:`export_weights` does, to ``out``,
    checked again (:func:`check_export_destination`; ``name``: the argument that gave
    it) just before the file is renamed in."""
    state = {k: v.contiguous() for k, v in extract_state_dict(payload).items()}
    settings = payload["settings"]
    metadata = {
        "model": str(settings["model"]),
        "config": json.dumps(settings["config"]),
        "step": str(payload["step"]),
        "format": EXPORT_FORMAT,
        "task": model_record(settings["model"]).task,
    }
    if settings.get("level") is not None:  # a classifier: its classes, checked on loading
        metadata.update(
            level=str(settings["level"]), n_classes=str(settings["config"]["n_classes"])
        )
    replace_atomically(
        out,
        lambda partial: partial.write_bytes(safetensors_bytes(state, metadata)),
        check=lambda path: _recheck_export(path, name, overwrite),
    )
    return out


def _recheck_export(path: Path, name: str, overwrite: bool) -> None:
    """:func:`check_export_destination`, again: a user's file may have come meanwhile."""
    check_export_destination(path, name=name, overwrite=overwrite)


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors file of ``tensors`` with ``metadata``, the same bytes for the same
    input, in any process.

    safetensors orders the tensors (by alignment, then name) but writes the metadata in
    the order of a Rust ``HashMap``, random in each process: here the metadata is sorted
    by key, first in the header, which is padded with spaces as safetensors pads it (the
    data starts 8-byte aligned).

    Examples
    --------
    >>> raw = safetensors_bytes({"w": torch.zeros(2)}, {"model": "m", "format": "f"})
    >>> raw[8:50]
    b'{"__metadata__":{"format":"f","model":"m"}'
    """
    from safetensors.torch import save

    raw = save(dict(tensors))
    (length,) = struct.unpack("<Q", raw[:8])
    header = {"__metadata__": dict(sorted(metadata.items())), **json.loads(raw[8 : 8 + length])}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + length :]
