"""Reading checkpoints safely and matching them strictly to a model.

Accepted inputs:

- the published layout, ``torch.save({'network': DataParallel(net).state_dict(), ...})``
  (keys prefixed ``module.``; other entries such as the optimizer state are ignored);
- a bare state dict (with or without the ``module.`` prefix);
- a safetensors file;
- an in-memory mapping of either of the first two forms.

``.pth``/``.pt`` files are read with ``torch.load(..., weights_only=True)``: a pickle that
would construct arbitrary objects (and so could run code) is refused with a
:class:`~m3rcr_xr.exceptions.CheckpointError`, never executed.

A file is opened once, hashed from that descriptor and loaded from it (a safetensors
file: memory-mapped through its path, checked to still name the file hashed): with a
known SHA-256 (``sha256=``), what is loaded is the file checked, even if another process
replaces the file meanwhile (a shared cache, a concurrent download of the same URL), and
memory holds the tensors once. A process hashes a file once while it is unchanged (the
same file, size, modification and change times): the client that resolves a checkpoint,
reads its settings and checks it on the meta device reads it whole once.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor, nn

from ..exceptions import CheckpointError

__all__ = [
    "CheckpointSource",
    "VerifiedFile",
    "check_digest",
    "check_is_file",
    "check_state_dict",
    "extract_state_dict",
    "load_state_dict_into",
    "open_verified",
    "read_checkpoint",
    "safetensors_metadata",
]

CheckpointSource = str | os.PathLike[str] | Mapping[str, Any]

_PREFIX = "module."
_MAX_LISTED = 20
#: paragraphs of torch's weights-only error never passed on: the advice to load with
#: ``weights_only=False``, which runs the pickle's code, and the pointer to its docs
_TORCH_ADVICE = re.compile(
    r"weights_only\W+(?:set to|=)\W*False|^Check the documentation",
    re.IGNORECASE,
)
#: the SHA-256 of files hashed in this process, by their :func:`_version`: at most
#: :data:`_MAX_DIGESTS`, the oldest dropped first
_DIGESTS: dict[tuple[int, ...], str] = {}
_DIGESTS_LOCK = threading.Lock()
_MAX_DIGESTS = 256
# New-style weight-norm parametrisation names -> the legacy names the models use.
_WN_RENAMES = {
    ".parametrizations.weight.original0": ".weight_g",
    ".parametrizations.weight.original1": ".weight_v",
}


class VerifiedFile:
    """A checkpoint file open for reading, its hash checked on what this descriptor reads.

    Made by :func:`open_verified`. ``handle`` reads the file hashed (positioned at its
    start); ``sha256`` is its hash (None where none was asked for).
    """

    def __init__(self, path: Path, handle: BinaryIO, sha256: str | None) -> None:
        self.path, self.handle, self.sha256 = path, handle, sha256
        self._identity = _identity(os.fstat(handle.fileno()))

    def check_unchanged(self, *, by_path: bool = False) -> None:
        """Raise unless the file is still the one hashed: not rewritten in place (its
        size and modification time, read from the open descriptor) and, ``by_path``,
        still the file that :attr:`path` names (not replaced by a rename, as pooch and
        this library replace files), for what is read through the path rather than
        :attr:`handle` (a memory map).

        An in-place rewrite that keeps the size and the modification time to the
        nanosecond goes unseen: no writer of weights does that, and a descriptor cannot
        lock a file against another process on every system.

        Raises
        ------
        CheckpointError
            The file changed since it was checked.
        """
        now: list[tuple[int, int, int, int] | None] = [_identity(os.fstat(self.handle.fileno()))]
        if by_path:
            try:
                now.append(_identity(os.stat(self.path)))
            except OSError:
                now.append(None)
        if any(found != self._identity for found in now):
            raise CheckpointError(
                f"{self.path}: the file changed since it was checked (replaced or rewritten "
                "while it was read); nothing of it was used"
            )

    def header(self, size: int) -> bytes:
        """The first ``size`` bytes (at most), read from :attr:`handle`, which is then back
        at the start."""
        self.handle.seek(0)
        data = self.handle.read(size)
        self.handle.seek(0)
        return data


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def check_is_file(path: Path, source: object = None) -> None:
    """Refuse a checkpoint ``path`` that is not a file, naming it as ``source`` (the
    caller's spelling: a ``file://`` URL...; None: ``path``).

    Raises
    ------
    CheckpointError
        ``path`` is missing or not a file.
    """
    if not path.is_file():
        raise CheckpointError(
            f"{path if source is None else source}: checkpoint file does not exist"
        )


def check_digest(source: object, expected: str | None, actual: str | None) -> None:
    """Refuse a file ``source`` whose SHA-256 ``actual`` is not ``expected`` (if given).

    Raises
    ------
    CheckpointError
        Naming ``source`` and both hashes.
    """
    if expected is not None and actual != expected:
        raise CheckpointError(
            f"{source}: SHA-256 mismatch: expected {expected}, the file has {actual} (another "
            "file, or it changed since it was checked)"
        )


@contextmanager
def open_verified(
    path: str | os.PathLike[str], sha256: str | None = None, *, digest: bool = False
) -> Iterator[VerifiedFile]:
    """Open a checkpoint file, hash it from that descriptor (1 MiB at a time, unless this
    process hashed it unchanged already: :func:`_file_digest`) and check the hash against
    ``sha256`` if given; ``digest``: hash it even without ``sha256``.

    Whatever is made of the file (its tensors, its header) is read from the descriptor
    hashed, or through its path after :meth:`VerifiedFile.check_unchanged` said it still
    names the file hashed; so a file replaced after its hash was checked is never used
    unchecked, and memory stays that of what is loaded (about the file's size), never a
    second copy.

    Raises
    ------
    CheckpointError
        The file is missing or unreadable, or its bytes are not ``sha256`` (both hashes
        named).
    """
    path = Path(path)
    check_is_file(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the caller's use
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from exc
    with handle:
        actual = _file_digest(path, handle) if sha256 is not None or digest else None
        check_digest(path, sha256, actual)
        yield VerifiedFile(path, handle, actual)


def _file_digest(path: Path, handle: BinaryIO) -> str:
    """The SHA-256 of the file open as ``handle`` (``path``, for messages), hashed 1 MiB at
    a time, or the one hashed earlier in this process from the same file unchanged (its
    :func:`_version`): a checkpoint resolved, checked on the meta device and loaded by one
    process is read whole once, not once a step. ``handle`` is left at the start."""
    version = _version(handle)
    known = _DIGESTS.get(version)
    if known is not None:
        return known
    hasher = hashlib.sha256()
    try:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from exc
    handle.seek(0)
    actual = hasher.hexdigest()
    if _version(handle) == version:  # not one changed while it was hashed
        with _DIGESTS_LOCK:
            if len(_DIGESTS) >= _MAX_DIGESTS:
                del _DIGESTS[next(iter(_DIGESTS))]
            _DIGESTS[version] = actual
    return actual


def _version(handle: BinaryIO) -> tuple[int, ...]:
    """What tells one state of an open file from another: its :func:`_identity` and its
    change time, which no process can set (a file rewritten in place with its size and
    modification time set back still moves it)."""
    stat = os.fstat(handle.fileno())
    return (*_identity(stat), stat.st_ctime_ns)


def _is_safetensors(opened: VerifiedFile) -> bool:
    """Sniff the safetensors header: 8-byte little-endian length, then a JSON object."""
    data = opened.header(9)
    if len(data) < 9 or data[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", data[:8])
    return 0 < length <= os.fstat(opened.handle.fileno()).st_size - 8


def safetensors_metadata(opened: VerifiedFile) -> dict[str, str]:
    """The ``__metadata__`` of the header of an open safetensors file (empty if it has
    none), read from its descriptor: the header only, never the tensors.

    Raises
    ------
    CheckpointError
        The file has no readable safetensors header.
    """
    try:
        if not _is_safetensors(opened):
            raise ValueError("no safetensors header")
        (length,) = struct.unpack("<Q", opened.header(8))
        header = json.loads(opened.header(8 + length)[8:])
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise ValueError("the header's __metadata__ does not map text to text")
    except (ValueError, AttributeError) as exc:  # also JSON that is no object
        raise CheckpointError(f"{opened.path}: not a readable safetensors file ({exc})") from exc
    return dict(metadata)


def read_checkpoint(
    path: str | os.PathLike[str], *, sha256: str | None = None, mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint file without executing code.

    Parameters
    ----------
    path
        A ``torch.save`` file (zip or legacy format) or a safetensors file.
    sha256
        The file's expected SHA-256 (hex): what is loaded is the file hashed (see
        :func:`open_verified`).
    mmap
        Map the tensors of a ``torch.save`` file of the zip format instead of reading
        them (``torch.load(mmap=True)``), to look at its other entries cheaply; a file
        of the legacy format is read whole. A safetensors file is always mapped.

    Returns
    -------
    dict
        The loaded object (for safetensors: the flat tensor mapping).

    Raises
    ------
    CheckpointError
        The file is missing or unreadable, is not ``sha256``, changed while it was
        read, holds pickled objects beyond tensors and plain containers (refused by
        ``weights_only=True``), or is not a mapping.
    """
    path = Path(path)
    with open_verified(path, sha256) as opened:
        if path.suffix == ".safetensors" or _is_safetensors(opened):
            return _read_safetensors(opened)
        obj = _torch_load(opened, mmap=mmap and opened.header(4) == b"PK\x03\x04")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return dict(obj)


def _read_safetensors(opened: VerifiedFile) -> dict[str, Any]:
    """The tensors of a safetensors file, memory-mapped through its path, once the path
    is known to name the file hashed, and again after."""
    from safetensors.torch import load_file

    opened.check_unchanged(by_path=True)
    try:
        tensors = dict(load_file(os.fspath(opened.path), device="cpu"))
    except Exception as exc:
        raise CheckpointError(f"{opened.path}: not a readable safetensors file ({exc})") from exc
    opened.check_unchanged(by_path=True)
    return tensors


def _torch_load(opened: VerifiedFile, *, mmap: bool) -> Any:
    """``torch.load(weights_only=True)`` of the descriptor hashed, or, ``mmap``, of the
    path mapped (checked to name the file hashed before and after)."""
    path = opened.path
    opened.check_unchanged(by_path=mmap)
    try:
        source: Any = os.fspath(path) if mmap else opened.handle
        obj = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        if "unsupported global" in detail.lower():
            raise CheckpointError(
                f"{path}: refused to load: the pickle references code beyond tensors and plain "
                "containers, and unpickling it could run arbitrary code (torch.load with "
                f"weights_only=True rejected it: {detail}). Only load checkpoints you trust; "
                "re-save trusted ones as a bare state dict or safetensors to load them here."
            ) from exc
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, or one that uses pickle features the "
            f"safe loader (weights_only=True) refuses: {detail}"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    opened.check_unchanged(by_path=mmap)
    return obj


def _unpickler_detail(exc: BaseException) -> str:
    """The informative part of torch's weights-only error: its ``WeightsUnpickler error``,
    else its first paragraph that is not torch's advice to load with
    ``weights_only=False`` (which would run the pickle's code) nor its pointer to the
    documentation."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, flags=re.DOTALL)
    if match:
        detail = " ".join(match.group(1).split())
        return detail.split(". Please use")[0]
    paragraphs = (" ".join(part.split()) for part in re.split(r"\n\s*\n", text))
    kept = [p for p in paragraphs if p and not _TORCH_ADVICE.search(p)]
    return kept[0].rstrip(".") if kept else type(exc).__name__


def extract_state_dict(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model's tensors from a loaded checkpoint, keys without ``module.``.

    The published layout nests the state dict under ``'network'``; a bare state dict is
    used as it is. The ``module.`` prefix of ``nn.DataParallel`` is removed, and new-style
    weight-norm names (``parametrizations.weight.original0/1``) become ``weight_g/weight_v``.

    Raises
    ------
    CheckpointError
        No state dict is found, or an entry is not a tensor.
    """
    state: Any = obj
    for key in ("network", "state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError("checkpoint holds no state dict (expected 'network' or tensors)")
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(
            "checkpoint is not a state dict: entries that are not tensors: "
            + _listing(sorted(map(str, not_tensors)))
        )
    out: dict[str, Tensor] = {}
    strip = all(str(k).startswith(_PREFIX) for k in state)
    for key, value in state.items():
        name = str(key)[len(_PREFIX) :] if strip else str(key)
        for old, new in _WN_RENAMES.items():
            if name.endswith(old):
                name = name[: -len(old)] + new
        out[name] = value
    return out


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Raise unless ``state`` has exactly ``model``'s keys and shapes.

    Only the keys and shapes of ``model.state_dict()`` are read, so ``model`` may live on
    the ``meta`` device (no memory, no weights).

    Raises
    ------
    CheckpointError
        Keys are missing or unexpected, or shapes differ; the message lists them (up to
        20 of each, with the count of the rest).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_listing(mismatched)}")
        config = getattr(model, "config", None)
        hint = f" (model config: {json.dumps(config, default=str)})" if config else ""
        raise CheckpointError(
            f"checkpoint does not match {type(model).__name__}{hint}: " + "; ".join(parts)
        )


def load_state_dict_into(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """Copy ``state`` into ``model`` with strict matching of keys and shapes.

    Raises
    ------
    CheckpointError
        As :func:`check_state_dict`.
    """
    check_state_dict(model, state)
    model.load_state_dict(dict(state), strict=True)
    return model
