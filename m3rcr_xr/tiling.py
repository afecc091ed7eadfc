"""The tile grid of a scene: where the tiles lie, how they blend, how a scene is padded.

Tiles of ``T`` pixels lie on one grid anchored at the scene origin, a stride
``S = T - overlap`` apart (:class:`TilePlan`); the last row and column of tiles reach
past the scene's bottom and right edges, where the input is mirrored (:func:`pad`;
scenes smaller than a tile are padded the same way). Each tile's output is weighted by
a smooth window (:func:`window`, ``sin^2``, never zero) and the weighted sum is divided
by the sum of the weights, so the weights of every pixel sum to one, edges included.
Tiles are blended in square groups (:func:`group_size`, :func:`groups`), and run in
tasks of consecutive groups that fill a forward batch (:func:`runs`);
:mod:`m3rcr_xr.engine` builds the graph of decloud and classify on this grid.

Examples
--------
>>> plan = make_plan(tile=256, overlap=32, height=1000, width=600)
>>> plan.stride, plan.shape, plan.padded_shape
(224, (5, 3), (1152, 704))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np

from .exceptions import ModelConfigError, argument


@dataclass(frozen=True)
class TilePlan:
    """Tiles of ``tile`` pixels, ``stride`` apart, covering ``height x width``."""

    tile: int
    overlap: int
    height: int
    width: int

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def spill(self) -> int:
        """How far a group's canvas reaches into its neighbours."""
        return self.overlap

    def count(self, size: int) -> int:
        """Tiles along an axis of ``size`` pixels."""
        return math.ceil(max(size - self.tile, 0) / self.stride) + 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.count(self.height), self.count(self.width)

    def padded(self, size: int) -> int:
        """Extent of the tile grid along an axis of ``size`` pixels (>= size)."""
        return (self.count(size) - 1) * self.stride + self.tile

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.padded(self.height), self.padded(self.width)


def make_plan(tile: int, overlap: int, height: int, width: int) -> TilePlan:
    """The grid of ``tile``-pixel tiles, ``overlap`` pixels shared by neighbours, over a
    scene of ``height x width``.

    Raises
    ------
    ModelConfigError
        ``overlap`` outside ``[0, tile / 2)``: neighbours of neighbours would overlap.
    """
    if not 0 <= overlap < tile / 2:
        raise ModelConfigError(
            f"{argument('overlap', overlap)}: must be in [0, tile/2) = [0, {tile / 2:g}) "
            f"for tiles of {tile}"
        )
    return TilePlan(tile=tile, overlap=overlap, height=height, width=width)


def window(tile: int) -> np.ndarray:
    """Blending weights of one tile: a separable ``sin^2`` bump, positive everywhere."""
    ramp = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return np.outer(ramp, ramp)


#: a group of tiles spans about this many pixels (or the chunk, if smaller): small
#: enough canvases to bound memory, and enough of them to share among workers (a task
#: joins groups until they fill a forward batch: :func:`runs`)
GROUP_PIXELS = 512


def group_size(chunk: int, stride: int) -> int:
    """Tiles a side of a group for input chunks of ``chunk`` pixels (at least one)."""
    return max(1, round(min(chunk, GROUP_PIXELS) / stride))


def groups(count: int, group: int) -> list[range]:
    """The tile indices ``0 .. count-1`` in runs of ``group`` (the last may be shorter)."""
    return [range(start, min(start + group, count)) for start in range(0, count, group)]


def runs(sizes: Sequence[int], batch_size: int) -> list[range]:
    """Consecutive runs of the groups of ``sizes[i]`` tiles, each the fewest groups that
    hold ``batch_size`` tiles or more (the last run may hold fewer): one task runs a
    run's tiles, so that its forward passes are full but its last.

    Groups follow the chunks (:func:`group_size`) and the blending follows the groups,
    while the batch size follows the device: joining groups in a task, rather than
    sizing the groups from the batch, leaves the output the same for any batch size.

    Examples
    --------
    >>> runs([4, 4, 2, 4, 1], batch_size=8)
    [range(0, 2), range(2, 5)]
    >>> runs([25, 25, 10], batch_size=8)
    [range(0, 1), range(1, 2), range(2, 3)]
    """
    found, start, tiles = [], 0, 0
    for index, size in enumerate(sizes):
        tiles += size
        if tiles >= batch_size:
            found.append(range(start, index + 1))
            start, tiles = index + 1, 0
    if start < len(sizes):
        found.append(range(start, len(sizes)))
    return found


def block_end(group: range, stride: int, padded: int, last: bool) -> int:
    """Where the output block of ``group`` ends: its last stride, or the grid's end."""
    return padded if last else group.stop * stride


def mirror_index(size: int, target: int) -> np.ndarray:
    """Source index of each of ``target`` positions along an axis of ``size`` that is
    extended by mirroring: ``0 .. size-1, size-1 .. 0, 0 ..`` (period ``2 * size``).

    The same as numpy's ``symmetric`` pad (edge repeated) however wide the pad, i.e.
    as reflecting again and again until ``target`` is reached.

    Examples
    --------
    >>> mirror_index(3, 8).tolist()
    [0, 1, 2, 2, 1, 0, 0, 1]
    """
    position = np.arange(target) % (2 * size)
    return np.where(position < size, position, 2 * size - 1 - position)


def pad_axis(array: da.Array | np.ndarray, axis: int, target: int):
    """Mirror ``array``'s end along ``axis`` out to ``target``, in one operation.

    The extension reads the last ``min(size, target - size)`` positions only (fewer than
    a tile); with Dask it is taken from them in one block along ``axis``, so a scene
    smaller than a tile grows to one tile in one step, not in rounds that double its
    chunks (a 1x1 scene would otherwise end up in 256x256 chunks of one pixel).
    """
    size = array.shape[axis]
    if target <= size:
        return array
    tail = mirror_index(size, target)[size:]
    start = int(tail.min())
    end = (slice(None),) * axis + (slice(start, None),)
    if isinstance(array, np.ndarray):
        return np.concatenate([array, np.take(array[end], tail - start, axis=axis)], axis=axis)
    source = array[end].rechunk({axis: -1})
    chunks = (*source.chunks[:axis], (len(tail),), *source.chunks[axis + 1 :])
    extension = source.map_blocks(
        np.take, tail - start, axis=axis, chunks=chunks, dtype=array.dtype
    )
    return da.concatenate([array, extension], axis=axis)


def pad(array: da.Array | np.ndarray, plan: TilePlan):
    """Mirror the bottom and right edges out to the tile grid's extent (see
    :func:`mirror_index`): any scene, however small, costs at most about one tile."""
    for axis, target in zip((array.ndim - 2, array.ndim - 1), plan.padded_shape, strict=True):
        array = pad_axis(array, axis, target)
    return array
