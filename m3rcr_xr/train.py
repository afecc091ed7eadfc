"""Train the M3R-CR networks on Zarr stores, with the published recipe, resumably.

Data
----
:class:`CropDataset` serves crops of a scene or collection store (or of an xarray
Dataset): random crops for training, the published centre crop for validation (rows and
columns ``(H - T) // 2 ..`` of each patch: 70..229 for a 160 crop of a 300x300 patch).
It reads only the chunks a crop touches, opens the store lazily in each process (so it
pickles and works with ``DataLoader(num_workers > 0)``) and returns the tensors the
networks take, normalised by :mod:`m3rcr_xr.normalize` exactly as decloud does.

Every random choice of the data is a pure function of the seed and the sample number
(epoch permutations of the patches, crop offsets), so the data of step ``n`` is known
without replaying steps ``1 .. n-1``: the sampler's state is one counter.

Recipe (``zhu-xlab/M3R-CR``: ``Align-CR/model_CR_net.py``, ``Align-CR/train_CR_net.py``,
``baselines/{DSen2-CR,GLF-CR}/{model_CR_net,train_CR_net}.py``)
-----------------------------------------------------------------------------------
- losses: CARL (DSen2-CR), EC-Charbonnier (Align-CR), L1 (GLF-CR);
- Adam (default betas (0.9, 0.999)), learning rate 1e-4; Align-CR's alignment modules
  (``SFAlign``) at 0.1 x the learning rate;
- StepLR with gamma 0.5: the published loop steps it once per epoch from epoch
  ``lr_start_epoch_decay - lr_step`` (10 - 5) on, so the rate halves after epoch 10 and
  every 5 epochs after, over 30 epochs. Here one optimiser step plays the part of an epoch:
  the rate halves after step ``lr_decay_start`` and every ``lr_step`` steps after (defaults:
  a third and a sixth of the run, the published proportions);
- crops of 160 (the published ``crop_size``; the model's tile size where it has one),
  batch size 1 (DSen2-CR, GLF-CR) or 2 (Align-CR), seed 7.

Checkpoints follow the published layout (``network``: the state dict with ``module.``
keys, ``optimizer``, ``scheduler``), plus ``step``, the random states (torch, NumPy,
Python), the sampler position and the run's settings: a run resumed from one continues
exactly as the uninterrupted run would (bit for bit on the CPU). They are written with
``torch.save`` and read back with ``torch.load(weights_only=True)``; the weights load
with :func:`m3rcr_xr.models.load`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import random
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, Dataset, Sampler

from .exceptions import (
    CheckpointError,
    SchemaError,
    UsageError,
    argument,
    check_integer,
    check_positive,
)
from .inference import model_inputs, resolve_device
from .metrics import evaluate_per_patch, mean_over_patches
from .models import (
    RECORDS,
    build,
    check_tile,
    extract_state_dict,
    load_state_dict_into,
    model_record,
)
from .models.checkpoint import read_checkpoint
from .models.records import LossFn
from .normalize import denormalize_optical, normalize_optical
from .options import OPTIONS
from .progress import progress_bar
from .schema import is_collection
from .store import open_zarr

__all__ = [
    "PUBLISHED",
    "CropDataset",
    "TrainResult",
    "TrainSettings",
    "autocast_dtype",
    "export_weights",
    "loss_function",
    "make_optimizer",
    "make_scheduler",
    "read_training_checkpoint",
    "train",
    "train_step",
    "validate_model",
]

log = logging.getLogger(__name__)

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
#: variables a crop reads; cloudmask is optional
CROP_VARS = ("cloudy", "cloudfree", "sar", "cloudmask")
BATCH_KEYS = ("cloudy", "sar", "target", "cloudmask")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
METRIC_NAMES = ("PSNR", "SSIM", "SAM", "MAE")
#: what a checkpoint holds to resume a run
CHECKPOINT_KEYS = ("network", "optimizer", "scheduler", "step", "rng", "sampler", "settings")
#: crops per forward pass in validation
VAL_BATCH = 8

Source = str | os.PathLike[str] | xr.Dataset


# ============================================================================= data
@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where crops can come from: ``n_patches`` patches of ``height x width`` (a scene
    counts as a grid of ``tile``-sized windows)."""

    collection: bool
    n_patches: int
    height: int
    width: int


def _synchronous() -> contextlib.AbstractContextManager:
    """Dask computes in the calling thread: a DataLoader worker forked from a process
    that used dask's threaded scheduler inherits its thread pool without the threads,
    and would wait on it for ever."""
    return dask.config.set(scheduler="synchronous")


@functools.lru_cache(maxsize=8)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, 0, epoch]).permutation(n)


class CropDataset(Dataset):
    """Crops of a scene or collection store as normalised tensors.

    Parameters
    ----------
    source
        A Zarr store written by :func:`m3rcr_xr.to_zarr` (path or fsspec URL), opened
        lazily in each process that reads it, or an xarray Dataset (lazy or in memory).
        It needs ``cloudy``, ``cloudfree`` and ``sar``; ``cloudmask`` is optional (zeros
        without it).
    tile
        Crop side in pixels.
    mode
        ``"random"``: item ``n`` is sample number ``n`` of an endless stream: epoch
        ``n // len(self)`` visits the patches in a seeded random order, each at a random
        offset (for a scene: anywhere in it); any ``n >= 0`` is valid. ``"center"``: item
        ``i`` is the centre crop of patch ``i`` (offset ``(H - tile) // 2``; for a scene,
        window ``i`` of a grid of ``tile``-sized windows).
    seed
        Seed of the random crops.

    Examples
    --------
    >>> import m3rcr_xr
    >>> data = CropDataset(m3rcr_xr.synthetic_collection(2, 300), 160, mode="center")
    >>> data.window(0)
    (0, 70, 70)
    >>> sorted(data[0])
    ['cloudmask', 'cloudy', 'sar', 'target', 'window']
    """

    def __init__(self, source: Source, tile: int, *, mode: str = "random", seed: int = 0) -> None:
        if mode == "centre":  # the British spelling of earlier releases
            warnings.warn("mode='centre' is deprecated; use 'center'", DeprecationWarning, 2)
            mode = "center"
        if mode not in ("random", "center"):
            raise UsageError(f"{argument('mode', mode)}: must be 'random' or 'center'")
        if int(tile) < 1 or int(seed) < 0:
            raise UsageError(f"need tile >= 1 and seed >= 0, got tile={tile}, seed={seed}")
        self.tile, self.mode, self.seed = int(tile), mode, int(seed)
        self._path = None if isinstance(source, xr.Dataset) else str(source)
        self._ds: xr.Dataset | None = source if isinstance(source, xr.Dataset) else None
        self._pid = os.getpid()
        self.layout = self._check(self._dataset())

    # ------------------------------------------------------------------ opening
    def _dataset(self) -> xr.Dataset:
        """The data, opened in this process on first use (never shared across a fork)."""
        if self._path is not None and (self._ds is None or self._pid != os.getpid()):
            with _synchronous():
                self._ds = open_zarr(self._path)
            self._pid = os.getpid()
        assert self._ds is not None
        return self._ds

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._path is not None:
            state["_ds"] = None  # each process opens the store itself
        return state

    def _check(self, ds: xr.Dataset) -> _Layout:
        missing = [v for v in CROP_VARS[:3] if v not in ds.data_vars]
        if missing:
            raise SchemaError(
                f"{self.label}: training needs {', '.join(missing)} "
                f"(have {', '.join(map(str, ds.data_vars))})"
            )
        height, width = int(ds.sizes["y"]), int(ds.sizes["x"])
        if height < self.tile or width < self.tile:
            raise SchemaError(
                f"{self.label}: patches of {height}x{width} pixels are "
                f"smaller than the crop of {self.tile}"
            )
        if is_collection(ds):
            return _Layout(True, int(ds.sizes["patch"]), height, width)
        return _Layout(False, (height // self.tile) * (width // self.tile), height, width)

    @property
    def label(self) -> str:
        """The store's path, or "dataset" for an xarray Dataset (for messages)."""
        return self._path or "dataset"

    @property
    def has_cloudmask(self) -> bool:
        """Whether the data carries a cloud mask (else crops get an all-zero mask)."""
        return "cloudmask" in self._dataset().data_vars

    # ------------------------------------------------------------------ windows
    def __len__(self) -> int:
        """Patches (or scene windows): one epoch of random crops, or the centre crops."""
        return self.layout.n_patches

    def window(self, index: int) -> tuple[int | None, int, int]:
        """(patch or None for a scene, first row, first column) of item ``index``."""
        index = int(index)
        n, tile = self.layout.n_patches, self.tile
        if index < 0 or (self.mode == "center" and index >= n):
            raise IndexError(f"item {index} out of range for {self.mode} crops of {n}")
        if self.mode == "center":
            return self._centre_window(index)
        rng = np.random.default_rng([self.seed, 1, index])
        y0 = int(rng.integers(0, self.layout.height - tile + 1))
        x0 = int(rng.integers(0, self.layout.width - tile + 1))
        if not self.layout.collection:
            return None, y0, x0
        epoch, position = divmod(index, n)
        return int(_permutation(self.seed, epoch, n)[position]), y0, x0

    def _centre_window(self, index: int) -> tuple[int | None, int, int]:
        tile, layout = self.tile, self.layout
        if layout.collection:
            return index, (layout.height - tile) // 2, (layout.width - tile) // 2
        row, col = divmod(index, layout.width // tile)
        return None, row * tile, col * tile

    # ------------------------------------------------------------------ reading
    def read(self, index: int) -> xr.Dataset:
        """The crop of item ``index`` as an in-memory xarray Dataset (raw units)."""
        patch, y0, x0 = self.window(index)
        ds = self._dataset()
        names = [v for v in CROP_VARS if v in ds.data_vars]
        where: dict[str, Any] = {"y": slice(y0, y0 + self.tile), "x": slice(x0, x0 + self.tile)}
        if patch is not None:
            where["patch"] = patch
        with _synchronous():
            return ds[names].isel(where).compute()

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        crop = self.read(index)
        inputs = model_inputs(crop).values
        target = normalize_optical(crop["cloudfree"].values.astype(np.float32))
        if "cloudmask" in crop:
            mask = crop["cloudmask"].values.astype(np.float32)
        else:
            mask = np.zeros((self.tile, self.tile), dtype=np.float32)
        patch, y0, x0 = self.window(index)
        n_optical = crop.sizes["band"]
        return {
            "cloudy": torch.from_numpy(np.ascontiguousarray(inputs[:n_optical])),
            "sar": torch.from_numpy(np.ascontiguousarray(inputs[n_optical:])),
            "target": torch.from_numpy(target),
            "cloudmask": torch.from_numpy(mask),
            "window": torch.tensor([-1 if patch is None else patch, y0, x0]),
        }


class _CountingSampler(Sampler[int]):
    """Sample numbers ``start, start + 1, ...`` without end: the data order of a run,
    whose whole state is ``start``."""

    def __init__(self, start: int = 0) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        index = self.start
        while True:
            yield index
            index += 1


# ============================================================================ recipe
@dataclasses.dataclass
class TrainSettings:
    """What a training run does. ``None`` means the published default (or, when
    resuming, the checkpoint's value).

    Attributes
    ----------
    model
        ``"dsen2_cr"``, ``"glf_cr"`` or ``"align_cr"``.
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
        Mixed precision on a GPU: ``"auto"`` (bf16 where supported, else fp16), ``"bf16"``,
        ``"fp16"`` or ``"off"``. Never used on the CPU.
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

    #: fields that define the run: kept from the checkpoint when resuming
    RUN_FIELDS = ("config", "batch_size", "crop", "lr", "lr_step", "lr_decay_start", "seed")

    #: the integer fields and their least value; ``lr`` is a finite number > 0
    MINIMA = (
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
        if self.amp not in ("auto", "off", *AMP_DTYPES):
            raise UsageError(f"{argument('amp', self.amp)}: use auto, off, bf16 or fp16")

    def resolved(self) -> TrainSettings:
        """A copy with every ``None`` run field replaced by its default; checked."""
        record = model_record(self.model)
        self.check()
        lr_step = self.lr_step or max(1, round(self.steps * LR_STEP_FRACTION))
        decay_start = self.lr_decay_start
        if decay_start is None:
            decay_start = max(1, round(self.steps * DECAY_START_FRACTION))
        return dataclasses.replace(
            self,
            model=record.name,
            config=dict(self.config or {}),
            batch_size=self.batch_size or record.published_batch_size,
            lr=PUBLISHED_LR if self.lr is None else float(self.lr),
            lr_step=int(lr_step),
            lr_decay_start=int(decay_start),
            seed=PUBLISHED_SEED if self.seed is None else int(self.seed),
        )

    def run_fields(self) -> dict[str, Any]:
        """The fields that define the run, for the checkpoint."""
        return {"model": self.model, **{f: getattr(self, f) for f in self.RUN_FIELDS}}

    def merged(self, saved: Mapping[str, Any]) -> TrainSettings:
        """Fill unset run fields from a checkpoint's; raise where they disagree."""
        if model_record(self.model).name != saved.get("model"):
            raise UsageError(
                f"--model {self.model} does not match the checkpoint's {saved.get('model')!r}"
            )
        updates: dict[str, Any] = {}
        for name in self.RUN_FIELDS:
            mine, theirs = getattr(self, name), saved.get(name)
            if mine is None or (name == "config" and not mine):
                updates[name] = theirs
            elif _normalised(mine) != _normalised(theirs):
                raise UsageError(
                    f"{name}={mine!r} differs from the checkpoint's {theirs!r}; "
                    "leave it out to resume the same run"
                )
        return dataclasses.replace(self, **updates)


def _normalised(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def loss_function(model: str) -> LossFn:
    """The published loss of ``model`` as ``loss(pred, target, cloudy, cloudmask)``."""
    return model_record(model).loss.function


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam at ``lr``, with the learning-rate groups of the model's record (Align-CR's
    ``SFAlign`` parameters at ``0.1 * lr``, as published); one group for a network
    that is not one of the package's."""
    record = RECORDS.get(str(getattr(model, "name", "")))
    if record is None:
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.Adam(record.param_groups(model, lr))


def make_scheduler(optimizer: torch.optim.Optimizer, lr_step: int) -> StepLR:
    """StepLR halving the rate every ``lr_step`` scheduler steps (published gamma 0.5)."""
    return StepLR(optimizer, step_size=lr_step, gamma=LR_GAMMA)


def _steps_scheduler(step: int, settings: TrainSettings) -> bool:
    """Whether the scheduler steps after optimiser step ``step`` (1-based): as the
    published loop after epoch ``step - 1`` (``epoch >= start - lr_step``)."""
    assert settings.lr_decay_start is not None and settings.lr_step is not None
    return step - 1 >= settings.lr_decay_start - settings.lr_step


def _cuda_bf16_supported() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def autocast_dtype(device: str, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype on ``device``: None on the CPU (and with ``amp="off"``).

    Raises
    ------
    UsageError
        ``amp`` names a dtype but the device is not a GPU.
    """
    if amp == "off":
        return None
    if not str(device).startswith("cuda"):
        if amp != "auto":
            raise UsageError(
                f"amp={amp!r}: mixed precision runs on a CUDA GPU only, not on {device}"
            )
        return None
    if amp == "auto":
        return torch.bfloat16 if _cuda_bf16_supported() else torch.float16
    return AMP_DTYPES[amp]


def _grad_scaler() -> Any:
    """A CUDA gradient scaler for fp16 (``torch.amp`` from torch 2.3, ``torch.cuda.amp``
    before)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()  # pragma: no cover - torch < 2.3


def _autocast(device: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


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

    The forward pass runs under autocast when ``amp`` is a dtype (GPU only); the loss is
    computed in float32. ``scaler`` (a ``torch.amp.GradScaler``) scales fp16 gradients.
    """
    cloudy, sar, target, mask = (batch[k].to(device, non_blocking=True) for k in BATCH_KEYS)
    with _autocast(device, amp):
        pred = model(cloudy, sar)
    loss = loss_fn(pred.float(), target, cloudy, mask)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return float(loss.detach())


# ======================================================================== validation
def _loader(
    data: Dataset,
    batch_size: int,
    num_workers: int,
    sampler: Sampler | None = None,
    pin: bool = False,
) -> DataLoader:
    # an own generator: creating the loader never draws from the global torch RNG
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin,
        generator=torch.Generator(),
    )


def _per_patch_table(pred: Tensor, batch: Mapping[str, Tensor], masked: bool) -> xr.Dataset:
    dims = ("patch", "band", "y", "x")
    as_reflectance = functools.partial(_reflectance, dims=dims)
    cloudmask = xr.DataArray(batch["cloudmask"].numpy() > 0.5, dims=("patch", "y", "x"))
    return evaluate_per_patch(
        None,
        as_reflectance(pred),
        as_reflectance(batch["target"]),
        landcover=None,
        cloudmask=cloudmask if masked else None,
        level=None,
        strata=("all", "cloudy", "clear") if masked else ("all",),
    )


def _reflectance(values: Tensor, dims: tuple[str, ...]) -> xr.DataArray:
    return xr.DataArray(denormalize_optical(values.float().cpu().numpy()), dims=dims)


def _summary(tables: list[xr.Dataset]) -> dict[str, dict[str, float]]:
    table = xr.concat(tables, dim="patch")
    summary = mean_over_patches(table).sel(landcover_class="all")
    return {
        str(stratum): {
            name: float(summary[name].sel(stratum=stratum)) for name in (*METRIC_NAMES, "n_patches")
        }
        for stratum in summary["stratum"].values
    }


@torch.no_grad()
def validate_model(
    model: nn.Module,
    data: CropDataset,
    *,
    batch_size: int = 8,
    device: str = "cpu",
    amp: torch.dtype | None = None,
    num_workers: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """PSNR, SSIM, SAM and MAE of ``model`` on ``data``'s crops, and of the cloudy input.

    The metrics are those of :func:`m3rcr_xr.metrics.evaluate` per crop, averaged over
    the crops (its ``per_patch`` protocol, as the published validation averages per-batch
    scores), for the strata all, cloudy and clear (all only without a cloud mask).

    Returns
    -------
    dict
        ``{"model": {stratum: {metric: value}}, "input": {...}}``; ``n_patches`` counts the
        crops a stratum's means are over.
    """
    was_training = model.training
    model.eval()
    masked = data.has_cloudmask
    tables: dict[str, list[xr.Dataset]] = {"model": [], "input": []}
    try:
        for batch in _loader(data, batch_size, num_workers):
            with _autocast(device, amp):
                pred = model(batch["cloudy"].to(device), batch["sar"].to(device))
            tables["model"].append(_per_patch_table(pred, batch, masked))
            tables["input"].append(_per_patch_table(batch["cloudy"], batch, masked))
    finally:
        model.train(was_training)
    return {name: _summary(parts) for name, parts in tables.items()}


def _format_metrics(result: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    model, base = result["model"]["all"], result["input"]["all"]
    return ", ".join(f"{m} {model[m]:.4g} (input {base[m]:.4g})" for m in METRIC_NAMES)


# ======================================================================= checkpoints
def _rng_state() -> dict[str, Any]:
    """The torch, NumPy and Python random states, as tensors and plain containers."""
    np_state: Any = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    py_state = state["python"]
    random.setstate(
        (py_state["version"], tuple(int(v) for v in py_state["state"].tolist()), py_state["gauss"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _save(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def _payload(
    step: int,
    next_sample: int,
    settings: TrainSettings,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    metrics: Mapping[str, Any] | None,
) -> dict[str, Any]:
    record = model_record(settings.model)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {
        record.checkpoint_key: record.published_state(weights),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "rng": _rng_state(),
        "sampler": {"next": next_sample, "seed": settings.seed},
        "settings": settings.run_fields(),
    }
    if scaler is not None:
        payload["scaler"] = scaler.state_dict()
    if metrics:
        payload["metrics"] = json.loads(json.dumps(metrics))  # plain floats and strings
    return payload


def read_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint written by :func:`train`, read with ``torch.load(weights_only=True)``.

    Raises
    ------
    CheckpointError
        Unreadable or unsafe file, or one without the training state (optimizer,
        scheduler, step, random states, settings) needed to resume.
    """
    payload = read_checkpoint(path)
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise CheckpointError(
            f"{path}: not a training checkpoint of m3rcr_xr (no "
            f"{', '.join(missing)}); it cannot be resumed"
        )
    return payload


def export_weights(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write a training checkpoint's weights as safetensors, with the model name and its
    configuration in the file's metadata (keys ``model``, ``config`` as JSON, ``step``)."""
    from safetensors.torch import save_file

    payload = read_training_checkpoint(checkpoint)
    state = {k: v.contiguous() for k, v in extract_state_dict(payload).items()}
    settings = payload["settings"]
    metadata = {
        "model": str(settings["model"]),
        "config": json.dumps(settings["config"]),
        "step": str(payload["step"]),
        "format": "m3rcr_xr",
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=metadata)
    return out


# ========================================================================== training
@dataclasses.dataclass
class TrainResult:
    """What :func:`train` did: the checkpoint, the loss of every step it ran, the last
    validation (see :func:`validate_model`; empty without validation data), its wall time."""

    checkpoint: Path
    settings: TrainSettings
    losses: dict[int, float]
    metrics: dict[str, Any]
    wall_s: float


class _Run:
    """The state of one training run: model, optimiser, scheduler, scaler, device."""

    def __init__(self, settings: TrainSettings, resume: Mapping[str, Any] | None) -> None:
        assert settings.seed is not None and settings.lr is not None
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.amp = autocast_dtype(self.device, settings.amp)
        if self.device.startswith("cuda"):  # as the published seed_torch: reproducible
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        _seed_everything(settings.seed)
        self.model = build(settings.model, **(settings.config or {})).to(self.device).train()
        self.tile = settings.crop or self.model.tile_size or PUBLISHED_CROP
        check_tile(self.model, self.tile)
        assert settings.lr_step is not None
        self.optimizer = make_optimizer(self.model, settings.lr)
        self.scheduler = make_scheduler(self.optimizer, settings.lr_step)
        self.scaler = _grad_scaler() if self.amp == torch.float16 else None
        self.step = 0
        self.next_sample = 0  # the sampler's state: sample number of the next crop
        if resume is not None:
            self._restore(resume)

    def _restore(self, payload: Mapping[str, Any]) -> None:
        load_state_dict_into(self.model, extract_state_dict(payload))
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler is not None and "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        _set_rng_state(payload["rng"])  # last: building the model drew from the RNG
        self.step = int(payload["step"])
        self.next_sample = int(payload["sampler"]["next"])

    def save(self, path: Path, metrics: Mapping[str, Any] | None) -> None:
        _save(
            path,
            _payload(
                self.step,
                self.next_sample,
                self.settings,
                self.model,
                self.optimizer,
                self.scheduler,
                self.scaler,
                metrics,
            ),
        )
        log.info("step %d: wrote %s", self.step, path)

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
            "step %d: validation on %d crops: %s", self.step, len(data), _format_metrics(result)
        )
        return result


def _describe(run: _Run, data: CropDataset) -> str:
    s = run.settings
    n_params = sum(p.numel() for p in run.model.parameters())
    return (
        f"{s.model} {s.config or {}} ({n_params:,} parameters) on {run.device}"
        f"{'' if run.amp is None else f' with {run.amp} autocast'}: {s.steps} steps of "
        f"{s.batch_size} crops of {run.tile} from {len(data)} patches, lr {s.lr:g} "
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
) -> TrainResult:
    """Train a network on a scene or collection store with the published recipe.

    Parameters
    ----------
    source
        Training data: a store written by :func:`m3rcr_xr.to_zarr` or an xarray Dataset
        with ``cloudy``, ``cloudfree``, ``sar`` (and ``cloudmask`` for DSen2-CR and
        Align-CR, whose losses use it).
    out
        Checkpoint path, written every ``settings.checkpoint_every`` steps and at the end.
    settings
        See :class:`TrainSettings`.
    val
        Validation data (centre crops), checked at each checkpoint and at the end.
    resume
        A checkpoint of this function to continue from; unset run fields of ``settings``
        are taken from it, and the run goes on exactly as if it had not stopped.
    progress
        Show a progress bar with the loss; default: the ``progress`` option.

    Raises
    ------
    UsageError, SchemaError, ModelConfigError, CheckpointError
        Bad settings, data without the variables needed, a crop the model cannot take, a
        checkpoint that cannot be resumed or does not match ``settings``.
    """
    start_time = time.perf_counter()
    payload = read_training_checkpoint(resume) if resume is not None else None
    if payload is not None:
        settings = settings.merged(payload["settings"])
    settings = settings.resolved()
    run = _Run(settings, payload)
    data = CropDataset(source, run.tile, mode="random", seed=settings.seed or 0)
    if model_record(settings.model).loss.needs_cloudmask and not data.has_cloudmask:
        raise SchemaError(f"{data.label}: the {settings.model} loss needs a cloudmask")
    val_data = None if val is None else CropDataset(val, run.tile, mode="center")
    log.info("training %s", _describe(run, data))
    out = Path(out)
    losses, metrics = _loop(run, data, out, val_data, progress)
    if not losses:  # nothing left to do: write the state reached (and validate it)
        metrics = run.validate(val_data)
        run.save(out, metrics)
    return TrainResult(out, settings, losses, metrics, time.perf_counter() - start_time)


def _loop(
    run: _Run, data: CropDataset, out: Path, val_data: CropDataset | None, progress: bool | None
) -> tuple[dict[int, float], dict[str, Any]]:
    """Steps ``run.step + 1 .. settings.steps``, with a checkpoint (and a validation)
    every ``checkpoint_every`` steps and at the end; the losses and the last metrics."""
    settings = run.settings
    assert settings.batch_size is not None
    losses: dict[int, float] = {}
    metrics: dict[str, Any] = {}
    if run.step >= settings.steps:
        return losses, metrics
    loss_fn = loss_function(settings.model)
    loader = _loader(
        data,
        settings.batch_size,
        settings.num_workers,
        sampler=_CountingSampler(run.next_sample),
        pin=run.device.startswith("cuda"),
    )
    show = OPTIONS["progress"] if progress is None else progress
    with progress_bar(settings.steps, f"training {settings.model}", disable=not show) as bar:
        bar.update(run.step)
        for batch in loader:
            run.step += 1
            run.next_sample += len(batch["window"])
            losses[run.step] = train_step(
                run.model,
                batch,
                run.optimizer,
                loss_fn,
                device=run.device,
                amp=run.amp,
                scaler=run.scaler,
            )
            if _steps_scheduler(run.step, settings):
                run.scheduler.step()
            bar.set_postfix(
                loss=f"{losses[run.step]:.4f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2g}"
            )
            bar.update(1)
            last = run.step >= settings.steps
            if last or (settings.checkpoint_every and run.step % settings.checkpoint_every == 0):
                metrics = run.validate(val_data)
                run.save(out, metrics)
            if last:
                break
    return losses, metrics
