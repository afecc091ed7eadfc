"""Weights by name: a registry of checkpoints, each with its model, configuration,
download addresses, SHA-256, license and model card.

Three sources, in this order (a name is taken once):

1. the entries shipped with the package: the demo weights ``"dsen2_cr-demo"`` and the
   demo land-cover classifier ``"landcover_unet-demo"`` (synthetic data only);
2. registry files named by the ``M3RCR_WEIGHTS_REGISTRY`` environment variable
   (JSON or TOML, several separated by ``os.pathsep``), read at the first look-up, so
   that a lab publishes its weights by name to everyone who sets the variable, worker
   processes included;
3. :func:`register`, in this process.

A registry file holds a list ``weights`` of tables with the fields of
:class:`WeightsEntry` (``urls``, ``sha256`` and ``model`` required)::

    [[weights]]
    name = "lab-dsen2_cr-v1"
    model = "dsen2_cr"
    urls = ["https://data.example.org/dsen2cr-v1.pth", "s3://lab-weights/dsen2cr-v1.pth"]
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    license = "CC-BY-4.0"
    config = { n_feats = 256 }
    model_card = "Trained on M3R-CR train, 200k steps; see https://..."

The checkpoints of the M3R-CR paper are not in the registry: their authors have not
released them. Train your own with ``m3rcr train`` and register them.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..exceptions import CheckpointError, UsageError, argument, command_line_names
from ..href import has_scheme
from .download import check_sha256

__all__ = [
    "REGISTRY_ENV",
    "WeightsEntry",
    "available",
    "entry",
    "origin",
    "register",
    "unregister",
]

#: environment variable naming registry files (JSON or TOML), separated by os.pathsep
REGISTRY_ENV = "M3RCR_WEIGHTS_REGISTRY"
#: the ``checkpoint`` that asks for a network with random weights
UNTRAINED = "untrained"


@dataclass(frozen=True)
class WeightsEntry:
    """One registered checkpoint.

    Attributes
    ----------
    name
        How users ask for it (``checkpoint="dsen2_cr-demo"``); no ``/`` and no ``://``,
        so that it never reads as a path or a URL.
    model
        The network it is for: a registry key of :mod:`m3rcr_xr.models` (``"dsen2_cr"``).
    urls
        Where to get the file, tried in order (mirrors): ``https://``, ``s3://``,
        ``file://``... A single string is taken as one URL.
    sha256
        The file's SHA-256 (hex); every fetch checks it.
    config
        Architecture arguments the weights were trained with (``decloud`` applies them).
        Where the file says what it was trained with (``m3rcr train --export`` weights, a
        training checkpoint), :func:`~m3rcr_xr.weights.resolve` refuses an entry whose
        model or config is not that.
    license
        The weights' license (an SPDX identifier where there is one).
    model_card
        What the weights are for and how they were made: the text, or a :class:`Path`
        of a file holding it (see :meth:`card`).
    default
        Whether ``checkpoint=None`` means these weights for :attr:`model` (one entry per
        model at most).
    size
        File size in bytes, if known (listings show it before a download).
    """

    name: str
    model: str
    urls: tuple[str, ...]
    sha256: str
    config: Mapping[str, Any] = field(default_factory=dict)
    license: str = "unknown"
    model_card: str | Path = ""
    default: bool = False
    size: int | None = None

    def __post_init__(self) -> None:
        name = str(self.name)
        if not name or "/" in name or "\\" in name or name == UNTRAINED:  # no URL either
            raise UsageError(
                f"{argument('name', self.name)}: a weights name must be non-empty, without "
                f"'/' or '\\', and not {UNTRAINED!r}"
            )
        urls = (self.urls,) if isinstance(self.urls, str) else tuple(map(str, self.urls))
        if not urls or not all(has_scheme(url) for url in urls):
            raise UsageError(f"{name}: {argument('urls', self.urls)}: give one or more URLs")
        object.__setattr__(self, "urls", urls)
        object.__setattr__(self, "sha256", check_sha256(self.sha256, "sha256"))
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))

    def card(self) -> str:
        """The model card's text (read from its file when :attr:`model_card` is a path)."""
        if isinstance(self.model_card, Path):
            return self.model_card.read_text(encoding="utf-8")
        return self.model_card

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "registry") -> WeightsEntry:
        """An entry from a table of a registry file (JSON or TOML).

        Raises
        ------
        CheckpointError
            Missing or unknown fields, a field of the wrong type or value, or a model
            that is not one of :func:`m3rcr_xr.models.available`, naming ``source`` and
            the entry.
        """
        known = {f.name for f in fields(cls)}
        label = f"{source}: entry {data.get('name', '?')!r}"
        unknown = sorted(set(data) - known)
        missing = sorted({"name", "model", "urls", "sha256"} - set(data))
        if unknown or missing:
            raise CheckpointError(
                f"{label}: unknown fields {unknown}, missing {missing}; fields: {sorted(known)}"
            )
        from ..models.records import model_record

        for name, value in data.items():
            if not _FIELD_CHECKS[name][0](value):
                raise CheckpointError(f"{label}: {name}={value!r}: {_FIELD_CHECKS[name][1]}")
        try:
            with command_line_names(False):  # a file's fields, whoever reads it
                model_record(data["model"])  # unknown: refused here, not at a later look-up
                return cls(**data)
        except UsageError as exc:  # UnknownModelError is one too
            raise CheckpointError(f"{label}: {exc}") from exc


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


#: the types a registry file's fields must have (JSON and TOML values), and what to say
_FIELD_CHECKS = {
    "name": (_is_text, "must be text"),
    "model": (_is_text, "must be text"),
    "urls": (
        lambda v: _is_text(v) or (isinstance(v, list) and all(map(_is_text, v))),
        "must be a URL or a list of URLs",
    ),
    "sha256": (_is_text, "must be text"),
    "config": (lambda v: isinstance(v, dict), "must be a table of architecture arguments"),
    "license": (_is_text, "must be text"),
    "model_card": (_is_text, "must be text"),
    "default": (lambda v: isinstance(v, bool), "must be true or false"),
    "size": (
        lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
        "must be a number of bytes",
    ),
}


def _shipped(
    name: str, model: str, file: str, sha256: str, config: dict, card: str, size: int
) -> WeightsEntry:
    """An entry for a weights file shipped in this package, with its model card."""
    folder = resources.files(__package__)
    return WeightsEntry(
        name=name,
        model=model,
        urls=(Path(str(folder.joinpath(file))).as_uri(),),
        sha256=sha256,
        config=config,
        license="MIT",
        model_card=Path(str(folder.joinpath(card))),
        size=size,
    )


@functools.cache
def _demo_entry() -> WeightsEntry:
    return _shipped(
        "dsen2_cr-demo",
        "dsen2_cr",
        "dsen2_cr_demo.safetensors",
        "3caafe2522695c532c1d2ff8e8b8665c567102129c3b5feeeb31ccc94b61125c",
        {"n_resblocks": 4, "n_feats": 32},
        "MODEL_CARD.md",
        309_392,
    )


@functools.cache
def _demo_classifier_entry() -> WeightsEntry:
    return _shipped(
        "landcover_unet-demo",
        "landcover_unet",
        "landcover_unet_demo.safetensors",
        "c953613857cdd9669ace51b3ea95180f101a3bab08857351ef63ee7b905fba95",
        {"depth": 2, "features": 16, "level": 1, "n_classes": 7},
        "MODEL_CARD_landcover_unet.md",
        478_620,
    )


_LOCK = threading.Lock()
_REGISTERED: dict[str, WeightsEntry] = {}
#: the entries of the registry files by the variable's value (read once), each with its file
_FILES: dict[str, tuple[tuple[Path, WeightsEntry], ...]] = {}


def _read_file(path: Path) -> list[WeightsEntry]:
    try:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} (${REGISTRY_ENV}): cannot read it ({exc})") from exc
    tables = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise CheckpointError(f"{path} (${REGISTRY_ENV}): expected a list 'weights' of tables")
    return [WeightsEntry.from_dict(t, str(path)) for t in tables]


def _file_entries() -> tuple[tuple[Path, WeightsEntry], ...]:
    """The entries of the files named by ``$M3RCR_WEIGHTS_REGISTRY``, each with its file."""
    value = os.environ.get(REGISTRY_ENV, "")
    if value not in _FILES:
        paths = [Path(p) for p in value.split(os.pathsep) if p]
        _FILES[value] = tuple((p, e) for p in paths for e in _read_file(p))
    return _FILES[value]


def _all() -> dict[str, WeightsEntry]:
    """Every entry by name, shipped first, then files, then registered ones."""
    with _LOCK:
        merged: dict[str, WeightsEntry] = {}
        shipped = (_demo_entry(), _demo_classifier_entry())
        listed = (item for _, item in _file_entries())
        for item in (*shipped, *listed, *_REGISTERED.values()):
            if item.name in merged:
                raise CheckpointError(
                    f"weights name {item.name!r} registered twice (check ${REGISTRY_ENV})"
                )
            merged[item.name] = item
        return merged


def _check_one_default(items: Iterable[WeightsEntry]) -> None:
    defaults: dict[str, str] = {}
    for item in items:
        if item.default and defaults.setdefault(item.model, item.name) != item.name:
            raise CheckpointError(
                f"{item.model}: two default weights, {defaults[item.model]!r} and "
                f"{item.name!r}; at most one entry per model has default=True"
            )


def available(model: str | None = None) -> tuple[WeightsEntry, ...]:
    """The registered entries (for ``model`` only, if given), shipped ones first.

    Examples
    --------
    >>> from m3rcr_xr import weights
    >>> [e.name for e in weights.available("dsen2_cr")][:1]
    ['dsen2_cr-demo']
    """
    items = tuple(_all().values())
    _check_one_default(items)
    if model is None:
        return items
    from ..models.records import model_record

    key = model_record(model).name
    return tuple(e for e in items if model_record(e.model).name == key)


def entry(name: str) -> WeightsEntry:
    """The entry called ``name``.

    Raises
    ------
    CheckpointError
        No such entry; the message lists the registered names.
    """
    items = _all()
    if name not in items:
        raise CheckpointError(
            f"{name!r}: no weights registered under this name; registered: "
            f"{', '.join(items)} (see m3rcr_xr.weights.available() or `m3rcr weights`)"
        )
    return items[name]


def origin(name: str) -> str:
    """Where the entry called ``name`` comes from, for messages that blame it: this
    process's :func:`register`, a registry file (named), or this package.

    Examples
    --------
    >>> origin("dsen2_cr-demo")
    'shipped with m3rcr_xr'
    """
    entry(name)  # an unknown name is refused, listing the registered ones
    with _LOCK:
        if name in _REGISTERED:
            return "registered by m3rcr_xr.weights.register() in this process"
        files = [path for path, item in _file_entries() if item.name == name]
    return f"listed in {files[0]} (${REGISTRY_ENV})" if files else "shipped with m3rcr_xr"


def register(new: WeightsEntry, *, replace: bool = False) -> WeightsEntry:
    """Add ``new`` to this process's registry, so that ``checkpoint=new.name`` works.

    Worker processes of a cluster do not see it: they fetch by the URLs and hash that
    decloud hands them. (A registry file named by ``$M3RCR_WEIGHTS_REGISTRY`` is seen
    by every process that has the variable.)

    Raises
    ------
    UsageError
        The name is taken (unless ``replace`` and it was registered here), or the model
        would get a second default.
    """
    from ..models.records import model_record

    model_record(new.model)  # an unknown model is refused now, listing the known ones
    with _LOCK:
        taken = new.name in _REGISTERED
    if (taken and not replace) or (not taken and new.name in _all()):
        raise UsageError(f"{new.name!r}: weights of this name are already registered")
    others = [e for e in _all().values() if e.name != new.name]
    try:
        _check_one_default([*others, new])
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    with _LOCK:
        _REGISTERED[new.name] = new
    return new


def unregister(name: str) -> WeightsEntry:
    """Remove an entry added by :func:`register` and return it.

    Raises
    ------
    UsageError
        ``name`` was not added by :func:`register` in this process.
    """
    with _LOCK:
        if name not in _REGISTERED:
            raise UsageError(f"{name!r}: not registered in this process by register()")
        return _REGISTERED.pop(name)
