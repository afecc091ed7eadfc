"""Checkpoint ensembles: one checkpoint or a list of them, checked to be one network family.

An ensemble is a list of checkpoints of one model family and configuration, each a
distinct network (:func:`ensemble_spec`: the same tensors in two files, or two formats,
are one network). Every member runs every tile (:func:`m3rcr_xr.blending.predict_tiles`);
their spread is :func:`m3rcr_xr.decloud`'s uncertainty layer (:func:`check_spread`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

from .exceptions import ModelConfigError, UsageError, argument
from .runner import ModelRef

Checkpoint = str | os.PathLike | None


def ensemble_checkpoints(checkpoint: Checkpoint | Sequence[Checkpoint]) -> tuple[Checkpoint, ...]:
    """One checkpoint or a list of them (an ensemble) as a tuple."""
    # a str is a Sequence too: one checkpoint
    checkpoints = tuple(checkpoint) if isinstance(checkpoint, list | tuple) else (checkpoint,)
    if not checkpoints:
        raise UsageError(f"{argument('checkpoint', checkpoint)}: an ensemble needs checkpoints")
    for one in checkpoints:
        if not (one is None or isinstance(one, str | os.PathLike)):
            raise UsageError(
                f"{argument('checkpoint', one)}: must be a file, URL or registered name "
                f"(or a list of them), not {type(one).__name__}"
            )
    return cast(tuple[Checkpoint, ...], checkpoints)


def check_spread(uncertainty: bool, members: int, tta: str | None) -> None:
    """A standard deviation needs something to spread: several members or transforms."""
    if uncertainty and members == 1 and tta is None:
        raise UsageError(
            f"{argument('uncertainty', uncertainty)} needs several predictions of each pixel: "
            f"give several checkpoints (an ensemble) or {argument('tta', 'flips')}"
        )


def ensemble_spec(members: tuple[ModelRef, ...]):
    """The :class:`~m3rcr_xr.models.ModelSpec` of the members, checked to be one:
    every checkpoint fits the model and configuration (as :meth:`ModelRef.spec`), and
    the members are one model family and configuration, and distinct networks.

    Raises
    ------
    ModelConfigError
        Members of different families or configurations (naming both).
    UsageError
        The same weights twice, in any files (naming both).
    """
    if len(members) == 1:
        return members[0].spec()
    first = members[0]
    for ref in members[1:]:  # before reading any checkpoint: the spec follows from these
        if (ref.name, ref.config) != (first.name, first.config):
            raise ModelConfigError(
                f"{argument('checkpoint')}: ensemble members must be one model family and "
                "configuration: "
                f"{ref.weights} is {ref.name} {dict(ref.config)}, "
                f"{first.weights} is {first.name} {dict(first.config)}"
            )
    specs, digests = zip(*(_member_spec(ref) for ref in members), strict=True)
    seen: dict[str, ModelRef] = {}
    for ref, digest in zip(members, digests, strict=True):
        if digest in seen:
            raise UsageError(
                f"{argument('checkpoint')}: the same weights appear twice in the ensemble: "
                f"{seen[digest].weights} and {ref.weights} hold the same tensors"
            )
        seen[digest] = ref
    return specs[0]


def _member_spec(ref: ModelRef) -> tuple[Any, str]:
    """The spec of an ensemble member (as :meth:`ModelRef.spec`) and a digest of its
    weights, from one read of its checkpoint: the same tensors saved in two formats
    (safetensors and ``.pth``, a bare state dict and the published layout) digest alike,
    where the files' hashes differ."""
    from . import models

    if ref.checkpoint is None:  # untrained: one network per configuration (untrained_seed)
        return ref.spec(), ref.weights
    raw = models.read_checkpoint(ref.checkpoint, sha256=ref.sha256)  # the bytes hashed
    spec = models.model_spec(ref.name, raw, **dict(ref.config))
    return spec, _weights_digest(models.extract_state_dict(raw))


def _weights_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a state dict's tensors: their names (sorted), shapes, dtypes and bytes.

    Examples
    --------
    >>> import torch
    >>> a = {"w": torch.ones(2), "b": torch.zeros(1)}
    >>> _weights_digest(a) == _weights_digest(dict(reversed(a.items())))
    True
    >>> _weights_digest(a) == _weights_digest({**a, "w": torch.ones(2, dtype=torch.float64)})
    False
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(repr((name, tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()
