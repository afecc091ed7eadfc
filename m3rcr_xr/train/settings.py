"""What a training run does: :class:`TrainSettings` as given (``None``: the published
default, or the checkpoint's value when resuming), resolved once into
:class:`ResolvedSettings`, where every field is concrete.

Examples
--------
>>> settings = TrainSettings("Align-CR", steps=30).resolved()
>>> settings.model, settings.batch_size, settings.crop, settings.lr_decay_start
('align_cr', 2, 160, 10)

A land-cover classifier (task ``"landcover"``): the level and the number of classes go
into its configuration, and so into the checkpoint.

>>> settings = TrainSettings("landcover_unet", steps=30, level=2).resolved()
>>> settings.task, settings.config["level"], settings.config["n_classes"]
('landcover', 2, 11)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from ..devices import REDUCED_PRECISIONS, resolve_device
from ..exceptions import UsageError, argument, check_integer, check_positive
from ..landcover import class_names
from ..models import TASKS, ModelSpec, check_config, model_record, model_spec
from ..models.interface import check_size
from .recipe import (
    DECAY_START_FRACTION,
    LR_STEP_FRACTION,
    PUBLISHED_CROP,
    PUBLISHED_LR,
    PUBLISHED_SEED,
    steps_scheduler,
)

#: fields that define the run: recorded in the checkpoint, kept from it when resuming
RUN_FIELDS = (
    "config",
    "batch_size",
    "crop",
    "lr",
    "lr_step",
    "lr_decay_start",
    "seed",
    "level",
    "class_weights",
)
#: the values of ``class_weights``: None (unset: "none", or the checkpoint's when
#: resuming), "none" (every class weighs 1) or "balanced"
CLASS_WEIGHTS = (None, "none", "balanced")


@dataclasses.dataclass
class TrainSettings:
    """What a training run does. ``None`` means the published default (or, when
    resuming, the checkpoint's value).

    Attributes
    ----------
    model
        ``"dsen2_cr"``, ``"glf_cr"`` or ``"align_cr"``; ``"landcover_unet"`` for the
        land-cover classifier.
    steps
        Optimiser steps in all (a resumed run goes on up to this many).
    config
        Architecture (``{"preset": "small"}``, ``{"n_feats": 32}``...), as for
        :func:`m3rcr_xr.models.build`.
    batch_size
        Crops per step (published: 1, Align-CR 2).
    crop
        Crop side (published: 160; the model's tile size where it has one).
    lr
        Learning rate (published: 1e-4).
    lr_step, lr_decay_start
        The rate halves after step ``lr_decay_start`` and every ``lr_step`` steps after
        (default: a third and a sixth of ``steps``).
    seed
        Seed of the initial weights, random crops and patch order (published: 7).
    checkpoint_every
        Write a checkpoint (and validate) every so many steps; None: only at the end.
    num_workers
        DataLoader worker processes (0: read in this process).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    amp
        Mixed precision on a GPU: ``"auto"`` (bf16 where the GPU computes it natively,
        compute capability 8 and up; else float32, as inference's ``precision="auto"``),
        ``"bf16"``, ``"fp16"`` or ``"off"``. Never used on the CPU.
    task
        ``"cloud_removal"`` (``cloudy`` and ``sar`` to ``cloudfree``) or ``"landcover"``
        (``cloudfree`` to the WorldCover classes of ``landcover``); None: the model's.
        Must be the model's task.
    level
        Land-cover task: the WorldCover level of the classes, 1 (seven groups; default)
        or 2 (eleven classes). Nodata and ignored classes are left out of the loss.
    class_weights
        Land-cover task: ``"none"`` (every class weighs 1 in the cross-entropy; the
        default) or ``"balanced"`` (``n_pixels / (n_classes * n_pixels_of_class)`` over
        the labelled pixels of the training data, as scikit-learn's
        ``class_weight="balanced"``). ``"none"`` suits any task; None is unset.
    """

    model: str
    steps: int
    config: dict[str, Any] | None = None
    batch_size: int | None = None
    crop: int | None = None
    lr: float | None = None
    lr_step: int | None = None
    lr_decay_start: int | None = None
    seed: int | None = None
    checkpoint_every: int | None = None
    num_workers: int = 0
    device: str = "auto"
    amp: str = "auto"
    task: str | None = None
    level: int | None = None
    class_weights: str | None = None

    #: fields that define the run: kept from the checkpoint when resuming
    RUN_FIELDS: ClassVar[tuple[str, ...]] = RUN_FIELDS

    #: the integer fields and their least value; ``lr`` is a finite number > 0
    MINIMA: ClassVar[tuple[tuple[str, int], ...]] = (
        ("steps", 1),
        ("batch_size", 1),
        ("crop", 1),
        ("lr_step", 1),
        ("lr_decay_start", 0),
        ("seed", 0),
        ("checkpoint_every", 1),
        ("num_workers", 0),
    )

    def check(self) -> None:
        """Raise :class:`UsageError` for a number that is set but out of range (or not an
        integer), named as the caller wrote it (``batch_size=0`` or ``--batch-size 0``)."""
        for name, minimum in self.MINIMA:
            if getattr(self, name) is not None:
                check_integer(name, getattr(self, name), minimum)
        if self.lr is not None:
            check_positive("lr", self.lr)
        if self.amp not in ("auto", "off", *REDUCED_PRECISIONS):
            raise UsageError(f"{argument('amp', self.amp)}: use auto, off, bf16 or fp16")
        if self.task is not None and self.task not in TASKS:
            raise UsageError(f"{argument('task', self.task)}: use {' or '.join(TASKS)}")
        if self.class_weights not in CLASS_WEIGHTS:
            raise UsageError(
                f"{argument('class_weights', self.class_weights)}: use 'balanced' or 'none'"
            )

    def _task_config(self, task: str, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with the land-cover level and number of classes; checks that the
        land-cover settings are not given to another task."""
        if task != "landcover":
            for name in ("level", "class_weights"):
                if getattr(self, name) not in (None, "none"):
                    raise UsageError(
                        f"{argument(name, getattr(self, name))}: for the landcover task "
                        f"only, not {task} ({self.model})"
                    )
            return config
        level = self.level if self.level is not None else config.get("level", 1)
        if config.get("level", level) != level:
            raise UsageError(
                f"{argument('level', level)} differs from the configuration's "
                f"level={config['level']}"
            )
        return {**config, "level": level, "n_classes": len(class_names(level))}

    def resolved(self) -> ResolvedSettings:
        """Every ``None`` replaced by its default, the device resolved; checked.

        Raises
        ------
        UsageError, ModelConfigError
            A setting out of range, an unknown model, a configuration the model refuses
            (checked on torch's ``meta`` device: nothing is allocated).
        """
        record = model_record(self.model)
        self.check()
        if self.task is not None and self.task != record.task:
            raise UsageError(
                f"{argument('task', self.task)}: {record.name} is a {record.task} model"
            )
        config = self._task_config(record.task, dict(self.config or {}))
        lr_step = self.lr_step or max(1, round(self.steps * LR_STEP_FRACTION))
        decay_start = self.lr_decay_start
        if decay_start is None:
            decay_start = max(1, round(self.steps * DECAY_START_FRACTION))
        check_config(record.name, config)  # with a crop too: before any data are opened
        spec = model_spec(record.name, **config)
        crop = int(self.crop or spec.tile_size or PUBLISHED_CROP)
        batch_size = int(self.batch_size or record.published_batch_size)
        _check_crop(spec, config, crop)
        _check_batch_norm(spec, batch_size, crop)
        return ResolvedSettings(
            model=record.name,
            steps=int(self.steps),
            config=config,
            batch_size=batch_size,
            crop=crop,
            lr=PUBLISHED_LR if self.lr is None else float(self.lr),
            lr_step=int(lr_step),
            lr_decay_start=int(decay_start),
            seed=PUBLISHED_SEED if self.seed is None else int(self.seed),
            checkpoint_every=self.checkpoint_every,
            num_workers=int(self.num_workers),
            device=resolve_device(self.device),
            amp=self.amp,
            task=record.task,
            level=config.get("level") if record.task == "landcover" else None,
            class_weights="balanced" if self.class_weights == "balanced" else None,
        )

    def run_fields(self) -> dict[str, Any]:
        """The fields that define the run, for the checkpoint."""
        return _run_fields(self)

    def merged(self, saved: Mapping[str, Any]) -> TrainSettings:
        """Fill unset run fields from a checkpoint's; raise where they disagree.

        Raises
        ------
        UsageError
            A field set to another value than the checkpoint's, named as the caller
            wrote it (``level=2``; ``--level 2`` on the command line).
        """
        if model_record(self.model).name != saved.get("model"):
            raise UsageError(
                f"{argument('model', self.model)} does not match the checkpoint's "
                f"{saved.get('model')!r}"
            )
        task = model_record(self.model).task
        level = self.level if self.level is not None else saved.get("level")
        updates: dict[str, Any] = {}
        for name in self.RUN_FIELDS:
            given, theirs = getattr(self, name), saved.get(name)
            if given is None or (name == "config" and not given):
                updates[name] = theirs
                continue
            mine = given
            if name == "config":  # as resolved: with the level and classes it adds
                mine = dataclasses.replace(self, level=level)._task_config(task, dict(mine))
            elif name == "class_weights":  # a checkpoint records "none" as None
                mine = None if given == "none" else given
            if _normalised(mine) != _normalised(theirs):
                raise UsageError(
                    f"{argument(name, given)} differs from the checkpoint's {theirs!r}; "
                    "leave it out to resume the same run"
                )
        return dataclasses.replace(self, **updates)


def _check_crop(spec: ModelSpec, config: Mapping[str, Any], crop: int) -> None:
    """Refuse a ``crop`` that the model of ``spec``, built with ``config``, cannot take
    (a GLF-CR is built for one tile size), before any data are opened, naming the
    settings that would do.

    Raises
    ------
    ModelConfigError
        Naming ``crop`` and the ``config`` with ``input_size`` for it.
    """
    check_size(
        spec,
        crop,
        f"use {argument('crop', spec.tile_size)} or build it with "
        f"{argument('config', {**config, 'input_size': crop})}",
    )


def _check_batch_norm(spec: ModelSpec, batch_size: int, crop: int) -> None:
    """Refuse a batch of one crop that the land-cover U-Net pools down to one pixel: the
    batch norm of its bottom, in training, needs more than one value per channel.

    Raises
    ------
    UsageError
        Naming ``crop`` and ``batch_size`` and what would do.
    """
    depth = spec.config.get("depth") if spec.task == "landcover" else None
    if depth is None or batch_size > 1 or crop >= 2 ** (depth + 1):
        return
    raise UsageError(
        f"{argument('crop', crop)} with {argument('batch_size', batch_size)}: {spec.name} "
        f"of depth {depth} pools each crop to {crop >> depth}x{crop >> depth} "
        "pixels, and its batch norm needs more than one value per channel in training; "
        f"use {argument('batch_size')} 2 or more, or {argument('crop')} {2 ** (depth + 1)} or more"
    )


def _normalised(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _run_fields(settings: TrainSettings | ResolvedSettings) -> dict[str, Any]:
    task = model_record(settings.model).task
    return {"model": settings.model, "task": task, **{f: getattr(settings, f) for f in RUN_FIELDS}}


@dataclasses.dataclass(frozen=True)
class ResolvedSettings:
    """A run's settings with every default filled in (:meth:`TrainSettings.resolved`).

    The fields of :class:`TrainSettings`, each concrete: ``model`` is the registry name,
    ``config`` a dict, ``crop`` the crop side (the model's tile size where it has one),
    ``device`` the device itself (``"auto"`` resolved); ``checkpoint_every`` None still
    means a checkpoint at the end only; ``task`` the model's; ``level`` the land-cover
    level (None for cloud removal), also in ``config`` with ``n_classes``.
    """

    model: str
    steps: int
    config: dict[str, Any]
    batch_size: int
    crop: int
    lr: float
    lr_step: int
    lr_decay_start: int
    seed: int
    checkpoint_every: int | None
    num_workers: int
    device: str
    amp: str
    task: str = "cloud_removal"
    level: int | None = None
    class_weights: str | None = None

    def run_fields(self) -> dict[str, Any]:
        """The fields that define the run, for the checkpoint."""
        return _run_fields(self)

    def steps_scheduler(self, step: int) -> bool:
        """Whether the learning-rate scheduler steps after optimiser step ``step``."""
        return steps_scheduler(step, self.lr_decay_start, self.lr_step)

    def checkpoints_at(self, step: int) -> bool:
        """Whether a checkpoint (and a validation) follows optimiser step ``step``."""
        every = self.checkpoint_every
        return step >= self.steps or bool(every and step % every == 0)
