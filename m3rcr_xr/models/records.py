"""One record per model: what the package knows about each network, in one place.

A :class:`ModelRecord` holds the name and aliases, the class, the named presets, the
published training recipe (loss, batch size, learning-rate groups) and the published
checkpoint layout. Building (:mod:`~m3rcr_xr.models.registry`), training
(:mod:`m3rcr_xr.train`), inference and the command line read it; an unknown name raises
:class:`~m3rcr_xr.exceptions.UnknownModelError` listing the known ones.

>>> from m3rcr_xr.models.records import model_record
>>> record = model_record("Align-CR")
>>> record.name, record.published_batch_size
('align_cr', 2)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from torch import Tensor, nn

from ..exceptions import UnknownModelError
from ..landcover import IGNORE_INDEX
from .aligncr import AlignCR
from .dsen2cr import DSen2CR
from .glfcr import GLFCR
from .interface import CloudRemovalNet
from .losses import carl_loss, ec_charbonnier_loss, l1_loss
from .unet import LandCoverUNet

__all__ = [
    "CROSS_ENTROPY",
    "RECORDS",
    "LossFn",
    "ModelRecord",
    "TrainingLoss",
    "model_record",
]


class LossFn(Protocol):
    """``loss(pred, target, cloudy, cloudmask, *, valid=None)``, the form the training
    loop calls: ``valid`` (as ``cloudmask``, 1 where the pixel has optical data) leaves
    nodata out of the means; None counts every pixel."""

    def __call__(
        self,
        pred: Tensor,
        target: Tensor,
        cloudy: Tensor,
        cloudmask: Tensor,
        /,
        *,
        valid: Tensor | None = None,
    ) -> Tensor: ...


def _l1(
    pred: Tensor, target: Tensor, cloudy: Tensor, cloudmask: Tensor, *, valid: Tensor | None = None
) -> Tensor:
    return l1_loss(pred, target, valid=valid)


def _cross_entropy(
    logits: Tensor,
    labels: Tensor,
    cloudy: Tensor,
    cloudmask: Tensor,
    weight: Tensor | None = None,
    *,
    valid: Tensor | None = None,
) -> Tensor:
    """Cross-entropy over the labelled pixels (``IGNORE_INDEX`` left out: nodata of the
    input among them, so ``valid`` is not needed), ``weight`` per class (None: all 1);
    zero, still part of the graph, without a labelled pixel (torch's mean over none is
    NaN)."""
    labels = labels.long()
    if not bool((labels != IGNORE_INDEX).any()):
        return (logits * 0).sum()
    weight = None if weight is None else weight.to(logits.device)
    return nn.functional.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_INDEX)


def _ec_charbonnier(
    pred: Tensor, target: Tensor, cloudy: Tensor, cloudmask: Tensor, *, valid: Tensor | None = None
) -> Tensor:
    return ec_charbonnier_loss(pred, target, cloudmask, valid=valid)


@dataclass(frozen=True)
class TrainingLoss:
    """A published training loss: its name, ``function(pred, target, cloudy, cloudmask,
    *, valid=None)`` (see :class:`LossFn`),
    and whether it reads the cloud mask (then the training data must have one)."""

    name: str
    function: LossFn
    needs_cloudmask: bool


CARL = TrainingLoss("carl", carl_loss, needs_cloudmask=True)
L1 = TrainingLoss("l1", _l1, needs_cloudmask=False)
EC_CHARBONNIER = TrainingLoss("ec_charbonnier", _ec_charbonnier, needs_cloudmask=True)
#: a classifier's loss: ``function(logits, labels, cloudy, cloudmask)``, labels from
#: :func:`m3rcr_xr.landcover.worldcover_labels` (nodata and ignored classes skipped)
CROSS_ENTROPY = TrainingLoss("cross_entropy", _cross_entropy, needs_cloudmask=False)


@dataclass(frozen=True)
class ModelRecord:
    """Everything about one network that is not its layers.

    Attributes
    ----------
    cls
        The network class; its constructor defaults are the published configuration,
        and its ``name`` the registry name.
    task
        ``"cloud_removal"`` or ``"landcover"`` (a classifier), as the model's spec says;
        decloud takes only the first, semantic evaluation only the second.
    aliases
        Other accepted names (case, ``-`` and ``_`` are ignored anyway).
    presets
        Named constructor arguments; ``default`` (the published configuration) is empty.
    loss
        The published training loss.
    published_batch_size
        The published training batch size.
    lr_groups
        ``(attribute, factor)``: the parameters of the submodule ``attribute`` train at
        ``factor`` times the learning rate (Align-CR's alignment modules at 0.1x); the
        others at the rate itself.
    checkpoint_key, checkpoint_prefix
        The published checkpoint layout: the state dict under ``checkpoint_key``, its
        keys prefixed ``checkpoint_prefix`` (``nn.DataParallel``'s ``module.``).
    layer_counts
        The constructor arguments that repeat layers whose sizes do not depend on them
        (DSen2-CR's ``n_resblocks``), so that the parameters are a polynomial of degree
        2 at most in each: :func:`m3rcr_xr.models.parameter_count` extrapolates a large
        one rather than build it.
    """

    cls: type[CloudRemovalNet] | type[LandCoverUNet]
    loss: TrainingLoss
    published_batch_size: int
    presets: Mapping[str, Mapping[str, Any]]
    aliases: tuple[str, ...] = ()
    lr_groups: tuple[tuple[str, float], ...] = ()
    task: str = "cloud_removal"
    checkpoint_key: str = "network"
    checkpoint_prefix: str = "module."
    layer_counts: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Registry name (``"dsen2_cr"``...), the class's own."""
        return self.cls.name

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups of ``model`` at base rate ``lr`` (see :attr:`lr_groups`)."""
        groups: list[dict[str, Any]] = []
        taken: set[int] = set()
        for attribute, factor in self.lr_groups:
            params = list(getattr(model, attribute).parameters())
            taken.update(map(id, params))
            groups.append({"params": params, "lr": lr * factor})
        base = [p for p in model.parameters() if id(p) not in taken]
        return [{"params": base, "lr": lr}, *groups]

    def published_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``state`` keyed as the published checkpoints key their weights."""
        return {f"{self.checkpoint_prefix}{k}": v for k, v in state.items()}


_WINDOWED_SMALL: dict[str, Any] = {
    "input_size": 32,
    "n_feats": 16,
    "n_blocks": 2,
    "n_layers": 2,
    "growth_rate": 8,
    "num_heads": 2,
    "window_size": 4,
    "up_feats": 16,
}


def _presets(small: dict[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    """``default`` (the published configuration) and ``small``: a tiny variant for tests
    and CPU demos that runs in a few tens of milliseconds on a CPU."""
    return MappingProxyType({"default": {}, "small": small})


#: the networks by registry name
RECORDS: Mapping[str, ModelRecord] = MappingProxyType(
    {
        record.name: record
        for record in (
            ModelRecord(
                cls=DSen2CR,
                aliases=("dsen2cr",),
                presets=_presets({"n_resblocks": 2, "n_feats": 16}),
                loss=CARL,
                published_batch_size=1,
                layer_counts=("n_resblocks",),
            ),
            ModelRecord(
                cls=GLFCR,
                aliases=("glfcr",),
                presets=_presets(dict(_WINDOWED_SMALL)),
                loss=L1,
                published_batch_size=1,
                layer_counts=("n_blocks", "n_layers"),
            ),
            ModelRecord(
                cls=AlignCR,
                aliases=("aligncr",),
                presets=_presets({**_WINDOWED_SMALL, "n_sfe_blocks": 1, "deformable_groups": 2}),
                loss=EC_CHARBONNIER,
                published_batch_size=2,
                lr_groups=(("SFAlign", 0.1),),
                layer_counts=("n_blocks", "n_layers", "n_sfe_blocks"),
            ),
            ModelRecord(
                cls=LandCoverUNet,
                aliases=("landcoverunet",),
                presets=_presets({"depth": 2, "features": 8}),
                loss=CROSS_ENTROPY,
                published_batch_size=8,  # M3R-CR publishes no classifier: our default
                task="landcover",
            ),
        )
    }
)

_BY_ALIAS = {alias: record for record in RECORDS.values() for alias in record.aliases}


def model_record(name: str) -> ModelRecord:
    """The record of the network called ``name`` (case, ``-`` and ``_`` ignored).

    Raises
    ------
    UnknownModelError
        No network of that name; the message lists the known ones.
    """
    key = str(name).strip().lower().replace("-", "_")
    record = RECORDS.get(key) or _BY_ALIAS.get(key.replace("_", ""))
    if record is None:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(RECORDS)}")
    return record
