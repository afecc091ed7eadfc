"""Build and load the M3R-CR networks by name.

>>> from m3rcr_xr.models import build, check_tile
>>> net = build("align_cr", preset="small")
>>> net.tile_size
32
>>> check_tile(net, 32)
"""

from __future__ import annotations

import functools
import itertools
import math
import typing
from collections.abc import Callable, Mapping
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
    "MAX_PARAMETERS",
    "MODELS",
    "PRESETS",
    "available",
    "build",
    "check_config",
    "check_tile",
    "load",
    "model_spec",
    "parameter_count",
    "zero_residual_",
]

#: the most parameters a network may have (2**31, 8 GiB of float32 weights, many times
#: the published networks'): a configuration beyond it is refused before it is built,
#: where building it would exhaust the memory or run for hours
MAX_PARAMETERS = 2**31
#: a layer count (:attr:`~m3rcr_xr.models.records.ModelRecord.layer_counts`) above this
#: is not built to count the parameters: the count is extrapolated (see :func:`parameter_count`)
_COUNTED_LAYERS = 32

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


def _merged(
    name: str, preset: str | None, config: Mapping[str, Any]
) -> tuple[type[nn.Module], str, dict[str, Any]]:
    """The class, registry name and constructor arguments of ``name`` with ``preset``
    and ``config`` (checked by :func:`_check_config`)."""
    record = model_record(name)
    key, cls, presets = record.name, record.cls, record.presets
    preset_name = preset or "default"
    if preset_name not in presets:
        raise ModelConfigError(f"{key}: unknown preset {preset!r}; available: {', '.join(presets)}")
    _check_config(key, cls, config)
    return cls, key, {**presets[preset_name], **config}


def _construct(cls: Callable[..., Any], key: str, merged: Mapping[str, Any], given: Any) -> Any:
    """``cls(**merged)``, with the constructor's own errors as :class:`ModelConfigError`."""
    try:
        return cls(**merged)
    except ModelConfigError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:  # torch's own checks
        raise ModelConfigError(f"{key}: cannot be built with {given or merged}: {exc}") from exc


def _build_meta(cls: Callable[..., Any], key: str, items: tuple[tuple[str, Any], ...]) -> Any:
    with torch.device("meta"):
        return _construct(cls, key, dict(items), dict(items)).eval()


# meta networks hold no memory: the client checks a configuration at its entry, then
# reads the spec and checks the checkpoint's shapes, on one build
_cached_meta = functools.lru_cache(maxsize=16)(_build_meta)


def _meta_network(cls: Callable[..., Any], key: str, merged: Mapping[str, Any]) -> Any:
    """The network of ``merged`` on torch's meta device (shapes only, no memory)."""
    items = tuple(sorted(merged.items()))
    try:
        hash(items)
    except TypeError:  # a value of no fixed type (n_classes=[7]): the constructor says
        return _build_meta(cls, key, items)
    return _cached_meta(cls, key, items)


def _lagrange(node: int, x: int) -> int:
    """The Lagrange basis polynomial of the nodes 1, 2, 3 that is 1 at ``node``, at ``x``
    (an integer for an integer ``x``: each is a product of consecutive integers over 2)."""
    others = [n for n in (1, 2, 3) if n != node]
    return (x - others[0]) * (x - others[1]) // ((node - others[0]) * (node - others[1]))


def _count(cls: Callable[..., Any], key: str, merged: dict[str, Any]) -> int:
    """The parameters of ``cls(**merged)``, counted on the meta device; the layer counts
    above :data:`_COUNTED_LAYERS` extrapolated from builds with 1, 2 and 3 such layers."""
    names = [n for n in model_record(key).layer_counts if merged.get(n, 0) > _COUNTED_LAYERS]
    total = 0
    for nodes in itertools.product((1, 2, 3), repeat=len(names)):
        network = _meta_network(cls, key, {**merged, **dict(zip(names, nodes, strict=True))})
        weight = math.prod(_lagrange(n, merged[name]) for n, name in zip(nodes, names, strict=True))
        total += weight * sum(p.numel() for p in network.parameters())
    return total


def parameter_count(name: str, *, preset: str | None = None, **config: Any) -> int:
    """The number of parameters of the network :func:`build` makes, without making it.

    Counted on torch's ``meta`` device (no memory). Each layer count of the model (its
    record's :attr:`~m3rcr_xr.models.records.ModelRecord.layer_counts`, such as
    DSen2-CR's ``n_resblocks``) repeats layers of sizes that do not depend on it, so
    its parameters are a polynomial of degree 2 at most in it: above 32, the count
    is interpolated from networks of 1, 2 and 3 such layers, exactly, and quickly
    however large it is.

    Raises
    ------
    ModelConfigError
        As :func:`build`.

    Examples
    --------
    >>> parameter_count("dsen2_cr", preset="small")
    10740
    >>> parameter_count("dsen2_cr", n_resblocks=100_000_000)
    118016000023300
    """
    cls, key, merged = _merged(name, preset, config)
    return _count(cls, key, merged)


def check_config(name: str, config: Mapping[str, Any] | None = None) -> int:
    """Refuse a configuration that ``name`` cannot take, before anything is built; return
    the network's number of parameters.

    Parameters
    ----------
    name
        As for :func:`build`.
    config
        Constructor arguments, and ``preset`` (as ``decloud(config=...)`` takes them).

    Raises
    ------
    ModelConfigError
        As :func:`build`: an unknown preset or key (naming the known ones), a value of the
        wrong type, a size out of range; or more than :data:`MAX_PARAMETERS` parameters.

    Examples
    --------
    >>> check_config("dsen2_cr", {"n_resblocks": 4, "n_feats": 32})
    76900
    >>> check_config("dsen2_cr", {"n_resblock": 4})
    Traceback (most recent call last):
    ...
    m3rcr_xr.exceptions.ModelConfigError: dsen2_cr: unknown configuration key 'n_resblock'; ...
    """
    config = dict(config or {})
    preset = config.pop("preset", None)
    cls, key, merged = _merged(name, preset, config)
    count = _count(cls, key, merged)
    if count > MAX_PARAMETERS:
        raise ModelConfigError(
            f"{key}: {merged} makes a network of {count:,} parameters, more than the "
            f"{MAX_PARAMETERS:,} this library builds (m3rcr_xr.models.MAX_PARAMETERS)"
        )
    return count


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
        or infinite (naming it), a configuration the constructor rejects, or one of more
        than :data:`MAX_PARAMETERS` parameters (see :func:`check_config`: refused before
        anything is allocated).
    """
    cls, key, merged = _merged(name, preset, config)
    check_config(key, {"preset": preset, **config})
    return _construct(cls, key, merged, config).eval()


def load(
    name: str,
    checkpoint: CheckpointSource,
    *,
    preset: str | None = None,
    device: str | torch.device | None = None,
    sha256: str | None = None,
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
    sha256
        The checkpoint file's SHA-256 (hex): the weights loaded are the bytes checked
        (see :func:`~m3rcr_xr.models.checkpoint.open_verified`).

    Raises
    ------
    CheckpointError
        Unsafe or unreadable file, one that is not ``sha256``, or keys/shapes that do not
        match (listed).
    ModelConfigError
        As for :func:`build`.
    """
    model = build(name, preset=preset, **config)
    raw = _read(checkpoint, sha256)
    load_state_dict_into(model, extract_state_dict(raw))
    if device is not None:
        model = model.to(device)
    return model.eval()


def model_spec(
    name: str,
    checkpoint: CheckpointSource | None = None,
    *,
    preset: str | None = None,
    sha256: str | None = None,
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
    checkpoint, sha256
        As for :func:`load`; its keys and shapes are compared with the network's.

    Raises
    ------
    ModelConfigError, CheckpointError
        As :func:`load` raises them.
    """
    cls, key, merged = _merged(name, preset, config)
    check_config(key, {"preset": preset, **config})
    model = _meta_network(cls, key, merged)
    if checkpoint is not None:
        check_state_dict(model, extract_state_dict(_read(checkpoint, sha256)))
    return model.spec


def _read(checkpoint: CheckpointSource, sha256: str | None) -> Mapping[str, Any]:
    if isinstance(checkpoint, Mapping):
        return checkpoint
    return read_checkpoint(checkpoint, sha256=sha256)


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
