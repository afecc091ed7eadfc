"""The training loop: one optimiser step, a run's state, and :func:`train`."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..exceptions import SchemaError, UsageError, argument
from ..landcover import IGNORE_INDEX
from ..location import check_apart
from ..models import build, extract_state_dict, load_state_dict_into, model_record
from ..models.records import LossFn
from ..progress import progress_bar, show_progress
from .data import (
    CountingSampler,
    CropDataset,
    Source,
    balanced_class_weights,
    loader,
    step_tensors,
)
from .recipe import (
    autocast,
    autocast_dtype,
    grad_scaler,
    loss_function,
    make_optimizer,
    make_scheduler,
)
from .settings import ResolvedSettings, TrainSettings
from .state import (
    check_checkpoint_destination,
    check_export_destination,
    check_outside_data,
    check_same_data,
    checkpoint_payload,
    file_version,
    read_training_checkpoint,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    warn_unversioned,
    write_export,
    writing,
)
from .validation import VAL_BATCH, format_metrics, validate_model

log = logging.getLogger(__name__)


def _takes_valid(loss_fn: Callable[..., Tensor]) -> bool:
    """Whether ``loss_fn`` takes the keyword ``valid`` (a user's loss may predate it)."""
    try:
        parameters = inspect.signature(loss_fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: call it as before
        return False
    return any(p.name == "valid" or p.kind is p.VAR_KEYWORD for p in parameters)


def _has_data(batch: Mapping[str, Tensor], uses_valid: bool) -> bool:
    """Whether the loss sees a pixel of ``batch``: a labelled one (a classifier's batch),
    a valid one (``uses_valid``: the loss takes them), else any."""
    if "labels" in batch:
        return bool((batch["labels"] != IGNORE_INDEX).any())
    return not uses_valid or bool(batch["valid"].any())


def train_step(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    *,
    device: str = "cpu",
    amp: torch.dtype | None = None,
    scaler: Any = None,
) -> float:
    """One optimiser step on ``batch``; returns the loss.

    ``batch`` is a batch of :class:`CropDataset` (for a classifier, with ``labels``: the
    network classifies the cloud-free ``target``); its ``valid`` pixels (optical data),
    when it has them, go to ``loss_fn`` as ``valid=`` if it takes that keyword (a loss of
    four arguments, as before, counts every pixel). The forward pass runs under autocast
    when ``amp`` is a dtype (GPU only); the loss is computed in float32. ``scaler`` (a
    ``torch.amp.GradScaler``) scales fp16 gradients.

    A batch the loss sees no pixel of (no valid pixel, for a loss that takes ``valid``;
    no labelled one, for a classifier) changes nothing and returns 0.0: no forward pass
    (batch-norm statistics), no optimiser step (Adam's moments would still move the
    weights), no scaler update.

    Raises
    ------
    UsageError
        The loss is not finite (NaN or infinite: the training diverged); no optimiser step
        is taken, so the weights stay those of the last step.
    """
    uses_valid = "valid" in batch and _takes_valid(loss_fn)
    if not _has_data(batch, uses_valid):
        return 0.0
    inputs, target, optical, mask = step_tensors(batch, device)
    extra = {}
    if uses_valid:
        extra["valid"] = batch["valid"].to(device, non_blocking=True)
    with autocast(amp):
        pred = model(*inputs)
    loss = loss_fn(pred.float(), target, optical, mask, **extra)
    if not torch.isfinite(loss.detach()).all():  # its gradients would spoil every weight
        raise UsageError(
            f"the loss is {float(loss.detach())}, not a finite number: the training "
            "diverged (a learning rate too high, or a configuration that makes a network "
            "of NaN)"
        )
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return float(loss.detach())


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` did: the checkpoint, the settings it ran with, the loss of every
    step it ran, the last validation (see :func:`validate_model`; empty without validation
    data), its wall time, the step of the checkpoint it wrote, the weights it exported
    (None without ``export``)."""

    checkpoint: Path
    settings: ResolvedSettings
    losses: dict[int, float]
    metrics: dict[str, Any]
    wall_s: float
    step: int = 0
    export: Path | None = None


class _Run:
    """The state of one training run: model, optimiser, scheduler, scaler, device."""

    def __init__(
        self,
        settings: ResolvedSettings,
        resume: Mapping[str, Any] | None,
        data: Mapping[str, Any] | None = None,
        found: tuple[int, ...] | None = None,
    ) -> None:
        self.settings = settings
        self.data = data  # the identities of the run's data, for its checkpoints
        # what is at its out (its version): what was there at the start, then the
        # checkpoint it wrote last; another file there is not replaced (save_checkpoint)
        self.found = found
        self.device = settings.device
        self.amp = autocast_dtype(self.device, settings.amp)
        seed_everything(settings.seed)
        self.model = build(settings.model, **settings.config).to(self.device).train()
        self.optimizer = make_optimizer(self.model, settings.lr)
        self.scheduler = make_scheduler(
            self.optimizer, settings.lr_step, lr_decay_start=settings.lr_decay_start
        )
        self.scaler = grad_scaler() if self.amp == torch.float16 else None
        self.step = 0
        self.saved = 0  # the step of the checkpoint this run wrote last (0: none)
        self.next_sample = 0  # the sampler's state: sample number of the next crop
        if resume is not None:
            self._restore(resume)

    def _restore(self, payload: Mapping[str, Any]) -> None:
        load_state_dict_into(self.model, extract_state_dict(payload))
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler is not None and "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])  # last: building the model drew from the RNG
        self.step = int(payload["step"])
        self.next_sample = int(payload["sampler"]["next"])

    def payload(self, metrics: Mapping[str, Any] | None) -> dict[str, Any]:
        """The state reached, as a checkpoint holds it."""
        return checkpoint_payload(
            self.step,
            self.next_sample,
            self.settings,
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            metrics,
            self.data,
        )

    def save(self, path: Path, metrics: Mapping[str, Any] | None) -> None:
        self.found = save_checkpoint(path, self.payload(metrics), self.found)
        self.saved = self.step
        log.info("step %d: wrote %s", self.step, path)

    def checkpoint(self, path: Path, val_data: CropDataset | None) -> dict[str, Any]:
        """Save the state reached, then validate it on ``val_data`` (if any) and save it
        again with the metrics: a validation that fails (a read error of its store)
        never loses the training done. Returns the metrics (empty without ``val_data``)."""
        self.save(path, None)
        metrics = self.validate(val_data)
        if metrics:
            self.save(path, metrics)
        return metrics

    def validate(self, data: CropDataset | None) -> dict[str, Any]:
        if data is None:
            return {}
        result = validate_model(
            self.model,
            data,
            batch_size=VAL_BATCH,
            device=self.device,
            amp=self.amp,
            num_workers=self.settings.num_workers,
        )
        log.info(
            "step %d: validation on %d crops: %s", self.step, len(data), format_metrics(result)
        )
        return result

    def describe(self, data: CropDataset) -> str:
        s = self.settings
        n_params = sum(p.numel() for p in self.model.parameters())
        return (
            f"{s.model} {s.config} ({n_params:,} parameters) on {self.device}"
            f"{'' if self.amp is None else f' with {self.amp} autocast'}: {s.steps} steps of "
            f"{s.batch_size} crops of {s.crop} from {len(data)} patches, lr {s.lr:g} "
            f"halving after step {s.lr_decay_start} and every {s.lr_step} after"
        )


def train(
    source: Source,
    out: str | os.PathLike[str],
    settings: TrainSettings,
    *,
    val: Source | None = None,
    resume: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    task: str | None = None,
    level: int | None = None,
    overwrite: bool = False,
    export: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train a network on a scene or collection store with the published recipe.

    Parameters
    ----------
    source
        Training data: a store written by :func:`m3rcr_xr.to_zarr` or an xarray Dataset
        with ``cloudy``, ``cloudfree``, ``sar`` (and ``cloudmask`` for DSen2-CR and
        Align-CR, whose losses use it); for the land-cover task, ``cloudfree`` and
        ``landcover``.
    out
        Checkpoint path, written every ``settings.checkpoint_every`` steps and at the end
        (each time to a temporary file renamed over it), before the validation and again
        with its metrics: a validation that fails loses no training. An existing file there is
        replaced only when it is the ``resume`` checkpoint, or with ``overwrite`` a
        training checkpoint of this library: see :func:`check_checkpoint_destination`.
        It may not lie inside the training or validation store. The run holds its lock
        (``.NAME.m3rcr-lock`` beside it) from start to end: another run on it is refused.
    settings
        See :class:`TrainSettings`.
    val
        Validation data (centre crops), checked at each checkpoint and at the end.
    resume
        A checkpoint of this function to continue from; unset run fields of ``settings``
        are taken from it, and the run goes on exactly as if it had not stopped. It must
        be resumed on the data it was trained on (and validated on, where both have
        validation data): the checkpoint records their identity
        (:meth:`CropDataset.identity`). ``settings.steps`` may not be below its step.
    progress
        Show a progress bar with the loss; default: the ``progress`` option.
    task, level
        Shorthands for ``settings.task`` and ``settings.level`` (set there when given):
        ``task="landcover", level=1`` trains a classifier of the seven level-1 groups.
    overwrite
        Replace the training checkpoint of another run at ``out`` and weights exported at
        ``export`` (never a file of another kind).
    export
        Also write the weights the run ends with as safetensors (see
        :func:`export_weights`) there, at the end; checked and locked from the start as
        ``out`` is.

    Raises
    ------
    UsageError, SchemaError, ModelConfigError, CheckpointError
        Bad settings, data without the variables needed, a crop the model cannot take, a
        checkpoint that cannot be resumed or does not match ``settings`` or the data, a
        file at ``out`` that is not a training checkpoint of this library, or another
        run's without ``overwrite`` (and at ``export``, as for :func:`export_weights`),
        or another run writing ``out`` or ``export`` now.
    StoreError
        ``out`` or ``export`` lies inside the training or validation store, or they are
        one file.
    """
    start_time = time.perf_counter()
    for path in (out, export):
        if path is not None:
            check_outside_data(path, source, val)
    if export is not None:
        check_apart(export, [out], role="checkpoint")
    with writing({"out": out, "export": export}):
        out = check_checkpoint_destination(out, resume=resume, overwrite=overwrite)
        weights = None
        if export is not None:
            weights = check_export_destination(export, name="export", overwrite=overwrite)
        run, losses, metrics = _run(source, out, settings, val, resume, progress, task, level)
        if weights is not None:  # the weights of this run, not of the file at out now
            write_export(run.payload(None), weights, name="export", overwrite=overwrite)
    wall_s = time.perf_counter() - start_time
    return TrainResult(out, run.settings, losses, metrics, wall_s, step=run.step, export=weights)


def _run(
    source: Source,
    out: Path,
    settings: TrainSettings,
    val: Source | None,
    resume: str | os.PathLike[str] | None,
    progress: bool | None,
    task: str | None,
    level: int | None,
) -> tuple[_Run, dict[int, float], dict[str, Any]]:
    """The run of :func:`train` (its arguments), once its files are its own: the run's
    state at the end, its losses and last metrics."""
    found = file_version(out)  # what is at out now: a file put there meanwhile is kept
    given: dict[str, Any] = {"task": task, "level": level}
    settings = dataclasses.replace(settings, **{k: v for k, v in given.items() if v is not None})
    payload = read_training_checkpoint(resume) if resume is not None else None
    if payload is not None:
        settings = settings.merged(payload["settings"])
        _check_steps_left(settings.steps, int(payload["step"]), str(resume))
    resolved = settings.resolved()
    data = CropDataset(
        source, resolved.crop, mode="random", seed=resolved.seed, level=resolved.level
    )
    if model_record(resolved.model).loss.needs_cloudmask and not data.has_cloudmask:
        raise SchemaError(f"{data.label}: the {resolved.model} loss needs a cloudmask")
    val_data = None
    if val is not None:
        val_data = CropDataset(val, resolved.crop, mode="center", level=resolved.level)
    identities = {
        "train": data.identity(),
        "val": None if val_data is None else val_data.identity(),
    }
    if payload is not None:
        check_same_data(str(resume), payload, identities)
    else:
        warn_unversioned(identities)
    with reproducible_cudnn(resolved.device):
        run = _Run(resolved, payload, identities, found)
        log.info("training %s", run.describe(data))
        losses, metrics = _loop(run, data, out, val_data, show_progress(progress))
        if not losses:  # nothing left to do: write the state reached (and validate it)
            metrics = run.checkpoint(out, val_data)
    return run, losses, metrics


@contextlib.contextmanager
def reproducible_cudnn(device: str) -> Iterator[None]:
    """cuDNN's deterministic algorithms, and no autotuning, while a run trains on a GPU
    (as the published ``seed_torch``); the process's own settings again afterwards, so
    that a decloud after training keeps the fastest algorithms. Nothing on a CPU."""
    if not device.startswith("cuda"):
        yield
        return
    cudnn = torch.backends.cudnn
    before = cudnn.benchmark, cudnn.deterministic
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = before


def _check_steps_left(steps: int, reached: int, resume: str) -> None:
    """Refuse to resume a checkpoint of step ``reached`` to fewer ``steps``: the run
    cannot go back, and its checkpoint would still hold step ``reached``."""
    if steps < reached:
        raise UsageError(
            f"{argument('steps', steps)} is below the step of {argument('resume', resume)}, "
            f"{reached}: there is nothing to go on with (ask for {reached} steps or more)"
        )


def _loop(
    run: _Run, data: CropDataset, out: Path, val_data: CropDataset | None, show: bool
) -> tuple[dict[int, float], dict[str, Any]]:
    """Steps ``run.step + 1 .. settings.steps``, with a checkpoint (and a validation)
    every ``checkpoint_every`` steps and at the end; the losses and the last metrics.

    A step is a batch drawn: one without data (see :func:`train_step`) changes no weight,
    yet counts, and the learning-rate schedule follows the count, so the schedule, the
    checkpoints and a resume depend on the step number alone."""
    settings = run.settings
    losses: dict[int, float] = {}
    metrics: dict[str, Any] = {}
    if run.step >= settings.steps:
        return losses, metrics
    weights = balanced_class_weights(data) if settings.class_weights == "balanced" else None
    loss_fn = loss_function(settings.model, weights)
    batches = loader(
        data,
        settings.batch_size,
        settings.num_workers,
        sampler=CountingSampler(run.next_sample),
        pin=run.device.startswith("cuda"),
    )
    with progress_bar(settings.steps, f"training {settings.model}", disable=not show) as bar:
        bar.update(run.step)
        for batch in batches:
            run.step += 1
            run.next_sample += len(batch["window"])
            losses[run.step] = _step(run, batch, loss_fn, out)
            if settings.steps_scheduler(run.step):
                _step_scheduler(run.scheduler)
            bar.set_postfix(
                loss=f"{losses[run.step]:.4f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2g}"
            )
            bar.update(1)
            if settings.checkpoints_at(run.step):
                metrics = run.checkpoint(out, val_data)
            if run.step >= settings.steps:
                break
    return losses, metrics


def _step(run: _Run, batch: Mapping[str, Tensor], loss_fn: LossFn, out: Path) -> float:
    """:func:`train_step` of ``run``; a loss that is not finite stops the run, naming the
    step and the checkpoint at ``out`` that is kept (none is written from this step)."""
    try:
        return train_step(
            run.model,
            batch,
            run.optimizer,
            loss_fn,
            device=run.device,
            amp=run.amp,
            scaler=run.scaler,
        )
    except UsageError as exc:
        kept = f"{out} keeps step {run.saved}" if run.saved else f"nothing was written to {out}"
        raise UsageError(f"step {run.step}: {exc}; {kept}") from exc


def _step_scheduler(scheduler: Any) -> None:
    """``scheduler.step()``; quiet when no optimiser step has been taken yet (the first
    batches had no data): the schedule follows the step count all the same."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        scheduler.step()
