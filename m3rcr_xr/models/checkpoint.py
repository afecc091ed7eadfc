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

A file is read once into memory, and loaded from those bytes: with a known SHA-256
(``sha256=``), the bytes loaded are the bytes checked, even if another process replaces
the file meanwhile (a shared cache, a concurrent download of the same URL).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..exceptions import CheckpointError

__all__ = [
    "CheckpointSource",
    "check_state_dict",
    "extract_state_dict",
    "load_state_dict_into",
    "read_checkpoint",
    "read_verified",
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
# New-style weight-norm parametrisation names -> the legacy names the models use.
_WN_RENAMES = {
    ".parametrizations.weight.original0": ".weight_g",
    ".parametrizations.weight.original1": ".weight_v",
}


def _is_safetensors(data: bytes) -> bool:
    """Sniff the safetensors header: 8-byte little-endian length, then a JSON object."""
    if len(data) < 9 or data[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", data[:8])
    return 0 < length <= len(data) - 8


def read_verified(path: str | os.PathLike[str], sha256: str | None = None) -> bytes:
    """The bytes of a checkpoint file, read once, and checked against ``sha256`` if given.

    Whatever is made of the file (its tensors, its header) is made of these bytes, so
    that a file replaced after its hash was checked is never used unchecked.

    Raises
    ------
    CheckpointError
        The file is missing or unreadable, or its bytes are not ``sha256`` (both hashes
        named).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from exc
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise CheckpointError(
                f"{path}: SHA-256 mismatch: expected {sha256}, the file has {actual} (it "
                "changed since it was checked)"
            )
    return data


def safetensors_metadata(data: bytes, source: object = "checkpoint") -> dict[str, str]:
    """The ``__metadata__`` of the header of safetensors ``data`` (empty if it has none).

    Raises
    ------
    CheckpointError
        ``data`` has no readable safetensors header (naming ``source``).
    """
    try:
        if not _is_safetensors(data):
            raise ValueError("no safetensors header")
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise ValueError("the header's __metadata__ does not map text to text")
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{source}: not a readable safetensors file ({exc})") from exc
    return dict(metadata)


def read_checkpoint(path: str | os.PathLike[str], *, sha256: str | None = None) -> dict[str, Any]:
    """Read a checkpoint file without executing code.

    Parameters
    ----------
    path
        A ``torch.save`` file (zip or legacy format) or a safetensors file.
    sha256
        The file's expected SHA-256 (hex): the bytes are read once, checked, and loaded
        (see :func:`read_verified`).

    Returns
    -------
    dict
        The loaded object (for safetensors: the flat tensor mapping).

    Raises
    ------
    CheckpointError
        The file is missing or unreadable, is not ``sha256``, holds pickled objects
        beyond tensors and plain containers (refused by ``weights_only=True``), or is not
        a mapping.
    """
    path = Path(path)
    data = read_verified(path, sha256)
    if path.suffix == ".safetensors" or _is_safetensors(data):
        try:
            from safetensors.torch import load
        except ImportError as exc:  # pragma: no cover - safetensors is a dependency
            raise CheckpointError(
                f"{path}: reading safetensors needs the safetensors package"
            ) from exc
        try:
            return dict(load(data))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return dict(obj)


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
