"""Build and load the M3R-CR networks by name.

>>> from m3rcr_xr.models import build, check_tile
>>> net = build("align_cr", preset="small")
>>> net.tile_size
32
>>> check_tile(net, 32)
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import torch
from torch import nn

from ..exceptions import ModelConfigError
from .checkpoint import (
    CheckpointSource,
    check_state_dict,
    extract_state_dict,
    load_state_dict_into,
    read_checkpoint,
)
from .interface import CloudRemovalNet, ModelSpec, check_size, constructor_arguments
from .records import RECORDS, model_record
from .unet import LandCoverUNet

__all__ = [
    "MODELS",
    "PRESETS",
    "available",
    "build",
    "check_tile",
    "load",
    "model_spec",
    "zero_residual_",
]

#: the network classes by name (read from :data:`~m3rcr_xr.models.records.RECORDS`)
MODELS: dict[str, type[CloudRemovalNet] | type[LandCoverUNet]] = {
    name: r.cls for name, r in RECORDS.items()
}

#: Named configurations by model (read from the records; a copy: editing it changes
#: nothing). ``default`` is the published one; ``small`` is a tiny variant for tests and
#: CPU demos (32x32 tiles for the windowed models, any size for DSen2-CR).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    name: {preset: dict(config) for preset, config in r.presets.items()}
    for name, r in RECORDS.items()
}


def available(task: str | None = None) -> tuple[str, ...]:
    """Names accepted by :func:`build` and :func:`load`; with ``task``
    (``"cloud_removal"`` or ``"landcover"``), those of the networks that do it."""
    return tuple(name for name, r in RECORDS.items() if task is None or r.task == task)


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` fits a constructor annotation (bools are not numbers here)."""
    if hint is int:
        return isinstance(value, Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, Real) and not isinstance(value, bool)
    if typing.get_origin(hint) is typing.Literal:
        return value in typing.get_args(hint)
    return not isinstance(hint, type) or isinstance(value, hint)


def _expected(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return {int: "an integer", float: "a number"}.get(hint, getattr(hint, "__name__", str(hint)))


def _check_config(key: str, cls: type[nn.Module], config: Mapping[str, Any]) -> None:
    """Refuse unknown keys, values of the wrong type and numbers that are not finite,
    naming the key, before the constructor turns them into an obscure torch error
    (``n_feats=16.5``) or a network of NaN (``res_scale=inf``)."""
    arguments = constructor_arguments(cls)
    known = list(arguments)
    unknown = [name for name in config if name not in known]
    if unknown:
        raise ModelConfigError(
            f"{key}: unknown configuration key {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(known)}"
        )
    for name, value in config.items():
        hint = arguments[name][0]
        if not _accepts(hint, value):
            raise ModelConfigError(f"{key}: {name}={value!r} must be {_expected(hint)}")
        # NaN or inf builds, then fills every output with NaN (res_scale=1e999)
        if hint is float and not math.isfinite(value):
            raise ModelConfigError(f"{key}: {name}={value!r} must be a finite number")


def build(
    name: str, *, preset: str | None = None, **config: Any
) -> CloudRemovalNet | LandCoverUNet:
    """Construct a network by name, in eval mode, with fresh (untrained) parameters.

    Parameters
    ----------
    name
        ``"dsen2_cr"``, ``"glf_cr"``, ``"align_cr"`` or the land-cover classifier
        ``"landcover_unet"`` (case and ``-``/``_`` ignored).
    preset
        ``None``/``"default"`` (the published configuration) or ``"small"``; see
        :data:`PRESETS`. Keyword arguments override the preset.
    **config
        Constructor arguments of the model class (e.g. ``input_size=64`` or, for DSen2-CR,
        ``n_resblocks``, ``n_feats``, ``res_scale``).

    Raises
    ------
    UnknownModelError
        Unknown name (a :class:`ModelConfigError`).
    ModelConfigError
        Unknown preset, unknown argument, one of the wrong type or a float that is NaN
        or infinite (naming it), or a configuration the constructor rejects.
    """
    record = model_record(name)
    key, cls, presets = record.name, record.cls, record.presets
    preset_name = preset or "default"
    if preset_name not in presets:
        raise ModelConfigError(f"{key}: unknown preset {preset!r}; available: {', '.join(presets)}")
    _check_config(key, cls, config)
    merged = {**presets[preset_name], **config}
    try:
        model = cls(**merged)
    except ModelConfigError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:  # torch's own checks
        raise ModelConfigError(f"{key}: cannot be built with {config or merged}: {exc}") from exc
    return model.eval()


def load(
    name: str,
    checkpoint: CheckpointSource,
    *,
    preset: str | None = None,
    device: str | torch.device | None = None,
    **config: Any,
) -> CloudRemovalNet | LandCoverUNet:
    """Build a network and load weights into it (strict), in eval mode.

    Parameters
    ----------
    name
        As for :func:`build`.
    checkpoint
        Path of a published checkpoint (``{'network': state_dict}`` with ``module.``
        keys), of a bare state dict saved by ``torch.save``, or of a safetensors file; or
        such a mapping already in memory.
    preset, **config
        The architecture, as for :func:`build`; it must be the one the weights were
        trained with.
    device
        Device to move the model to after loading (default: stay on CPU).

    Raises
    ------
    CheckpointError
        Unsafe or unreadable file, or keys/shapes that do not match (listed).
    ModelConfigError
        As for :func:`build`.
    """
    model = build(name, preset=preset, **config)
    raw = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    load_state_dict_into(model, extract_state_dict(raw))
    if device is not None:
        model = model.to(device)
    return model.eval()


def model_spec(
    name: str,
    checkpoint: CheckpointSource | None = None,
    *,
    preset: str | None = None,
    **config: Any,
) -> ModelSpec:
    """The spec of a network, checked as :func:`load` checks it, without its weights.

    The network is built on torch's ``meta`` device (shapes only: no memory, no
    initialisation), so that a client can validate a configuration and a checkpoint and
    read the tile size cheaply, leaving the real build to the workers.

    Parameters
    ----------
    name, preset, **config
        As for :func:`build`.
    checkpoint
        As for :func:`load`; its keys and shapes are compared with the network's.

    Raises
    ------
    ModelConfigError, CheckpointError
        As :func:`load` raises them.
    """
    with torch.device("meta"):
        model = build(name, preset=preset, **config)
    if checkpoint is not None:
        raw = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
        check_state_dict(model, extract_state_dict(raw))
    return model.spec


def check_tile(model: nn.Module, size: int | tuple[int, int]) -> None:
    """Raise :class:`ModelConfigError` unless ``model`` runs on tiles of ``size``.

    Parameters
    ----------
    model
        A network of this package (anything with a ``spec``).
    size
        Tile side, or (height, width).
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ModelConfigError(f"{type(model).__name__} has no model spec")
    check_size(spec, size)


@torch.no_grad()
def zero_residual_(model: CloudRemovalNet) -> CloudRemovalNet:
    """Zero the last convolution in place, so the output equals the cloudy input exactly.

    Useful to test a pipeline end to end with a known answer. Returns ``model``.
    """
    conv = model.output_conv()
    conv.weight.zero_()
    if conv.bias is not None:
        conv.bias.zero_()
    return model
