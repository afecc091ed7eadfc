"""Decloud whole scenes and collections, tile by tile, on any Dask scheduler.

The tiles lie on one grid over the scene (:mod:`m3rcr_xr.tiling`: a stride apart,
mirrored past the edges, blended with weights that sum to one); they run through the
network wherever the task lands (:mod:`m3rcr_xr.runner`: model references, a model
cache per process, one tile task at a time per GPU).

How it runs on Dask (two stages, so that no tile is computed twice)
    1. the tiles are taken in groups of ``g x g``, and a task runs the tiles of enough
       consecutive groups to fill a forward batch (:func:`m3rcr_xr.tiling.runs`)
       through the network, summing them, weighted, on each group's *canvas*: its block
       of ``g*S`` pixels a side (``S`` the stride) plus a spill of ``T - S`` pixels into
       its right and bottom neighbours (``T`` the tile). It finishes (divides by the
       weight sum) the part of each block that no neighbour's spill reaches and hands
       on that and the thin strips where spills meet, never a canvas (float64 sums,
       2.6 times the block's bytes, which would wait for all its neighbours);
    2. each output block adds the spills of its top, left and top-left neighbours to
       its strips, finishes them and joins the parts.
    The result does not depend on the chunking (up to float rounding): each tile sees
    the same pixels whatever the chunks. ``g`` follows the input's chunk size. What
    every tile task runs is one :class:`TileJob`: the plan, one
    :class:`~m3rcr_xr.runner.ModelRef` per ensemble member, the batch size, the
    test-time transforms (:data:`TTA`) and whether to return the spread.

Ensembles, test-time augmentation and the uncertainty layer
    Each tile runs through every member under every transform (one batched call per
    member and task, outputs transformed back); the tile's mean and, with
    ``uncertainty=True``, its standard deviation over those predictions are blended with
    the same window weights. The per-tile standard deviation is blended directly (not
    ``E[x^2] - E[x]^2`` of blended moments): it is the spread of the members and
    transforms that the layer is meant to show, without the tile-to-tile disagreement in
    the overlaps, which would draw the tile grid into it; blended linearly it adds
    across canvases as the mean does, so it is as chunk-independent; and computed from
    deviations to the first prediction it is exactly 0 where the predictions agree.
"""

from __future__ import annotations

import hashlib
import importlib
import operator
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask import delayed

from . import runner
from .cloudmask import warn_if_estimated
from .devices import check_device
from .exceptions import (
    ModelConfigError,
    SchemaError,
    UsageError,
    argument,
    check_flag,
    check_integer,
)
from .identity import sources
from .io import rechunk_like
from .normalize import OPTICAL_SCALE, model_inputs, normalize_optical
from .options import OPTIONS
from .progress import distributed_client
from .resources import GPU_RESOURCE, annotate, resource_items
from .runner import DEFAULT_PRECISION, ModelRef, cached_model, run_tiles, tile_task_slot
from .schema import OPTICAL_NODATA, is_collection, validate
from .tiling import TilePlan, block_end, group_size, groups, make_plan, pad, runs, window

OPTICAL_CHANNELS = 4
DEFAULT_TILE = 256  # for models that take any size

#: public names that moved out of this module (to the module named), still found here
#: with a DeprecationWarning
_MOVED = {
    **dict.fromkeys(
        [
            "CONCURRENT_DEVICE_TYPES",
            "PRECISIONS",
            "autocast_dtype",
            "check_precision",
            "clear_model_cache",
            "device_lock",
            "tile_counts",
        ],
        "runner",
    ),
    **dict.fromkeys(["GROUP_PIXELS", "mirror_index"], "tiling"),
    "resolve_device": "devices",
    "file_sha256": "weights.download",
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = f"{__package__}.{_MOVED[name]}"
    warnings.warn(
        f"m3rcr_xr.inference.{name} is now {home}.{name}; import it from there",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(home), name)


# ------------------------------------------------------------------------ what to run
#: Test-time augmentation: each transform as (quarter turns, mirrored left-right), the
#: mirror first. Tiles are always square (one side in :class:`TilePlan`; a model's
#: ``tile_size`` is height = width), so the quarter turns of ``"d4"`` keep every tile
#: valid for every model. ``"flips"``: identity, left-right, up-down (mirror then half
#: turn) and both (half turn).
TTA: dict[str | None, tuple[tuple[int, bool], ...]] = {
    None: ((0, False),),
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": tuple((turns, mirror) for turns in range(4) for mirror in (False, True)),
}


def check_tta(tta: str | None) -> str | None:
    """``tta`` as a key of :data:`TTA`: ``"none"`` (as the CLI and the ``tta``
    attribute spell it) is None.

    Raises
    ------
    UsageError
        An unknown name, naming the argument as the caller wrote it.
    """
    name = None if tta == "none" else tta
    if name not in TTA:
        raise UsageError(f"{argument('tta', tta)}: must be one of flips, d4 or none")
    return name


def transform_tiles(tiles: np.ndarray, turn: tuple[int, bool]) -> np.ndarray:
    """``tiles`` (…, y, x) mirrored left-right if ``turn[1]``, then turned ``turn[0]``
    quarter turns anticlockwise; :func:`invert_transform` undoes it.

    Examples
    --------
    >>> tiles = np.arange(6).reshape(1, 2, 3)
    >>> back = invert_transform(transform_tiles(tiles, (1, True)), (1, True))
    >>> bool((back == tiles).all())
    True
    """
    turns, mirror = turn
    return np.rot90(tiles[..., ::-1] if mirror else tiles, turns, axes=(-2, -1))


def invert_transform(tiles: np.ndarray, turn: tuple[int, bool]) -> np.ndarray:
    """The inverse of :func:`transform_tiles` with the same ``turn``."""
    turns, mirror = turn
    tiles = np.rot90(tiles, -turns, axes=(-2, -1))
    return tiles[..., ::-1] if mirror else tiles


def finish(canvas: np.ndarray, cloudy: np.ndarray, spread: bool = False) -> np.ndarray:
    """Divide by the weight sum and go back to reflectance x10000, float32.

    The blended change is added to the (clipped) input in its own units: the same as
    ``blended * 10000`` up to float32 rounding, but exact where the network changes
    nothing, so a model whose residual is zero returns its input bit for bit (and
    weights that did not sum to one would show). With ``spread`` (a canvas of
    :func:`accumulate` with ``job.spread``), the blended standard deviations follow the
    bands, scaled to the same units.
    """
    channels = (len(canvas) - 1) // (2 if spread else 1)
    weight = canvas[-1]
    blended = canvas[:channels] / weight
    seen = normalize_optical(cloudy.astype(np.float32))  # exactly what the network saw
    base = np.clip(cloudy, 0, OPTICAL_SCALE).astype(np.float64)
    mean = (base + (blended - seen) * OPTICAL_SCALE).astype(np.float32)
    if not spread:
        return mean
    std = (canvas[channels:-1] / weight * OPTICAL_SCALE).astype(np.float32)
    return np.concatenate([mean, std])


@dataclass(frozen=True)
class BlockOutput:
    """How the engine turns a block's blended canvas into output.

    ``finish(canvas, base, spread)`` returns ``(channels, h, w)`` (twice the channels
    with ``spread``) of ``dtype`` from the summed canvas (weighted outputs, then the
    weight sum) and ``base``, the block of the array the engine carries beside the
    inputs (decloud's cloudy bands).
    """

    finish: Any
    channels: int
    dtype: Any


#: decloud's output: the blended change added to the cloudy input (:func:`finish`)
CLOUD_FREE = BlockOutput(finish, OPTICAL_CHANNELS, np.float32)


@dataclass(frozen=True)
class TileJob:
    """What every tile task runs, shared by the scene and the collection paths.

    Small, hashable and picklable: references to the models
    (:class:`~m3rcr_xr.runner.ModelRef`), never their weights.

    Attributes
    ----------
    plan
        The tiling.
    members
        One model reference per checkpoint of the ensemble (one model family and
        configuration); one for a single model.
    batch_size
        Tiles per forward pass.
    tta
        A key of :data:`TTA`: the transforms each member runs every tile under.
    spread
        Whether the tasks also return the per-pixel standard deviation of the
        (member, transform) predictions.
    resources
        Dask worker resources of the tile tasks, as sorted items, or None.
    output
        How a block is finished (:data:`CLOUD_FREE`; a classifier's: labels).
    """

    plan: TilePlan
    members: tuple[ModelRef, ...]
    batch_size: int
    tta: str | None = None
    spread: bool = False
    resources: tuple[tuple[str, float], ...] | None = None
    output: BlockOutput = CLOUD_FREE

    def __dask_tokenize__(self) -> object:
        # the tiles a forward pass takes and where the tasks run change no output: a
        # write resumed with a smaller batch (out of GPU memory) is the same data.
        # Normalised here: dask hashes what this returns as text, where the output's
        # function would show its address, another in every process (no resume)
        fields = (type(self).__name__, self.plan, self.members, self.tta, self.spread, self.output)
        return dask.base.normalize_token(fields)

    @property
    def channels(self) -> int:
        """Channels of the output (the optical bands; one for labels)."""
        return self.output.channels

    @property
    def transforms(self) -> tuple[tuple[int, bool], ...]:
        return TTA[self.tta]

    @property
    def samples(self) -> int:
        """Predictions of each tile: members x transforms."""
        return len(self.members) * len(self.transforms)

    @property
    def out_channels(self) -> int:
        """Channels a task returns: the bands, then their standard deviations if any."""
        return self.channels * (2 if self.spread else 1)


def _predictions(tiles: np.ndarray, job: TileJob) -> Iterator[np.ndarray]:
    """Each member's prediction of ``tiles`` under each transform, transformed back."""
    transforms, count = job.transforms, len(tiles)
    stacked = (  # one pass a tile: no copy, the memory of a task as without TTA
        tiles
        if len(transforms) == 1
        else np.concatenate([transform_tiles(tiles, t) for t in transforms])
    )
    for ref in job.members:
        model, device = cached_model(ref)
        outputs = run_tiles(model, device, stacked, job.batch_size, ref.precision)
        for index, turn in enumerate(transforms):
            yield invert_transform(outputs[index * count : (index + 1) * count], turn)


def predict_tiles(tiles: np.ndarray, job: TileJob) -> np.ndarray:
    """(N, 6, T, T) normalised tiles to their mean prediction over every member and
    transform of ``job``, (N, C, T, T); with ``job.spread`` the population
    standard deviation of those predictions follows, (N, 2C, T, T).

    Each member runs all the transforms of all the tiles in one
    :func:`~m3rcr_xr.runner.run_tiles` call (the transforms batched together), once
    each. The moments are running sums of the deviations from the first prediction
    (shifted data): a model whose predictions agree gives a spread of exactly 0, and a
    small spread does not vanish in the cancellation
    of ``E[x^2] - E[x]^2`` in large values.
    """
    predictions = _predictions(tiles, job)
    if job.samples == 1:
        return next(predictions)
    first = next(predictions).astype(np.float64)
    total, squares = np.zeros_like(first), np.zeros_like(first)
    for out in predictions:
        deviation = out - first
        total += deviation
        squares += deviation * deviation
    shift = total / job.samples
    mean = first + shift
    if not job.spread:
        return mean
    std = np.sqrt(np.maximum(squares / job.samples - shift * shift, 0.0))
    return np.concatenate([mean, std], axis=1)


def _corners(plan: TilePlan, rows: range, cols: range) -> list[tuple[int, int]]:
    """Where the tiles ``rows x cols`` (tile indices) begin on their canvas."""
    top, left = rows.start * plan.stride, cols.start * plan.stride
    return [(r * plan.stride - top, c * plan.stride - left) for r in rows for c in cols]


def accumulate(
    inputs: Sequence[np.ndarray], job: TileJob, spans: Sequence[tuple[range, range]]
) -> list[np.ndarray]:
    """Weighted sums of the tiles of each span ``(rows, cols)`` (tile indices) on its
    canvas; the tiles of every span run through the network together, ``job.batch_size``
    a forward pass (a span of few tiles would leave the batches part empty).

    ``inputs[i]`` (6, h, w) holds the padded scene from the first tile's corner of
    ``spans[i]``. Returns one (C + 1, h, w) float64 canvas per span: the C weighted
    bands of each tile's mean prediction (:func:`predict_tiles`), then the weight sum;
    with ``job.spread``, (2C + 1, h, w): the weighted per-tile standard deviations come
    between the two.
    """
    if not spans:  # a chunk of no patches
        return []
    tile = job.plan.tile
    corners = [_corners(job.plan, rows, cols) for rows, cols in spans]
    _, device = cached_model(job.members[0])  # the members share the device
    with tile_task_slot(device):
        crops = [
            array[:, y : y + tile, x : x + tile]
            for array, spots in zip(inputs, corners, strict=True)
            for y, x in spots
        ]
        outputs = predict_tiles(np.stack(crops), job)
        weights = window(tile)
        canvases, first = [], 0
        for array, spots in zip(inputs, corners, strict=True):
            shape = (outputs.shape[1] + 1, *array.shape[1:])
            canvas = np.zeros(shape, dtype=np.float64)
            for (y, x), out in zip(spots, outputs[first : first + len(spots)], strict=True):
                canvas[:-1, y : y + tile, x : x + tile] += weights * out
                canvas[-1, y : y + tile, x : x + tile] += weights
            canvases.append(canvas)
            first += len(spots)
    return canvases


# ------------------------------------------------------------------------------ scene
class _Cut(NamedTuple):
    """A group's canvas (:func:`accumulate`) cut where its output block meets its
    neighbours' canvases (:func:`_cut`): all but ``inner`` are raw weighted sums, a
    strip ``spill`` pixels wide or none."""

    #: the block but its top rows and left columns, finished: no neighbour reaches it
    inner: np.ndarray
    #: the block's top rows and, below them, its left columns, which the spills of the
    #: blocks above, on the left and above-left add to; and the input there
    top: np.ndarray
    side: np.ndarray
    base_top: np.ndarray
    base_side: np.ndarray
    #: what spills into the block below (the one below-right at its end), and into the
    #: block on the right
    bottom: np.ndarray
    right: np.ndarray


def _cut(canvas: np.ndarray, base: np.ndarray, top: int, left: int, job: TileJob) -> _Cut:
    """A group's ``canvas`` cut (see :class:`_Cut`) at the end of its tile task, the part
    of its block that no neighbour reaches finished at once, so that the canvas goes
    with the task.

    ``base`` is the input of the block (its size: the block's), ``top`` and ``left``
    the rows and columns that the neighbours' spills reach (0 where there is none).
    Dask's order may assemble a block long after its group ran (once its neighbours
    have run too): what waits is the finished part (decloud's float32 bands: 0.4 of
    the canvas's float64 bands and weights) and thin strips.
    """
    height, width = base.shape[1:]
    return _Cut(
        inner=job.output.finish(
            canvas[:, top:height, left:width], base[:, top:, left:], job.spread
        ),
        top=canvas[:, :top, :width].copy(),
        side=canvas[:, top:height, :left].copy(),
        base_top=base[:, :top].copy(),
        base_side=base[:, top:, :left].copy(),
        bottom=canvas[:, height:].copy(),
        right=canvas[:, :height, width:].copy(),
    )


def _assemble(
    own: _Cut, up: _Cut | None, left: _Cut | None, corner: _Cut | None, job: TileJob
) -> np.ndarray:
    """Stage 2: one output block, from its cut canvas (:func:`_cut`) and the spills of
    its neighbours' (each pixel's sums added in the same order as to the whole canvas
    before it was cut, its own then above, left, above-left: the same to the bit)."""
    rows, cols = own.top.shape[1], own.side.shape[2]
    width = own.top.shape[2]
    top, side = own.top.copy(), own.side.copy()
    if up is not None:
        top += up.bottom[:, :, :width]
    if left is not None:
        top[:, :, :cols] += left.right[:, :rows]
        side += left.right[:, rows:]
    if corner is not None:
        top[:, :, :cols] += corner.bottom[:, :, corner.bottom.shape[2] - cols :]
    block = np.empty((job.out_channels, rows + own.inner.shape[1], width), job.output.dtype)
    block[:, :rows] = job.output.finish(top, own.base_top, job.spread)
    block[:, rows:, :cols] = job.output.finish(side, own.base_side, job.spread)
    block[:, rows:, cols:] = own.inner
    return block


def _unoptimized(array: da.Array):
    """``array`` as one Delayed whose keys are those of the graph it comes from.

    A dask array passed to ``delayed`` is optimised on its own, under new keys, so that
    every group would compute the normalised chunks under it again (nine times each for
    groups of half a chunk); unoptimised, the groups share them.
    """
    return array.rechunk(-1).to_delayed(optimize_graph=False).item()


def _extent(plan: TilePlan, group: range) -> tuple[int, int]:
    """The pixels the tiles of ``group`` (tile indices along an axis) cover."""
    return group.start * plan.stride, (group.stop - 1) * plan.stride + plan.tile


_Place = tuple[int, int]


@dataclass(frozen=True)
class _Group:
    """A group of a scene's tiles (``rows x cols``, tile indices) and its output block:
    its last stride of tiles, or the grid's end (:func:`~m3rcr_xr.tiling.block_end`)."""

    rows: range
    cols: range
    #: the block, on the padded grid
    block: tuple[slice, slice]
    #: the rows and columns at the block's top and left that the spills of the groups
    #: above and on the left reach (0 where there is none)
    reach: tuple[int, int]

    @property
    def tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.block
        return rows.stop - rows.start, cols.stop - cols.start


def _group(plan: TilePlan, rows: range, cols: range, last_row: bool, last_col: bool) -> _Group:
    """The group of tiles ``rows x cols`` (see :class:`_Group`)."""
    (y0, _), (x0, _) = _extent(plan, rows), _extent(plan, cols)
    padded_h, padded_w = plan.padded_shape
    block = (
        slice(y0, block_end(rows, plan.stride, padded_h, last_row)),
        slice(x0, block_end(cols, plan.stride, padded_w, last_col)),
    )
    return _Group(rows, cols, block, (plan.spill if y0 else 0, plan.spill if x0 else 0))


def _cuts(padded: da.Array, padded_cloudy: da.Array, job: TileJob, groups: dict[_Place, _Group]):
    """Stage 1 (see module doc): each group's canvas, cut (:class:`_Cut`), a Delayed, by
    its place ``(a, b)``.

    A task runs the tiles of consecutive groups together, enough of them to fill a
    forward batch (:func:`~m3rcr_xr.tiling.runs`), whatever the chunks make the groups
    (on a GPU: :func:`_fills_batches`; one group a task on this process's CPU), and
    cuts their canvases (:func:`_cut_groups`). Each group's cut keeps a key of its own,
    from its place alone: the batch size changes neither the output's keys nor how the
    tiles blend, and the values only as much as the network's own rounding changes
    with the tiles it runs with (none for most; about 1e-7 relative for oneDNN's
    convolutions on a CPU).
    """
    places = list(groups)
    cuts = {}
    batch = job.batch_size if _fills_batches(job) else 1
    for run in runs([groups[place].tiles for place in places], batch):
        chosen = [groups[place] for place in places[run.start : run.stop]]
        regions, bases = [], []
        for group in chosen:
            (y0, y1), (x0, x1) = (_extent(job.plan, span) for span in (group.rows, group.cols))
            regions.append(_unoptimized(padded[:, y0:y1, x0:x1]))
            bases.append(_unoptimized(padded_cloudy[(slice(None), *group.block)]))
        token = dask.base.tokenize(padded, padded_cloudy, job, batch, run)
        task = delayed(_cut_groups, pure=True)(
            regions, bases, job, chosen, dask_key_name=f"decloud-tiles-run-{token}"
        )
        for index, place in enumerate(places[run.start : run.stop]):
            token = dask.base.tokenize(padded, padded_cloudy, job, *place)
            cuts[place] = delayed(operator.getitem, pure=True)(
                task, index, dask_key_name=f"decloud-tiles-{token}"
            )
    return cuts


def _cut_groups(
    inputs: list[np.ndarray], bases: list[np.ndarray], job: TileJob, groups: list[_Group]
) -> list[_Cut]:
    """The tiles of ``groups`` run through the network (:func:`accumulate`), and each
    group's canvas cut (:func:`_cut`) in the same task: no canvas outlives it."""
    canvases = accumulate(inputs, job, [(group.rows, group.cols) for group in groups])
    return [
        _cut(canvas, base, *group.reach, job)
        for canvas, base, group in zip(canvases, bases, groups, strict=True)
    ]


def _fills_batches(job: TileJob) -> bool:
    """Whether a task joins groups (a scene's) or patches (a collection's) to fill its
    forward batches: where the tiles run one task at a time per device (a GPU). Not
    on a CPU: there tile tasks share the cores, each with a fixed share of torch's
    threads (:mod:`m3rcr_xr.threads`), so that fewer, larger tasks would leave cores
    idle on a scene of few groups, and larger batches ran slower (a collection of
    256-pixel patches, eight a batch, took 2.3 times as long as one at a time). With
    ``device="auto"`` and a ``distributed`` client the workers choose the device: the
    tasks fill batches when the tile tasks ask for a GPU (``resources``) or a worker
    has one (:func:`_cluster_has_gpus`).
    """
    from .devices import resolve_device  # not a name of this module: it moved (_MOVED)

    device = job.members[0].device  # the members share the device
    if device == "auto":
        client = distributed_client()
        if client is not None:
            return GPU_RESOURCE in dict(job.resources or ()) or _cluster_has_gpus(client)
        device = resolve_device(device)
    return device.split(":")[0] not in runner.CONCURRENT_DEVICE_TYPES


def _cluster_has_gpus(client: Any) -> bool:
    """Whether a worker of ``client``'s cluster advertises a ``GPU`` resource
    (:func:`m3rcr_xr.local_cluster` and :func:`m3rcr_xr.slurm_cluster` give one to each
    GPU worker) or reports a GPU (``distributed``'s NVML monitor, dask-cuda's workers)."""
    workers = client.scheduler_info().get("workers", {}).values()
    return any(info.get("resources", {}).get(GPU_RESOURCE) or info.get("gpu") for info in workers)


def tile_scene(inputs: da.Array, cloudy: da.Array, job: TileJob) -> da.Array:
    """(6, y, x) lazy inputs to (C, y, x) lazy output (2C with ``job.spread``: the bands,
    then their standard deviations), in two stages (see module doc)."""
    plan = job.plan
    padded_cloudy = pad(cloudy, plan)
    row_groups = groups(plan.shape[0], group_size(inputs.chunks[1][0], plan.stride))
    col_groups = groups(plan.shape[1], group_size(inputs.chunks[2][0], plan.stride))
    padded = pad(inputs, plan)  # out of the annotation: only the tile tasks ask for it
    found = {
        (a, b): _group(plan, rows, cols, a + 1 == len(row_groups), b + 1 == len(col_groups))
        for a, rows in enumerate(row_groups)
        for b, cols in enumerate(col_groups)
    }
    with annotate(_resources(job)):
        cuts = _cuts(padded, padded_cloudy, job, found)
    blocks = []
    for a in range(len(row_groups)):
        line = []
        for b in range(len(col_groups)):
            parts = [cuts.get((a - 1, b)), cuts.get((a, b - 1)), cuts.get((a - 1, b - 1))]
            block = delayed(_assemble, pure=True)(cuts[a, b], *parts, job)
            shape = (job.out_channels, *found[a, b].shape)
            line.append(da.from_delayed(block, shape, job.output.dtype))
        blocks.append(line)
    return da.block(blocks)[:, : plan.height, : plan.width]


def _resources(job: TileJob) -> dict[str, float] | None:
    return None if job.resources is None else dict(job.resources)


# ------------------------------------------------------------------------- collection
def _decloud_patches(
    inputs: np.ndarray, cloudy: np.ndarray, job: TileJob, together: bool = True
) -> np.ndarray:
    """(p, 6, y, x) patches to (p, C, y, x) (2C with ``job.spread``): each patch tiled
    on its own; with ``together`` the tiles of all of them run through the network
    together (full batches of ``job.batch_size``, however few tiles a patch has)."""
    plan = job.plan
    span = (range(plan.shape[0]), range(plan.shape[1]))
    count = len(inputs)
    shares = [range(count)] if together else [range(i, i + 1) for i in range(count)]
    out = np.empty((count, job.out_channels, plan.height, plan.width), job.output.dtype)
    for share in shares:
        padded = [pad(inputs[index], plan) for index in share]
        canvases = accumulate(padded, job, [span] * len(share))
        for index, canvas in zip(share, canvases, strict=True):
            canvas = canvas[:, : plan.height, : plan.width]
            out[index] = job.output.finish(canvas, cloudy[index], job.spread)
    return out


def tile_collection(inputs: da.Array, cloudy: da.Array, job: TileJob) -> da.Array:
    """(p, 6, y, x) lazy patches to (p, C, y, x) lazy output (2C with ``job.spread``):
    each patch tiled on its own, a chunk of patches a task."""
    inputs = inputs.rechunk({1: -1, 2: -1, 3: -1})
    cloudy = cloudy.rechunk((inputs.chunks[0], -1, -1, -1))
    with annotate(_resources(job)):
        return da.map_blocks(
            _decloud_patches,
            inputs,
            cloudy,
            job,
            _fills_batches(job),
            dtype=job.output.dtype,
            chunks=(inputs.chunks[0], (job.out_channels,), *inputs.chunks[2:]),
            name=f"decloud-patches-{dask.base.tokenize(inputs, job)}",
        )


# ---------------------------------------------------------------------------- public
def _check_inputs(ds: xr.Dataset, composite: bool) -> None:
    validate(ds)
    needed = ["cloudy", "sar"] + (["cloudmask"] if composite else [])
    missing = [name for name in needed if name not in ds.data_vars]
    if missing:
        raise SchemaError(
            f"{', '.join(missing)}: decloud needs this variable (have {list(ds.data_vars)})"
        )


def check_tile_arguments(
    tile: int | None, overlap: int | None, batch_size: int, device: Any
) -> tuple[int | None, int | None, int, str]:
    """The tiling and running arguments of :func:`decloud`, checked, as plain ints.

    The device is checked for presence only when the tasks run in this process: with a
    ``distributed`` client they run on its workers, which may have GPUs that this process
    (say, a login node) has not; a worker without the device then refuses it when it
    builds the model (:func:`resolve_device`).
    """
    tile = None if tile is None else check_integer("tile", tile)
    overlap = None if overlap is None else check_integer("overlap", overlap, minimum=0)
    batch_size = check_integer("batch_size", batch_size)
    return tile, overlap, batch_size, check_device(device, here=not distributed_client())


#: bytes of the arrays of one tile the engine makes besides the network's own: the
#: blending window (float64), the tile's six input channels (float32), and its share of
#: the canvas (four bands and the weight, float64)
TILE_BYTES_PER_PIXEL = 8 + 6 * 4 + 5 * 8


def plan_tiles(spec, tile: int | None, overlap: int | None, height: int, width: int) -> TilePlan:
    """The tile plan for a model of ``spec`` (:class:`~m3rcr_xr.models.ModelSpec`).

    Raises
    ------
    SchemaError
        A scene without pixels (a crop outside it, say).
    UsageError
        A ``tile`` whose arrays (:data:`TILE_BYTES_PER_PIXEL`, the network's aside)
        are beyond the ``max_raster_bytes`` option: a typo such as ``tile=100000``
        fails now, not in a worker out of memory.
    """
    from .models.interface import check_size

    if not height or not width:
        raise SchemaError(f"the scene has no pixels ({height} x {width}): nothing to run")
    tile = tile or spec.tile_size or DEFAULT_TILE
    check_size(spec, tile)
    need, limit = tile * tile * TILE_BYTES_PER_PIXEL, OPTIONS["max_raster_bytes"]
    if need > limit:
        raise UsageError(
            f"{argument('tile', tile)}: one tile needs {need / 2**30:.0f} GiB besides the "
            f"network, beyond the max_raster_bytes option ({limit / 2**30:g} GiB)"
        )
    overlap = tile // 8 if overlap is None else overlap
    return make_plan(tile, overlap, height, width)


def check_task(spec, task: str, use: str) -> None:
    """Refuse a model of another task (a classifier for decloud, say), naming ``use``."""
    from .models import interface  # torch is imported only when a model runs

    interface.check_task(spec, task, use)


Checkpoint = str | os.PathLike | None


def _checkpoints(checkpoint: Checkpoint | Sequence[Checkpoint]) -> tuple[Checkpoint, ...]:
    """One checkpoint or a list of them (an ensemble) as a tuple."""
    # a str is a Sequence too: one checkpoint
    checkpoints = tuple(checkpoint) if isinstance(checkpoint, list | tuple) else (checkpoint,)
    if not checkpoints:
        raise UsageError(f"{argument('checkpoint', checkpoint)}: an ensemble needs checkpoints")
    for one in checkpoints:
        if not (one is None or isinstance(one, str | os.PathLike)):
            raise UsageError(
                f"{argument('checkpoint', one)}: must be a file, URL or registered name "
                f"(or a list of them), not {type(one).__name__}"
            )
    return cast(tuple[Checkpoint, ...], checkpoints)


def _check_spread(uncertainty: bool, members: int, tta: str | None) -> None:
    """A standard deviation needs something to spread: several members or transforms."""
    if uncertainty and members == 1 and tta is None:
        raise UsageError(
            f"{argument('uncertainty', uncertainty)} needs several predictions of each pixel: "
            f"give several checkpoints (an ensemble) or {argument('tta', 'flips')}"
        )


def _ensemble_spec(members: tuple[ModelRef, ...]):
    """The :class:`~m3rcr_xr.models.ModelSpec` of the members, checked to be one:
    every checkpoint fits the model and configuration (as :meth:`ModelRef.spec`), and
    the members are one model family and configuration, and distinct networks.

    Raises
    ------
    ModelConfigError
        Members of different families or configurations (naming both).
    UsageError
        The same weights twice, in any files (naming both).
    """
    if len(members) == 1:
        return members[0].spec()
    first = members[0]
    for ref in members[1:]:  # before reading any checkpoint: the spec follows from these
        if (ref.name, ref.config) != (first.name, first.config):
            raise ModelConfigError(
                f"{argument('checkpoint')}: ensemble members must be one model family and "
                "configuration: "
                f"{ref.weights} is {ref.name} {dict(ref.config)}, "
                f"{first.weights} is {first.name} {dict(first.config)}"
            )
    specs, digests = zip(*(_member_spec(ref) for ref in members), strict=True)
    seen: dict[str, ModelRef] = {}
    for ref, digest in zip(members, digests, strict=True):
        if digest in seen:
            raise UsageError(
                f"{argument('checkpoint')}: the same weights appear twice in the ensemble: "
                f"{seen[digest].weights} and {ref.weights} hold the same tensors"
            )
        seen[digest] = ref
    return specs[0]


def _member_spec(ref: ModelRef) -> tuple[Any, str]:
    """The spec of an ensemble member (as :meth:`ModelRef.spec`) and a digest of its
    weights, from one read of its checkpoint: the same tensors saved in two formats
    (safetensors and ``.pth``, a bare state dict and the published layout) digest alike,
    where the files' hashes differ."""
    from . import models

    if ref.checkpoint is None:  # untrained: one network per configuration (untrained_seed)
        return ref.spec(), ref.weights
    raw = models.read_checkpoint(ref.checkpoint, sha256=ref.sha256)  # the bytes hashed
    spec = models.model_spec(ref.name, raw, **dict(ref.config))
    return spec, _weights_digest(models.extract_state_dict(raw))


def _weights_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a state dict's tensors: their names (sorted), shapes, dtypes and bytes.

    Examples
    --------
    >>> import torch
    >>> a = {"w": torch.ones(2), "b": torch.zeros(1)}
    >>> _weights_digest(a) == _weights_digest(dict(reversed(a.items())))
    True
    >>> _weights_digest(a) == _weights_digest({**a, "w": torch.ones(2, dtype=torch.float64)})
    False
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(repr((name, tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def decloud(
    ds: xr.Dataset,
    model: str | None = None,
    checkpoint: Checkpoint | Sequence[Checkpoint] = None,
    *,
    config: Mapping[str, Any] | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    composite: bool = False,
    resources: Mapping[str, float] | None = None,
    precision: str = DEFAULT_PRECISION,
    tta: str | None = None,
    uncertainty: bool = False,
) -> xr.DataArray | xr.Dataset:
    """Remove clouds from a scene or a collection with one of the M3R-CR networks, lazily.

    Parameters
    ----------
    ds
        A scene or a collection with ``cloudy`` and ``sar``.
    model
        ``"dsen2_cr"``, ``"glf_cr"`` or ``"align_cr"``; None: the model of the registered
        weights, else ``"dsen2_cr"``.
    checkpoint
        The weights (published layout, bare state dict or safetensors), as a registered
        name (``"dsen2_cr-demo"``; see :func:`m3rcr_xr.weights.available`), a path, or a
        URL (``https://``, ``s3://``, ``file://``...; append ``#sha256=HEX`` to have the
        download checked), fetched into the cache and checked by SHA-256 (see
        :func:`m3rcr_xr.weights.fetch`); ``"untrained"`` for random weights. None: the
        model's default registered weights; no model has any today, so None raises
        :class:`CheckpointError` saying how to get weights. A list of them is an
        ensemble of one model family and configuration: every member runs every tile
        and their predictions are averaged.
    config
        Architecture arguments (e.g. ``{"preset": "small"}`` or ``{"n_feats": 64}``); must
        match the checkpoint. Registered weights bring their own: leave it out.
    tile
        Tile side; default the model's own (160 for GLF-CR and Align-CR), else 256.
    overlap
        Pixels shared by neighbouring tiles; default ``tile // 8``.
    batch_size
        Tiles per forward pass.
    device
        ``"auto"`` (each worker's GPU if it has one, else the CPU), ``"cpu"``, ``"cuda"``...
    composite
        Keep the cloudy input where ``cloudmask`` is False, the network's output elsewhere.
    resources
        Dask worker resources the tile tasks need, e.g. ``{"GPU": 1}`` so that they run
        only on workers that advertise a GPU. :func:`m3rcr_xr.to_zarr` keeps them; graph
        optimisation drops them (dask#7036), so compute otherwise with
        ``client.compute(out.data, optimize_graph=False)``. Not needed for safety: a
        worker runs one tile task at a time per GPU whatever its threads.
    precision
        How the forward passes run on a CUDA GPU: ``"fp32"`` (default), ``"bf16"`` or
        ``"fp16"`` (autocast), ``"auto"`` (bf16 where the GPU computes it natively, else
        fp32). float32 by default, so that the result is the CPU's up to float rounding
        (and cuDNN's TF32 convolutions where torch allows them) on any card; bf16 (8
        significant bits to float32's 24) runs on the tensor cores, for speed
        (``benchmarks/gpu_check.py`` measures both). A CPU always runs float32: a
        reduced precision with ``device="cpu"`` is refused, and CPU workers run float32
        under ``device="auto"``.
    tta
        Test-time augmentation: ``"flips"`` runs each tile also mirrored left-right,
        up-down and both, ``"d4"`` under all 8 quarter turns and mirrors (inputs
        transformed alike, outputs transformed back), and averages; None (or
        ``"none"``): once. Costs 4 or 8 forward passes a tile (per member).
    uncertainty
        Also return ``decloud_std``: the standard deviation of the predictions of each
        pixel over the members and transforms, in the units of ``cloudy``, blended across
        tile overlaps with the same weights as the mean (so as seamless and
        independent of the chunking as ``decloud``). Needs several checkpoints or a
        ``tta``. With ``composite``, 0 where the cloudy input is kept.

    Returns
    -------
    xr.DataArray or xr.Dataset
        ``decloud`` (band, y, x) (``patch`` first for a collection), float32 reflectance
        x10000, with the input's coordinates and CRS; NaN where ``cloudy`` has no data
        (all bands 0: a dark band may be 0, a footprint's edge zeroes them all), the
        nodata declared the rioxarray way (``encoding["_FillValue"]``); with
        ``uncertainty=True`` a Dataset
        of ``decloud`` and ``decloud_std`` (same dims, units and dtype). Lazy for a
        Dask-backed input (nothing is computed yet); in memory for an in-memory input.

    Raises
    ------
    UsageError
        Before any work starts: ``tile`` or ``batch_size`` not an integer >= 1,
        ``overlap`` not one >= 0, ``device`` not a device, or one this process does not
        have (with a ``distributed`` client active, the workers check it instead: an
        HPC job may build the graph on a CPU-only login node for GPU workers); an
        unknown ``tta``; ``uncertainty`` with one checkpoint and no ``tta``; an empty
        list of checkpoints or one checkpoint twice.
    SchemaError, ModelConfigError, CheckpointError
        Before any work starts: missing variables, a configuration the model cannot be
        built with (naming the key) or that is not the registered weights' own, a tile
        size the model cannot take, no checkpoint and no default weights, weights that
        cannot be fetched, fail their SHA-256 or do not fit the model, an unknown
        precision (or a reduced one on the CPU), ensemble members of different model
        families or configurations.

    Examples
    --------
    >>> import m3rcr_xr
    >>> scene = m3rcr_xr.synthetic_scene((128, 128))
    >>> out = m3rcr_xr.decloud(scene, checkpoint="dsen2_cr-demo")
    >>> out.dims, out.attrs["checkpoint"]
    (('band', 'y', 'x'), 'dsen2_cr-demo')
    >>> small = m3rcr_xr.synthetic_scene((64, 64))
    >>> both = m3rcr_xr.decloud(small, checkpoint="dsen2_cr-demo", tta="flips",
    ...                         uncertainty=True)
    >>> list(both.data_vars)
    ['decloud', 'decloud_std']
    """
    tile, overlap, batch_size, device = check_tile_arguments(tile, overlap, batch_size, device)
    tta = check_tta(tta)
    items = resource_items(resources)
    composite = check_flag("composite", composite)
    uncertainty = check_flag("uncertainty", uncertainty)
    checkpoints = _checkpoints(checkpoint)
    _check_spread(uncertainty, len(checkpoints), tta)
    _check_inputs(ds, composite)
    members = tuple(ModelRef.create(model, c, config, device, precision) for c in checkpoints)
    spec = _ensemble_spec(members)
    check_task(spec, "cloud_removal", "decloud")
    if composite:
        warn_if_estimated(ds["cloudmask"], "decloud(composite=True)")
    job = TileJob(
        plan=plan_tiles(spec, tile, overlap, ds.sizes["y"], ds.sizes["x"]),
        members=members,
        batch_size=batch_size,
        tta=tta,
        spread=uncertainty,
        resources=items,
    )
    eager = ds["cloudy"].chunks is None
    inputs, cloudy = model_inputs(ds).chunk(), ds["cloudy"].chunk()  # no-op when lazy
    decloud_array = tile_collection if is_collection(ds) else tile_scene
    data = decloud_array(inputs.data, cloudy.data, job)
    result: xr.DataArray | xr.Dataset
    result = _variable(ds, data[..., : job.channels, :, :], job, "decloud", composite)
    if uncertainty:
        std = _variable(ds, data[..., job.channels :, :, :], job, "decloud_std", composite)
        result = xr.Dataset({"decloud": result, "decloud_std": std})
    return result.compute() if eager else result  # in memory in, in memory out


_LONG_NAMES = {
    "decloud": "cloud-free estimate",
    "decloud_std": "standard deviation of the estimate over ensemble members and TTA transforms",
}


def _variable(
    ds: xr.Dataset, data: da.Array, job: TileJob, name: str, composite: bool
) -> xr.DataArray:
    """``data`` as the variable ``name`` on the grid of ``cloudy``, with its attributes.

    With ``composite``, where the cloudy input is kept the estimate is that input and
    its spread 0.
    """
    template = ds["cloudy"]
    result = xr.DataArray(data, dims=template.dims, coords=template.coords, name=name)
    # the masks on the output's blocks (the tile groups): on the input's chunks, the
    # where would cut each block at every chunk edge into slivers
    if composite:
        kept: xr.DataArray | np.float32 = np.float32(0)
        if name == "decloud":
            kept = rechunk_like(template, result).astype(np.float32)
        result = result.where(rechunk_like(ds["cloudmask"], result), kept)
    # optical nodata in (all bands 0) is NaN out; the network saw it filled, as ever
    result = result.where(rechunk_like((template != OPTICAL_NODATA).any("band"), result))
    member = job.members[0]
    result.attrs = {
        "long_name": _LONG_NAMES[name],
        "units": "reflectance x10000",
        "model": member.name,
        "config": repr(dict(member.config)),
        "tile": job.plan.tile,
        "overlap": job.plan.overlap,
        "composite": int(composite),
        "members": len(job.members),
        "tta": job.tta or "none",
        "checkpoint": ", ".join(ref.weights for ref in job.members),
        "checkpoint_sha256": ", ".join(ref.sha256 or "" for ref in job.members),
    }
    result = result.rio.write_nodata(np.nan, encoded=True)  # _FillValue in encoding
    result.encoding["source"] = sources(ds)  # to_zarr never writes over its own input
    return result
