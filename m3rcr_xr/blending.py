"""What a tile task computes: the predictions of its tiles, blended into output blocks.

What every tile task runs is one :class:`TileJob`: the plan, one
:class:`~m3rcr_xr.runner.ModelRef` per ensemble member, the batch size, the test-time
transforms (:data:`~m3rcr_xr.tta.TTA`) and whether to return the spread.
:func:`predict_tiles` runs tiles through every member under every transform;
:func:`accumulate` sums the predictions, weighted by the window of
:mod:`m3rcr_xr.tiling`, on a group's canvas; :func:`cut` finishes the part of a canvas
that no neighbour reaches, and :func:`assemble` makes an output block of it and the
spills of its neighbours. :mod:`m3rcr_xr.engine` builds the Dask graph of these tasks.

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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import dask
import numpy as np

from .normalize import OPTICAL_SCALE, normalize_optical
from .runner import ModelRef, cached_model, run_tiles, tile_task_slot
from .tiling import TilePlan, window
from .tta import TTA, invert_transform, transform_tiles

OPTICAL_CHANNELS = 4


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
        A key of :data:`~m3rcr_xr.tta.TTA`: the transforms each member runs every tile under.
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
class Cut(NamedTuple):
    """A group's canvas (:func:`accumulate`) cut where its output block meets its
    neighbours' canvases (:func:`cut`): all but ``inner`` are raw weighted sums, a
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


def cut(canvas: np.ndarray, base: np.ndarray, top: int, left: int, job: TileJob) -> Cut:
    """A group's ``canvas`` cut (see :class:`Cut`) at the end of its tile task, the part
    of its block that no neighbour reaches finished at once, so that the canvas goes
    with the task.

    ``base`` is the input of the block (its size: the block's), ``top`` and ``left``
    the rows and columns that the neighbours' spills reach (0 where there is none).
    Dask's order may assemble a block long after its group ran (once its neighbours
    have run too): what waits is the finished part (decloud's float32 bands: 0.4 of
    the canvas's float64 bands and weights) and thin strips.
    """
    height, width = base.shape[1:]
    return Cut(
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


def assemble(
    own: Cut, up: Cut | None, left: Cut | None, corner: Cut | None, job: TileJob
) -> np.ndarray:
    """Stage 2: one output block, from its cut canvas (:func:`cut`) and the spills of
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
