"""Weights by name, path or URL, checked by SHA-256; and the demo weights shipped here.

``m3rcr_xr.decloud(scene, checkpoint=...)`` takes a registered name, a path or a URL
(:func:`resolve`); :func:`fetch` gets the file (downloads go into a cache through pooch,
see :mod:`m3rcr_xr.weights.download`), :func:`available` and :func:`entry` read the
registry, :func:`register` adds to it (see :mod:`m3rcr_xr.weights.registry` for registry
files named by ``$M3RCR_WEIGHTS_REGISTRY``).

One entry is shipped: ``"dsen2_cr-demo"``, a small DSen2-CR trained on
:func:`m3rcr_xr.synthetic_collection` patches only (see ``MODEL_CARD.md`` beside this file
and ``scripts/train_demo_weights.sh``), so that the demo and the tests run the whole job
with no download. Use it for demonstrations, never for real imagery, where it does little
better than the cloudy input or worse; it is no model's default. Real work needs weights
trained on real data: the checkpoints of the M3R-CR paper are not released, so train
them with ``m3rcr train`` and register them.

Examples
--------
>>> from m3rcr_xr import weights
>>> demo = weights.entry("dsen2_cr-demo")
>>> demo.model, demo.license
('dsen2_cr', 'MIT')
>>> weights.fetch("dsen2_cr-demo").is_file()
True
>>> scene.m3rcr.decloud(checkpoint="dsen2_cr-demo")     # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..exceptions import CheckpointError, UnknownModelError
from .download import CACHE_ENV, cache_dir
from .registry import REGISTRY_ENV, UNTRAINED, WeightsEntry, available, entry, register, unregister
from .resolve import ResolvedWeights, fetch, resolve

__all__ = [
    "CACHE_ENV",
    "DEMO_WEIGHTS",
    "EXPORT_FORMAT",
    "REGISTRY_ENV",
    "UNTRAINED",
    "DefaultCheckpoint",
    "ResolvedWeights",
    "WeightsEntry",
    "available",
    "cache_dir",
    "default_checkpoint",
    "entry",
    "exported_weights",
    "fetch",
    "read_weights",
    "register",
    "resolve",
    "unregister",
]

#: file name of the demo weights inside this package
DEMO_WEIGHTS = "dsen2_cr_demo.safetensors"
#: the ``format`` entry of the safetensors header of weights this library exported
#: (``m3rcr train --export``): a file without it is another tool's, whatever else its
#: header says
EXPORT_FORMAT = "m3rcr_xr"
_FILES = contextlib.ExitStack()
atexit.register(_FILES.close)


@dataclass(frozen=True)
class DefaultCheckpoint:
    """A shipped checkpoint: where it is and what it needs to load.

    Attributes
    ----------
    model
        Registry name for :func:`m3rcr_xr.models.load` and :func:`m3rcr_xr.decloud`.
    path
        The safetensors file.
    config
        Architecture arguments the weights were trained with.
    metadata
        Everything the file's header records (``model``, ``config``, ``step``...).
    sha256
        The SHA-256 of the bytes the header was read from: :meth:`load` loads those
        bytes or none (None: not known).
    """

    model: str
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict, compare=False)
    sha256: str | None = field(default=None, compare=False)

    def __iter__(self) -> Iterator[Any]:
        """Unpacks as ``path, config``; deprecated, as it drops :attr:`model`.

        Read the attributes instead: ``decloud(ds, ckpt.model, ckpt.path,
        config=ckpt.config)``.
        """
        warnings.warn(
            "unpacking a DefaultCheckpoint as (path, config) drops its model and is "
            "deprecated; read .model, .path and .config instead",
            FutureWarning,
            stacklevel=2,
        )
        return iter((self.path, self.config))

    def load(self, device: str | None = None) -> Any:
        """The network with these weights, in eval mode (see :func:`m3rcr_xr.models.load`)."""
        from ..models import load

        return load(self.model, self.path, device=device, sha256=self.sha256, **self.config)


def _package_file(name: str) -> Path:
    """A real file system path of a package resource (extracted if zipped)."""
    resource = resources.files(__name__).joinpath(name)
    if not resource.is_file():
        raise CheckpointError(f"{name}: not shipped with this installation of m3rcr_xr")
    if isinstance(resource, Path):
        return resource
    return Path(_FILES.enter_context(resources.as_file(resource)))


def read_weights(path: str | Path, *, sha256: str | None = None) -> DefaultCheckpoint:
    """Describe a safetensors file written by ``m3rcr train --export``: the model name and
    configuration come from its header.

    ``sha256``: the file's expected SHA-256. The file is hashed in any case (its
    :attr:`~DefaultCheckpoint.sha256`), and its header read from the file hashed (the
    header only, not the tensors), so that :meth:`DefaultCheckpoint.load` loads that file
    or none.

    Raises
    ------
    CheckpointError
        The file is unreadable or not ``sha256``, or its header does not name a known
        model and a configuration (a JSON object) that agree.
    """
    path = Path(path)
    return _described(path, *_header(path, sha256, digest=True))


def _header(
    path: Path, sha256: str | None = None, *, digest: bool = False
) -> tuple[dict[str, str], str | None]:
    """The metadata in the safetensors header of ``path`` (the header only, not the
    tensors), and the file's SHA-256 (see
    :func:`~m3rcr_xr.models.checkpoint.open_verified`)."""
    from ..models.checkpoint import open_verified, safetensors_metadata

    with open_verified(path, sha256, digest=digest) as opened:
        return safetensors_metadata(opened), opened.sha256


def _described(path: Path, metadata: dict[str, str], sha256: str | None) -> DefaultCheckpoint:
    """The weights a header ``metadata`` of ``path`` describes (see :func:`read_weights`)."""
    if "model" not in metadata or "config" not in metadata:
        raise CheckpointError(f"{path}: the header does not name the model and its config")
    try:
        config = json.loads(metadata["config"])
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: the header config is not a JSON object: {metadata['config'][:80]!r}"
        )
    _check_header(path, metadata, config)
    return DefaultCheckpoint(metadata["model"], path, config, metadata, sha256)


def exported_weights(path: str | Path, *, sha256: str | None = None) -> DefaultCheckpoint | None:
    """:func:`read_weights` of a safetensors file that ``m3rcr train --export`` wrote
    (its header's ``format`` is :data:`EXPORT_FORMAT`); None for any other file, such as
    another tool's safetensors, whatever its header holds.

    Only the header is read, and the file hashed only where it is of this library's
    format and ``sha256`` is given (the result's :attr:`~DefaultCheckpoint.sha256`; None
    without it): a look that costs little, even for a large file.

    Raises
    ------
    CheckpointError
        A file of this library's format whose header is wrong (see :func:`read_weights`)
        or that is not ``sha256`` (any other file's hash is checked where it is loaded).

    Examples
    --------
    >>> from m3rcr_xr import weights
    >>> weights.exported_weights(weights.default_checkpoint().path).model
    'dsen2_cr'
    """
    path = Path(path)
    if not path.is_file():
        return None  # loading it says what is wrong
    try:
        metadata, _ = _header(path)  # is it ours? No hash needed to say no
    except CheckpointError:  # not safetensors after all: loading it says what is wrong
        return None
    if metadata.get("format") != EXPORT_FORMAT:
        return None
    if sha256 is not None:  # ours: described from the file hashed
        metadata, _ = _header(path, sha256)
    return _described(path, metadata, sha256)


def _check_header(path: Path, metadata: dict[str, str], config: dict[str, Any]) -> None:
    """The header's task, level and number of classes agree with its model and config."""
    from ..models import model_record

    try:
        task = model_record(metadata["model"]).task
    except UnknownModelError as exc:
        raise CheckpointError(f"{path}: the header names an {exc}") from exc
    if metadata.get("task", task) != task:
        raise CheckpointError(
            f"{path}: the header says task {metadata['task']!r}, but {metadata['model']} "
            f"is a {task} model"
        )
    for key in ("level", "n_classes"):
        if key in metadata and str(config.get(key)) != metadata[key]:
            raise CheckpointError(
                f"{path}: the header says {key}={metadata[key]}, its config {config.get(key)}"
            )


def default_checkpoint() -> DefaultCheckpoint:
    """The demo weights shipped with the package, with the configuration to load them.

    The file of the registered entry ``"dsen2_cr-demo"`` (``checkpoint="dsen2_cr-demo"``
    in :func:`m3rcr_xr.decloud` does the same in one step).

    ``.model`` names the network, ``.path`` is the file, ``.config`` the arguments it
    needs; ``.load()`` builds it.

    Raises
    ------
    CheckpointError
        The file is missing from this installation or its header lacks the description.
    """
    return read_weights(_package_file(DEMO_WEIGHTS))
