"""From what a user passes as ``checkpoint`` to a local file, its hash and its config.

``checkpoint`` is a registered name (:mod:`~m3rcr_xr.weights.registry`), a URL
(``https://``, ``s3://``, ``file://``..., optionally ending in ``#sha256=HEX``), a path,
``"untrained"`` (random weights, asked for explicitly), or None (the model's default
entry, if it has one; no model has one today).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import (
    CheckpointError,
    ModelConfigError,
    UnknownModelError,
    UsageError,
    argument,
)
from ..href import has_scheme, redacted
from .download import check_file, check_sha256, fetch_url, split_url
from .registry import UNTRAINED, WeightsEntry, available, entry, origin

__all__ = ["DEFAULT_MODEL", "ResolvedWeights", "fetch", "fetch_first", "known_model", "resolve"]

#: the model when neither ``model`` nor a registered entry names one
DEFAULT_MODEL = "dsen2_cr"


@dataclass(frozen=True)
class ResolvedWeights:
    """What :func:`resolve` found.

    Attributes
    ----------
    model
        Registry key of the network.
    config
        Architecture arguments: the entry's, or those given.
    path
        The local file (None: untrained).
    sha256
        Its SHA-256 (None: untrained).
    sources
        Where another process gets the same file: the entry's name then its URLs, the
        URL, or the path; each is checked against :attr:`sha256`.
    label
        How the weights were asked for: the name, the path, ``"untrained"``, or the URL
        without its credentials (see :func:`m3rcr_xr.href.redacted`); results record it
        as their ``checkpoint`` attribute.
    """

    model: str
    config: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None
    sources: tuple[str, ...] = ()
    label: str = UNTRAINED


def _is_name(text: str) -> bool:
    return "/" not in text and os.sep not in text  # a URL has a "/" too


def _fetch(source: str | os.PathLike, known_hash: str | None) -> tuple[Path, str, Any]:
    """(local file, its SHA-256, the entry or None) for a name, URL or path."""
    if has_scheme(source):  # file:// too: fetch_url reads it in place
        return (*fetch_url(source, known_hash), None)
    text = os.fspath(source)
    if isinstance(source, str) and _is_name(text) and text in {e.name for e in available()}:
        found = entry(text)
        if known_hash is not None and known_hash != found.sha256:
            raise CheckpointError(
                f"{text}: registered with SHA-256 {found.sha256}, expected {known_hash}"
            )
        errors = []
        for url in found.urls:
            try:
                return (*fetch_url(url, found.sha256), found)
            except CheckpointError as exc:
                errors.append(str(exc))
        raise CheckpointError(f"{text}: no URL of this entry gave its file: " + "; ".join(errors))
    path = Path(text).expanduser()
    if isinstance(source, str) and _is_name(text) and not path.exists():
        names = ", ".join(e.name for e in available())
        raise CheckpointError(
            f"{text!r}: neither registered weights nor a file; registered: {names} "
            "(m3rcr_xr.weights.available() or `m3rcr weights` lists them)"
        )
    return path.resolve(), check_file(path, known_hash, text), None


def fetch(name_or_url: str | os.PathLike, *, known_hash: str | None = None) -> Path:
    """The local file of registered weights, a URL or a path, checked by its SHA-256.

    Parameters
    ----------
    name_or_url
        A registered name (its URLs are tried in order, checked against its hash), a
        URL (``https://``, ``s3://`` and any fsspec protocol are downloaded into the
        cache, see :func:`~m3rcr_xr.weights.download.cache_dir`; ``file://`` is read in
        place; a ``#sha256=HEX`` fragment is a ``known_hash``), or a path.
    known_hash
        The file's expected SHA-256 (hex, ``"sha256:"`` prefix allowed); optional for
        URLs and paths. Without it a URL already in the cache is not downloaded again.

    Raises
    ------
    CheckpointError
        An unknown name (listing the registered ones), a missing file, a download that
        failed (naming the URL; nothing is left in the cache), or a hash mismatch
        (naming the URL, the expected and the actual hash; a download is deleted, a
        user's file is left alone).

    Examples
    --------
    >>> from m3rcr_xr import weights
    >>> weights.fetch("dsen2_cr-demo").name
    'dsen2_cr_demo.safetensors'
    """
    return _fetch(name_or_url, check_sha256(known_hash))[0]


def fetch_first(sources: Iterable[str], known_hash: str) -> Path:
    """The first of ``sources`` (names, URLs, paths) that gives a file of ``known_hash``.

    Raises
    ------
    CheckpointError
        None did; the message has each one's reason.
    """
    errors = []
    for source in sources:
        try:
            return _fetch(source, known_hash)[0]
        except CheckpointError as exc:
            errors.append(str(exc))
    raise CheckpointError("; ".join(errors) or "no source of weights given")


def _same_architecture(model: str, given: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """Whether two configurations build the same network: the same arguments, where an
    argument left at None (one the model derives, as a classifier's ``n_classes`` from
    its ``level``) agrees with any value."""
    ours, other = _effective(model, given), _effective(model, theirs)
    return all(
        ours.get(name) is None or other.get(name) is None or ours.get(name) == other.get(name)
        for name in ours.keys() | other.keys()
    )


def _effective(model: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments ``config`` means: defaults, then preset, then keys."""
    from ..models.records import model_record

    record = model_record(model)
    rest = dict(config)
    preset = rest.pop("preset", None) or "default"
    parameters = inspect.signature(record.cls).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
    return {**defaults, **record.presets.get(preset, {"preset": preset}), **rest}


def _theirs(
    weights: str,
    found: tuple[str, Mapping[str, Any]],
    model: str | None,
    config: Mapping[str, Any] | None,
) -> tuple[str, dict[str, Any]]:
    """The model and configuration ``found`` with the ``weights`` (a registered entry's,
    an exported file's header, a training checkpoint's settings), refusing a different
    ``model`` or ``config``.

    Raises
    ------
    ModelConfigError
        ``model`` or ``config`` given and not those of the weights, or a ``config`` the
        model cannot take (an unknown or misspelt key, a value of the wrong type: see
        :func:`_checked`), refused before it is compared.
    """
    from ..models.records import model_record

    key, found_config = model_record(found[0]).name, dict(found[1])
    if model is not None and model_record(model).name != key:
        raise ModelConfigError(f"{argument('model', model)}: the weights {weights!r} are for {key}")
    if config is not None:  # a misspelt key is refused, never taken as agreeing
        _checked(key, config)
    if config is not None and not _same_architecture(key, config, found_config):
        raise ModelConfigError(
            f"{argument('config', dict(config))}: the weights {weights!r} were trained "
            f"with {found_config}; leave the configuration out to use theirs"
        )
    return key, found_config


def _carried(path: Path, sha256: str | None) -> tuple[str, dict[str, Any]] | None:
    """The model and configuration that the file ``path`` carries: the header of a
    safetensors file that ``m3rcr train --export`` wrote (see
    :func:`~m3rcr_xr.weights.exported_weights`), or the settings of a training checkpoint
    that ``m3rcr train`` wrote (``--checkpoint run.pth``); None for any other file (another
    tool's weights, a bare state dict). Read from the file hashed ``sha256``, the one the
    workers load (None: as it is, not hashed again): its header only, or its settings
    with its tensors memory-mapped.

    Raises
    ------
    CheckpointError
        The file is not ``sha256``, is no readable checkpoint, or carries a model or a
        configuration that are wrong (an unknown model, a config that is no mapping).
    """
    from . import exported_weights

    if path.suffix.lower() == ".safetensors":
        header = exported_weights(path, sha256=sha256)
        return None if header is None else (header.model, header.config)
    return _trained(path, sha256)


def _trained(path: Path, sha256: str | None) -> tuple[str, dict[str, Any]] | None:
    """The model and configuration in the ``settings`` of a training checkpoint (see
    :func:`m3rcr_xr.train.train`); None for a checkpoint without them.

    The tensors are memory-mapped, not read (``mmap=True``: a zip-format ``torch.save``
    file; the legacy format, long out of use, is read whole): only the settings are
    looked at here, the workers load the weights."""
    from ..models.checkpoint import read_checkpoint
    from ..models.records import model_record

    settings = read_checkpoint(path, sha256=sha256, mmap=True).get("settings")
    if not isinstance(settings, Mapping) or "model" not in settings:
        return None  # published or bare weights: the model and config given apply
    try:
        key = model_record(str(settings["model"])).name
    except UnknownModelError as exc:
        raise CheckpointError(f"{path}: the training settings name an {exc}") from exc
    config = settings.get("config")
    if not isinstance(config, Mapping):
        raise CheckpointError(
            f"{path}: the training settings' config is not a mapping: {str(config)[:80]!r}"
        )
    return key, dict(config)


def _check_entry(found: WeightsEntry, path: Path) -> None:
    """Refuse the registered entry ``found`` where its model or configuration is not the
    one its file ``path`` carries (see :func:`_carried`; a file that carries none, such
    as a bare state dict, takes the entry's): weights that another ``res_scale`` or
    ``drop_path_rate`` leaves the same shapes load strictly and run another network
    than the one trained. They agree as a ``config`` given agrees with the weights
    (:func:`_same_architecture`: up to defaults and derived arguments).

    The file was checked against the entry's SHA-256 as it was fetched, and is read here
    without being hashed again: what is read only decides a refusal (the entry's
    configuration is the one used, and the workers check the hash of what they load).

    Raises
    ------
    ModelConfigError
        They disagree; naming the entry, where it was registered (:func:`origin`), the
        file and both models and configurations.
    """
    from ..models.records import model_record

    carried = _carried(path, None)
    if carried is None:
        return
    key, theirs = carried
    ours = model_record(found.model).name
    if ours != key or not _same_architecture(key, found.config, theirs):
        raise ModelConfigError(
            f"weights {found.name!r} ({origin(found.name)}): the entry says {ours} with "
            f"config {dict(found.config)}, but its file {path} was trained as {key} with "
            f"config {theirs}; correct the entry"
        )


def known_model(
    model: str | None, checkpoint: str | os.PathLike | None, default: str = DEFAULT_MODEL
) -> str | None:
    """The registry key of the model that ``checkpoint`` is for, where it is known
    without fetching the weights: ``model`` if given, else a registered entry's, else
    ``default`` for None or ``"untrained"``; None for a path or a URL (the header of
    a file that ``m3rcr train --export`` wrote, or the settings of a training
    checkpoint, may name another).

    Examples
    --------
    >>> known_model(None, "dsen2_cr-demo"), known_model(None, "w.pth")
    ('dsen2_cr', None)
    """
    from ..models.records import model_record

    if model is not None:
        return model_record(model).name
    if checkpoint is None or checkpoint == UNTRAINED:
        return model_record(default).name
    text = os.fspath(checkpoint)
    if isinstance(checkpoint, str) and _is_name(text) and text in {e.name for e in available()}:
        return model_record(entry(text).model).name
    return None


def _checked(model: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` as a dict, refused (:class:`ModelConfigError`) unless ``model`` takes it
    (:func:`m3rcr_xr.models.check_config`: keys, types, sizes, number of parameters)."""
    from ..models.registry import check_config

    check_config(model, config)
    return dict(config or {})


def _no_weights(model: str) -> CheckpointError:
    names = ", ".join(e.name for e in available(model)) or "none"
    return CheckpointError(
        f"no checkpoint given and {model} has no default weights (a network is never run "
        f"untrained silently). Pass {argument('checkpoint', 'NAME')} with weights registered "
        f"for {model} ({names}), a path or a URL; train your own with `m3rcr train` (the "
        f"published M3R-CR checkpoints are not released); or "
        f"{argument('checkpoint', UNTRAINED)} for random weights (tests, benchmarks)"
    )


def resolve(
    model: str | None,
    checkpoint: str | os.PathLike | None,
    config: Mapping[str, Any] | None = None,
) -> ResolvedWeights:
    """The model, configuration, local file and hash that ``checkpoint`` stands for.

    Parameters
    ----------
    model
        Registry key of the network; None: the entry's (or the header's of a file that
        ``m3rcr train --export`` wrote, or the settings' of a training checkpoint that
        ``m3rcr train`` wrote), else ``"dsen2_cr"``.
    checkpoint
        A registered name, a URL, a path, ``"untrained"``, or None (the model's default
        entry). See :func:`fetch`.
    config
        Architecture arguments; with a registered entry, an exported file or a training
        checkpoint, None takes theirs, and a different one is refused.

    Raises
    ------
    CheckpointError
        As :func:`fetch`, or None given for a model without a default entry (the message
        says how to get weights), or a file that is no readable checkpoint, or whose
        header or training settings name no known model and configuration.
    ModelConfigError
        ``model`` or ``config`` that are not those of the registered entry (exported
        file, training checkpoint), a registered entry whose model or config is not the
        one its file carries (an exported file, a training checkpoint), or a
        ``config`` the model cannot take (:func:`m3rcr_xr.models.check_config`: an
        unknown key, a value of the wrong type, a size out of range, too many
        parameters), refused before any weights are fetched where the model is known
        without them (:func:`known_model`).
    UsageError
        A ``config`` that is no mapping.

    Examples
    --------
    >>> from m3rcr_xr import weights
    >>> found = weights.resolve(None, "dsen2_cr-demo")
    >>> found.model, found.config
    ('dsen2_cr', {'n_resblocks': 4, 'n_feats': 32})
    >>> weights.resolve("glf_cr", "untrained").path is None
    True
    """
    from ..models.records import model_record

    if config is not None and not isinstance(config, Mapping):
        raise UsageError(
            f"{argument('config', config)}: must map settings to values, such as "
            "{'preset': 'small'}"
        )
    early = known_model(model, checkpoint)
    if early is not None and config is not None:
        _checked(early, config)  # before a download: a typo is said at once
    if checkpoint is None:
        key = model_record(model or DEFAULT_MODEL).name
        defaults = [e for e in available(key) if e.default]
        if not defaults:
            raise _no_weights(key)
        checkpoint = defaults[0].name
    if isinstance(checkpoint, str) and checkpoint == UNTRAINED:
        key = model_record(model or DEFAULT_MODEL).name
        return ResolvedWeights(key, _checked(key, config))
    path, sha256, found = _fetch(checkpoint, None)
    if found is not None:
        _check_entry(found, path)  # the entry first: its mistake, not the caller's
        key, config = _theirs(found.name, (found.model, found.config), model, config)
        sources = (found.name, *found.urls)
        return ResolvedWeights(key, _checked(key, config), path, sha256, sources, found.name)
    label = os.fspath(checkpoint)
    if has_scheme(label):  # a URL: without its #sha256= (a path may hold a "#" of its own)
        label = split_url(label)[0]
    source = label if has_scheme(label) else str(path)
    # the label goes into results' attributes and messages: no password nor signature
    # (the source, which workers download from, keeps them)
    label = redacted(label)
    carried = _carried(path, sha256)
    if carried is not None:  # an exported file or a training checkpoint: like an entry
        key, config = _theirs(label, carried, model, config)
        return ResolvedWeights(key, _checked(key, config), path, sha256, (source,), label)
    key = model_record(model or DEFAULT_MODEL).name
    return ResolvedWeights(key, _checked(key, config), path, sha256, (source,), label)
