"""Run tiles through a network on a device, in whatever process a task lands.

The model travels in the task graph as a :class:`ModelRef` (name, configuration, where
its weights come from and their content hash, never the weights): each worker process
fetches the weights itself (:func:`m3rcr_xr.weights.fetch`), builds the model once and
keeps it (:func:`cached_model`). :func:`run_tiles` runs a stack of normalised tiles
through it in batches and counts them (:func:`tile_counts`).

On a GPU (safe by default, and fast)
    Each worker process runs the GPU work of one tile task at a time per device (a
    process-wide lock per device, :func:`device_lock`), whatever its thread count, so
    that tasks never contend for the device's memory; its other threads meanwhile
    read, crop, blend and write. A task stages its tiles in page-locked host memory
    before it takes the lock, then queues the uploads on a side stream and the forward
    passes and downloads on the compute stream, and lets go of the lock before they
    finish: the next task queues its own work behind them, so that the device need not
    wait for the host between tasks. Each batch replays a CUDA graph of the forward
    pass (:mod:`m3rcr_xr.cuda_graphs`): one launch instead of thousands. At most
    :data:`TILE_TASKS_PER_DEVICE` tile tasks of a process do their host work for one
    GPU at once (:func:`tile_task_slot`), so that the threads that crop and blend leave
    the interpreter to the one that launches the forward passes.

On the CPU
    Tile tasks run side by side, each with its share of torch's threads
    (:func:`m3rcr_xr.threads.tile_threads`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import cuda_graphs
from .cuda_graphs import GraphKey, graphed_forward
from .devices import (
    REDUCED_PRECISIONS,
    _device_name,
    autocast_dtype,
    resolve_device,
    side_stream,
)
from .exceptions import CheckpointError, UsageError, argument
from .threads import tile_threads, torch_threads
from .weights import UNTRAINED
from .weights import resolve as resolve_weights
from .weights.resolve import fetch_first

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ model
#: how the tile forwards run on a CUDA GPU (see :func:`m3rcr_xr.decloud`); a CPU runs float32
PRECISIONS = ("fp32", *REDUCED_PRECISIONS, "auto")
DEFAULT_PRECISION = "fp32"


def check_precision(precision: str, device: str) -> None:
    """Refuse an unknown precision, or a reduced one on a device that is not a GPU.

    Raises
    ------
    UsageError
        Naming the argument as the caller wrote it.
    """
    if precision not in PRECISIONS:
        raise UsageError(
            f"{argument('precision', precision)}: must be one of {', '.join(PRECISIONS)}"
        )
    if precision in REDUCED_PRECISIONS and not device.startswith(("auto", "cuda")):
        raise UsageError(
            f"{argument('precision', precision)} runs on a CUDA GPU only, not with "
            f"{argument('device', device)}: the CPU runs float32"
        )


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to build and run the model: small, hashable and picklable.

    The weights never enter the task graph: ``sources`` says where to get them (a
    registered name then its URLs, a URL, or a path) and ``sha256`` what they must be;
    each worker process fetches them itself (:func:`m3rcr_xr.weights.fetch`, into its own
    cache), checks the hash, builds the model once and keeps it in a cache.
    ``checkpoint`` is the file on the client (checked there on the meta device), and
    ``weights`` says how the user asked for it. ``device`` and ``precision`` say how the
    worker runs it.
    """

    name: str
    config: tuple[tuple[str, Any], ...] = ()
    checkpoint: str | None = None
    sha256: str | None = None
    device: str = "auto"
    precision: str = DEFAULT_PRECISION
    sources: tuple[str, ...] = ()
    weights: str = UNTRAINED

    @classmethod
    def create(
        cls,
        name: str | None,
        checkpoint: str | os.PathLike | None = None,
        config: Mapping[str, Any] | None = None,
        device: str = "auto",
        precision: str = DEFAULT_PRECISION,
    ) -> ModelRef:
        """Resolve ``checkpoint`` (:func:`m3rcr_xr.weights.resolve`) on the client.

        ``name`` None takes the registered entry's model.
        """
        check_precision(precision, device)
        found = resolve_weights(name, checkpoint, config)
        return cls(
            name=found.model,
            config=tuple(sorted(found.config.items())),
            checkpoint=None if found.path is None else str(found.path),
            sha256=found.sha256,
            device=device,
            precision=precision,
            sources=found.sources,
            weights=found.label,
        )

    def untrained_seed(self) -> int:
        """The seed of the random weights of ``checkpoint="untrained"``, from the model's
        name and configuration: every process builds the same network, so that a result
        does not depend on which worker ran a tile, and a resumed store is finished by
        the network that began it (the graph's token is the same)."""
        text = repr((self.name, self.config)).encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")

    def spec(self):
        """Check the configuration and the checkpoint's keys and shapes as :meth:`build`
        would, on torch's ``meta`` device (no memory, no weights); return the model's
        :class:`~m3rcr_xr.models.ModelSpec`. The client calls this; workers build."""
        from . import models

        return models.model_spec(
            self.name, self.checkpoint, sha256=self.sha256, **dict(self.config)
        )

    def build(self):
        """Build the model on the CPU, in eval mode, with its weights fetched and checked
        in this process (untrained only if asked for: see :meth:`untrained_seed`)."""
        import torch

        from . import models

        config = dict(self.config)
        if self.checkpoint is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.untrained_seed())
                return models.build(self.name, **config)
        try:
            path = fetch_first(self.sources or (self.checkpoint,), self.sha256)
        except CheckpointError as exc:
            raise CheckpointError(
                f"{self.weights}: the checkpoint changed since decloud began, or cannot be "
                f"fetched in this process (pid {os.getpid()}): {exc}"
            ) from exc
        # loaded from the bytes checked against the hash, not from a second read of a
        # file that another process may have replaced meanwhile
        return models.load(self.name, path, sha256=self.sha256, **config)


_CACHE: dict[tuple[ModelRef, str], Any] = {}
_CACHE_LOCK = threading.Lock()


def cached_model(ref: ModelRef):
    """The model of ``ref`` in this process, built on first use; (model, device).

    One model per device whatever the precision (autocast is applied per call); on a
    CUDA device in ``channels_last`` layout where its spec says that runs faster.
    """
    import torch

    device = _device_name(resolve_device(ref.device))
    key = (replace(ref, precision=DEFAULT_PRECISION), device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if ref.device == "auto" and device == "cpu":
                _refuse_a_missing_gpu()
            _forget_replaced(key)
            model = ref.build().to(device)
            if device.startswith("cuda") and model.spec.channels_last:
                model = model.to(memory_format=torch.channels_last)
            _CACHE[key] = model
            log.info("built %s on %s (pid %d)", ref.name, device, os.getpid())
        return _CACHE[key], device


def _refuse_a_missing_gpu() -> None:
    """Refuse to run on the CPU of a ``distributed`` worker that advertises a GPU it has
    not (:func:`m3rcr_xr.cluster.missing_gpu`): tasks placed there for its GPU."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    from .cluster import missing_gpu

    problem = missing_gpu(worker)
    if problem:
        raise UsageError(
            f"{argument('device', 'auto')} would run on the CPU: {problem}; give the worker "
            "its GPU, or pass device='cpu'"
        )


def _forget_replaced(key: tuple[ModelRef, str]) -> None:
    """Drop the models built from earlier contents of the same checkpoint on the same
    device (a file rewritten by training, say): they can never run again, since a
    worker checks the hash, and would otherwise stay in memory (on the GPU) for good."""
    ref, device = key
    if ref.checkpoint is None:
        return
    for old in [k for k in _CACHE if k[1] == device and k[0].checkpoint == ref.checkpoint]:
        if old[0].sha256 != ref.sha256:
            del _CACHE[old]


def clear_model_cache() -> None:
    """Forget the models built in this process, and their CUDA graphs."""
    with _CACHE_LOCK:
        _CACHE.clear()
    cuda_graphs.clear()


# ----------------------------------------------------------------------------- device
#: device types whose tile tasks run side by side, each with its share of the cores;
#: on any other (a GPU), one tile task at a time per device (:func:`device_lock`)
CONCURRENT_DEVICE_TYPES = frozenset({"cpu"})

#: tile tasks of a process that work for one GPU at once (:func:`tile_task_slot`): one
#: crops and stages its tiles, one runs them, one blends its outputs
TILE_TASKS_PER_DEVICE = 3

_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_TASK_SLOTS: dict[str, threading.BoundedSemaphore] = {}
_TILE_COUNTS: Counter[str] = Counter()
_STATE_LOCK = threading.Lock()  # guards the three above


def device_lock(device: str) -> contextlib.AbstractContextManager:
    """The lock that tile tasks of this process hold while they use ``device``.

    Shared by every thread of the process, so that a worker with many threads runs the
    GPU work of one tile task at a time per device (the others read, crop and blend
    meanwhile): tasks never contend for the device's memory and streams. A no-op on the
    CPU (:data:`CONCURRENT_DEVICE_TYPES`).
    """
    if device.split(":")[0] in CONCURRENT_DEVICE_TYPES:
        return contextlib.nullcontext()
    with _STATE_LOCK:
        return _DEVICE_LOCKS.setdefault(device, threading.Lock())


def tile_task_slot(device: str) -> contextlib.AbstractContextManager:
    """One of the :data:`TILE_TASKS_PER_DEVICE` places of the tile tasks of this process
    that work for ``device`` at once, from their first crop to their last blend.

    A forward pass of the attention networks on a GPU is bound by the host's kernel
    launches, which need the interpreter: threads that crop, stage and blend at the same
    time take it from the launching thread: on an H200, decloud of GLF-CR in bf16 ran
    at 0.86 of a raw PyTorch loop with 16 threads and 0.97 with 4, before this limit.
    Three places keep the device fed, one task staging while one runs and one blends
    (with 16 threads: 0.93 with three places, 0.86 with two). A task waiting for a
    place holds its worker thread but not the interpreter; the threads left go on
    reading and writing. A no-op on the CPU (:data:`CONCURRENT_DEVICE_TYPES`), where tasks share the
    cores instead.
    """
    if device.split(":")[0] in CONCURRENT_DEVICE_TYPES:
        return contextlib.nullcontext()
    with _STATE_LOCK:
        return _TASK_SLOTS.setdefault(device, threading.BoundedSemaphore(TILE_TASKS_PER_DEVICE))


def tile_counts(reset: bool = False) -> dict[str, int]:
    """Tiles this process has run through a network, per device (``"cuda:0"``...).

    Examples
    --------
    >>> tile_counts()  # doctest: +SKIP
    {'cuda:0': 240}
    """
    with _STATE_LOCK:
        counts = dict(_TILE_COUNTS)
        if reset:
            _TILE_COUNTS.clear()
    return counts


def _count_tiles(device: str, tiles: int) -> None:
    with _STATE_LOCK:
        _TILE_COUNTS[device] += tiles


# ---------------------------------------------------------------------- tile running
def run_tiles(
    model, device: str, tiles: np.ndarray, batch_size: int, precision: str = DEFAULT_PRECISION
) -> np.ndarray:
    """Run (N, 6, T, T) normalised inputs through ``model`` in batches; (N, 4, T, T).

    On a CUDA device through :func:`_run_cuda` (page-locked copies, overlapped uploads,
    autocast to ``precision``); elsewhere batch after batch, with torch's CPU threads
    shared among the tasks (:func:`m3rcr_xr.threads.tile_threads`). Either way under
    :func:`device_lock`, and counted in :func:`tile_counts`.
    """
    if device.startswith("cuda"):
        outputs = _run_cuda(model, device, tiles, batch_size, autocast_dtype(precision, device))
    else:
        with device_lock(device), tile_threads(torch_threads()):
            outputs = _run_host(model, device, tiles, batch_size)
    _count_tiles(device, len(tiles))
    return outputs


def _run_host(model, device: str, tiles: np.ndarray, batch_size: int) -> np.ndarray:
    import torch

    outputs = []
    with torch.inference_mode():
        for start in range(0, len(tiles), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(tiles[start : start + batch_size]))
            batch = batch.to(device)
            outputs.append(_forward(model, batch).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.empty((0, model.spec.output_channels, 0, 0))


def _forward(model, batch):
    """The output of ``model`` on a batch of stacked inputs, as tiles blend it.

    The inputs are split into the optical channels and the rest (the SAR channels,
    none for a classifier); a classifier's logits become class probabilities, which
    blend across overlaps into labels that do not depend on the tiling.
    """
    optical = model.spec.optical_channels
    out = model(batch[:, :optical], batch[:, optical:])
    return out.softmax(1) if model.spec.task == "landcover" else out


def _run_cuda(model, device: str, tiles: np.ndarray, batch_size: int, dtype: Any) -> np.ndarray:
    """:func:`run_tiles` on a CUDA device.

    The tiles are staged in page-locked memory before the lock is taken; under it, every
    batch's upload is queued on a side stream (so the next batch is copied while the
    current one runs) and its forward pass and download on the compute stream, the
    device's default stream for every task: a replay of the CUDA graph of a full batch
    (:mod:`m3rcr_xr.cuda_graphs`; a shorter batch fills its first rows), or eagerly
    where graphs are off. The lock is released once the work is queued; the outputs
    are read when it is done.
    """
    import torch

    staged = torch.empty(tiles.shape, dtype=torch.float32, pin_memory=True)
    staged.numpy()[...] = tiles
    outputs = torch.empty(
        (len(tiles), model.spec.output_channels, *tiles.shape[2:]),
        dtype=torch.float32,
        pin_memory=True,
    )
    with device_lock(device), torch.cuda.device(device), torch.inference_mode():
        # every task on the device's default stream, whatever its thread's current one:
        # a graph's buffers are read and refilled in the order its tasks queue them
        compute, copy = torch.cuda.default_stream(device), side_stream(device, "uploads")
        with torch.cuda.stream(compute):
            key = GraphKey(device, (batch_size, *tiles.shape[1:]), dtype)
            graphed = graphed_forward(model, key, _device_forward)
            uploads = []
            with torch.cuda.stream(copy):
                for start in range(0, len(tiles), batch_size):
                    batch = staged[start : start + batch_size].to(device, non_blocking=True)
                    uploads.append((start, batch, copy.record_event()))
            # one autocast block where graphs are off: it casts each weight once per
            # block, which is many small kernels, launch-bound on a GPU
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                for start, batch, uploaded in uploads:
                    compute.wait_event(uploaded)
                    batch.record_stream(compute)  # made on the side stream, used here
                    out = _device_forward(model, batch) if graphed is None else graphed(batch)
                    outputs[start : start + len(out)].copy_(out, non_blocking=True)
            done = compute.record_event()
    done.synchronize()
    return outputs.numpy()


def _device_forward(model, batch):
    """:func:`_forward` on a CUDA device: in the model's layout, to contiguous float32."""
    import torch

    if model.spec.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    out = _forward(model, batch)
    return out.to(torch.float32, memory_format=torch.contiguous_format)
