"""The published training recipe: losses, optimiser, learning-rate schedule, autocast.

From ``zhu-xlab/M3R-CR`` (``Align-CR/model_CR_net.py``, ``Align-CR/train_CR_net.py``,
``baselines/{DSen2-CR,GLF-CR}/{model_CR_net,train_CR_net}.py``):

- losses: CARL (DSen2-CR), EC-Charbonnier (Align-CR), L1 (GLF-CR), read from the model
  records (:mod:`m3rcr_xr.models.records`);
- Adam (default betas (0.9, 0.999)), learning rate 1e-4; Align-CR's alignment modules
  (``SFAlign``) at 0.1 x the learning rate;
- StepLR with gamma 0.5: the published loop steps it once per epoch from epoch
  ``lr_start_epoch_decay - lr_step`` (10 - 5) on, so the rate halves after epoch 10 and
  every 5 epochs after, over 30 epochs. Here one optimiser step plays the part of an epoch:
  the rate halves after step ``lr_decay_start`` and every ``lr_step`` steps after (defaults:
  a third and a sixth of the run, the published proportions);
- crops of 160 (the published ``crop_size``; the model's tile size where it has one),
  batch size 1 (DSen2-CR, GLF-CR) or 2 (Align-CR), seed 7.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.optim.lr_scheduler import StepLR

from .. import devices
from ..exceptions import UsageError, argument
from ..models import RECORDS, model_record
from ..models.records import LossFn

#: published per-model settings: batch size and loss (read from the model records)
PUBLISHED: dict[str, dict[str, Any]] = {
    name: {"batch_size": r.published_batch_size, "loss": r.loss.name} for name, r in RECORDS.items()
}
PUBLISHED_CROP = 160
PUBLISHED_LR = 1e-4
PUBLISHED_SEED = 7
LR_GAMMA = 0.5
#: the published schedule over 30 epochs: first halving at epoch 10, then every 5
DECAY_START_FRACTION = 10 / 30
LR_STEP_FRACTION = 5 / 30


def loss_function(model: str, class_weights: torch.Tensor | None = None) -> LossFn:
    """The published loss of ``model`` as ``loss(pred, target, cloudy, cloudmask)``; a
    classifier's cross-entropy with ``class_weights`` (one per class; None: all 1)."""
    loss = model_record(model).loss
    if class_weights is None:
        return loss.function
    if loss.name != "cross_entropy":
        raise UsageError(f"class weights are for a classifier; {model} is trained with {loss.name}")
    # the cross-entropy takes a keyword ``weight`` beyond the LossFn form
    function = cast(Callable[..., torch.Tensor], loss.function)
    return functools.partial(function, weight=class_weights)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam at ``lr``, with the learning-rate groups of the model's record (Align-CR's
    ``SFAlign`` parameters at ``0.1 * lr``, as published); one group for a network
    that is not one of the package's."""
    record = RECORDS.get(str(getattr(model, "name", "")))
    if record is None:
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.Adam(record.param_groups(model, lr))


def make_scheduler(
    optimizer: torch.optim.Optimizer, lr_step: int, lr_decay_start: int | None = None
) -> StepLR:
    """StepLR halving the rate every ``lr_step`` scheduler steps (published gamma 0.5).

    With ``lr_decay_start`` (stepped as :func:`steps_scheduler` says), the rate halves
    after optimiser step ``lr_decay_start`` and every ``lr_step`` steps after, for any
    ``lr_decay_start >= 0``. The published loop starts stepping the scheduler
    ``lr_step`` steps before the first halving; when ``lr_decay_start < lr_step`` that
    start lies before step 1, so the steps it would have taken before the run are taken
    here (all of them for ``lr_decay_start=0``: the run starts at half the rate).

    Examples
    --------
    >>> net = torch.nn.Linear(1, 1)
    >>> optimizer = torch.optim.Adam(net.parameters(), lr=1.0)
    >>> scheduler = make_scheduler(optimizer, 3, lr_decay_start=1)
    >>> rates = []
    >>> for step in range(1, 8):
    ...     rates.append(optimizer.param_groups[0]["lr"])  # the rate of this step
    ...     if steps_scheduler(step, 1, 3):
    ...         scheduler.step()
    >>> rates  # halved after step 1, then after steps 4 and 7
    [1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    """
    scheduler = StepLR(optimizer, step_size=lr_step, gamma=LR_GAMMA)
    early = 0 if lr_decay_start is None else max(0, lr_step - lr_decay_start)
    if early:  # the last of those steps (StepLR halves on a multiple of lr_step only)
        scheduler.last_epoch = early - 1
        with warnings.catch_warnings():  # stepped before any optimiser step, on purpose
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            scheduler.step()
    return scheduler


def steps_scheduler(step: int, lr_decay_start: int, lr_step: int) -> bool:
    """Whether the scheduler steps after optimiser step ``step`` (1-based): as the
    published loop after epoch ``step - 1`` (``epoch >= start - lr_step``); the steps
    before step 1 are :func:`make_scheduler`'s."""
    return step - 1 >= lr_decay_start - lr_step


def autocast_dtype(device: str, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype on ``device``: None on the CPU (and with ``amp="off"``).

    As inference's precision of the same name (:func:`m3rcr_xr.devices.autocast_dtype`),
    ``"off"`` being its ``"fp32"``: ``"auto"`` is bf16 on GPUs that compute it natively
    (compute capability 8 and up), float32 elsewhere.

    Raises
    ------
    UsageError
        ``amp`` names a dtype but the device is not a GPU.
    """
    if amp in devices.REDUCED_PRECISIONS and not str(device).startswith("cuda"):
        raise UsageError(
            f"{argument('amp', amp)}: mixed precision runs on a CUDA GPU only, not on {device}"
        )
    return devices.autocast_dtype("fp32" if amp == "off" else amp, str(device), name="amp")


def grad_scaler() -> Any:
    """A CUDA gradient scaler for fp16 (``torch.amp`` from torch 2.3, ``torch.cuda.amp``
    before)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()  # pragma: no cover - torch < 2.3


def autocast(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on CUDA to ``dtype``; nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)
