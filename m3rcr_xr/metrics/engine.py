"""The streamed engine on bare arrays: one task per chunk, seam tasks, a tree sum.

Input: (patch, band, y, x) prediction and target, (patch, y, x) group labels (NumPy or
dask, same chunks, ``band`` in one chunk). Output: float64 (quantity, patch, group)
sums of the per-pixel quantities (:mod:`.kernels`). Each chunk is read by one task that
sums the pixels needing no other chunk with :func:`flox.groupby_reduce` and hands on its
edge strips; small seam tasks do the pixels within ``HALO`` of a border between chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product
from typing import Any

import dask.array as da
import flox
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.typing import Key

from ..exceptions import SchemaError
from .dispatch import is_lazy, map_blocks
from .kernels import HALO, N_LABELS, QUANTITIES, quantities_block

#: chunks are made at least this wide, so that a chunk's edge strips never overlap
MIN_CHUNK = 2 * HALO
#: width of the edge strips that a chunk hands on to the seams between chunks
FRAME = 2 * HALO
#: flox's per-chunk algorithm; "numpy" (numpy_groupies' bincount) measured faster than
#: "flox" (sort + reduceat) in benchmarks/bench_metrics.py
DEFAULT_ENGINE = "numpy"

_Q = {name: i for i, name in enumerate(QUANTITIES)}


def _group_sum(quantities: np.ndarray, labels: np.ndarray, engine: str) -> np.ndarray:
    """Sums of (patch, quantity, y, x) by (patch, y, x) labels: (quantity, patch, group)."""
    sums = flox.groupby_reduce(
        np.moveaxis(quantities, -3, 0),
        labels,
        func="sum",
        expected_groups=np.arange(N_LABELS),
        axis=(-2, -1),
        fill_value=0.0,
        dtype=np.float64,
        engine=engine,  # type: ignore[arg-type]  # flox checks the name
    )[0]
    return np.asarray(sums)


def _clear(
    quantities: np.ndarray, top: bool, bottom: bool, left: bool = False, right: bool = False
) -> np.ndarray:
    """Zero the quantities within ``HALO`` of the named sides (they are counted elsewhere)."""
    for flag, index in (
        (top, np.s_[..., :HALO, :]),
        (bottom, np.s_[..., -HALO:, :]),
        (left, np.s_[..., :HALO]),
        (right, np.s_[..., -HALO:]),
    ):
        if flag:
            quantities[index] = 0
    return quantities


def _strip(arrays: Sequence[np.ndarray], index: Any) -> tuple[np.ndarray, ...]:
    return tuple(np.array(a[index], copy=True) for a in arrays)  # copies free the chunk


def chunk_pass(
    pred: np.ndarray,
    target: np.ndarray,
    labels: np.ndarray,
    internal: tuple[bool, bool, bool, bool] = (False,) * 4,
    engine: str = DEFAULT_ENGINE,
) -> dict[str, Any]:
    """Everything one chunk gives, read once: its grouped sums and its edge strips.

    Parameters
    ----------
    pred, target
        (patch, band, y, x) reflectance x10000; ``labels`` (patch, y, x).
    internal
        Whether the top, bottom, left and right sides are chunk borders inside the
        image (rather than its edge, where zero padding is right).

    Returns
    -------
    dict
        ``sums`` (quantity, patch, group) over the pixels that need no other chunk (all
        but those within ``HALO`` of an internal side), and the ``FRAME``-wide strips
        ``top``, ``bottom``, ``left``, ``right`` as (pred, target, labels) for the seams.
    """
    pad = [(0, 0)] * (pred.ndim - 2) + [(HALO, HALO), (HALO, HALO)]
    quantities = quantities_block(np.pad(pred, pad), np.pad(target, pad), HALO)
    _clear(quantities, *internal)
    arrays = (pred, target, labels)
    return {
        "sums": _group_sum(quantities, labels, engine),
        "top": _strip(arrays, np.s_[..., :FRAME, :]),
        "bottom": _strip(arrays, np.s_[..., -FRAME:, :]),
        "left": _strip(arrays, np.s_[..., :FRAME]),
        "right": _strip(arrays, np.s_[..., -FRAME:]),
    }


def _beside(
    side: dict[str, Any] | None, like: np.ndarray, cols: slice, key: str, part: int
) -> np.ndarray:
    """``HALO`` columns of a neighbour's strip, or zeros past the image edge."""
    if side is None:
        return np.zeros((*like.shape[:-1], HALO), dtype=like.dtype)
    return side[key][part][..., cols]


def row_seam(
    above: Sequence[Any],
    below: Sequence[Any],
    engine: str = DEFAULT_ENGINE,
) -> np.ndarray:
    """Grouped sums of the ``2 HALO`` rows around a border between two chunk rows.

    ``above`` and ``below``: :func:`chunk_pass` results of the chunks left of, at and
    right of the seam's column, in the rows above and below (None past the image edge).
    """
    context = []
    for part in (0, 1):  # pred, target: (patch, band, 2 FRAME, HALO + x + HALO)
        centre = np.concatenate([above[1]["bottom"][part], below[1]["top"][part]], axis=-2)
        left = [
            _beside(s, c[1][k][part], np.s_[-HALO:], k, part)
            for s, c, k in ((above[0], above, "bottom"), (below[0], below, "top"))
        ]
        right = [
            _beside(s, c[1][k][part], np.s_[:HALO], k, part)
            for s, c, k in ((above[2], above, "bottom"), (below[2], below, "top"))
        ]
        context.append(
            np.concatenate(
                [np.concatenate(left, axis=-2), centre, np.concatenate(right, axis=-2)], axis=-1
            )
        )
    quantities = quantities_block(context[0], context[1], HALO)
    labels = np.concatenate(
        [above[1]["bottom"][2][..., -HALO:, :], below[1]["top"][2][..., :HALO, :]], axis=-2
    )
    return _group_sum(quantities, labels, engine)


def column_seam(
    left: dict[str, Any],
    right: dict[str, Any],
    top: bool,
    bottom: bool,
    engine: str = DEFAULT_ENGINE,
) -> np.ndarray:
    """Grouped sums of the ``2 HALO`` columns around a border between two chunks.

    Rows within ``HALO`` of an internal ``top`` / ``bottom`` border are left to the row
    seams (which cover the crossings).
    """
    pad = [(0, 0)] * (left["right"][0].ndim - 2) + [(HALO, HALO), (0, 0)]
    context = [
        np.pad(np.concatenate([left["right"][part], right["left"][part]], axis=-1), pad)
        for part in (0, 1)
    ]
    quantities = _clear(quantities_block(context[0], context[1], HALO), top, bottom)
    labels = np.concatenate([left["right"][2][..., -HALO:], right["left"][2][..., :HALO]], axis=-1)
    return _group_sum(quantities, labels, engine)


def _add(*parts: Any) -> Any:
    total = parts[0]["sums"] if isinstance(parts[0], dict) else parts[0]
    for part in parts[1:]:
        total = total + (part["sums"] if isinstance(part, dict) else part)
    return total


def _tree_sum(parts: list[Key], name: str, k: int, fan_in: int = 8) -> dict[Key, Any]:
    """Tasks adding the results ``parts`` ``fan_in`` at a time, up to the key ``(name, k)``."""
    tasks: dict[Key, Any] = {}
    level = 0
    while len(parts) > 1:
        sums: dict[Key, Any] = {
            (name, k, level, n): (_add, *parts[start : start + fan_in])
            for n, start in enumerate(range(0, len(parts), fan_in))
        }
        tasks.update(sums)
        parts, level = list(sums), level + 1
    tasks[name, k] = (_add, parts[0])
    return tasks


def _patch_chunk_tasks(
    inputs: Sequence[str], token: str, k: int, grid: Sequence[int], engine: str
) -> tuple[dict[Key, Any], Key]:
    """The tasks of chunk ``k`` of patches, and the key of its (quantity, patch, group)
    sums: a :func:`chunk_pass` per spatial chunk of the (rows, columns) ``grid``, the
    seams between them, the tree sum of all.

    ``inputs``: the names of the (patch, band, y, x) prediction and target and the
    (patch, y, x) labels, on the same chunks (``band`` in one).
    """
    pred, target, labels = inputs
    ny, nx = grid

    def cell(i: int, j: int) -> Key:
        return (f"chunk_pass-{token}", k, i, j)

    def near(i: int, j: int) -> Key | None:  # None past the image's left or right edge
        return cell(i, j) if 0 <= j < nx else None

    cells: dict[Key, Any] = {
        cell(i, j): (
            chunk_pass,
            (pred, k, 0, i, j),
            (target, k, 0, i, j),
            (labels, k, i, j),
            (i > 0, i < ny - 1, j > 0, j < nx - 1),
            engine,
        )
        for i, j in product(range(ny), range(nx))
    }
    rows: dict[Key, Any] = {
        (f"row_seam-{token}", k, i, j): (
            row_seam,
            [near(i, j - 1), cell(i, j), near(i, j + 1)],
            [near(i + 1, j - 1), cell(i + 1, j), near(i + 1, j + 1)],
            engine,
        )
        for i, j in product(range(ny - 1), range(nx))
    }
    columns: dict[Key, Any] = {
        (f"column_seam-{token}", k, i, j): (
            column_seam,
            cell(i, j),
            cell(i, j + 1),
            i > 0,
            i < ny - 1,
            engine,
        )
        for i, j in product(range(ny), range(nx - 1))
    }
    name = f"chunk_sums-{token}"
    total = _tree_sum([*cells, *rows, *columns], name, k)
    return {**cells, **rows, **columns, **total}, (name, k)


def _at_least_min_chunk(chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of at least :data:`MIN_CHUNK` pixels (one chunk if the axis is shorter)."""
    if min(chunks) >= MIN_CHUNK or len(chunks) == 1:
        return chunks
    if sum(chunks) < 2 * MIN_CHUNK:
        return (sum(chunks),)
    return tuple(da.overlap.ensure_minimum_chunksize(MIN_CHUNK, chunks))


def streamed_sums(
    pred: da.Array, target: da.Array, labels: da.Array, engine: str = DEFAULT_ENGINE
) -> da.Array:
    """(quantity, patch, group) sums of (patch, band, y, x) images, each chunk read once.

    One task per chunk computes the per-pixel quantities of all its pixels that need no
    other chunk, sums them per group (flox) and hands on its edge strips (``FRAME``
    pixels wide); small seam tasks then do the pixels within ``HALO`` of the borders
    between chunks from those strips. No task but a chunk's own holds the chunk, so
    memory is bounded by the chunk size however large the scene (a halo exchange keeps
    a row of chunks waiting for their neighbours). Each pixel is computed from the same
    neighbourhood as in one piece, so no value depends on the chunking. All the tasks
    make one graph layer, built in time linear in the number of chunks.
    """
    spatial = {axis: _at_least_min_chunk(labels.chunks[axis]) for axis in (-2, -1)}
    arrays = [
        a.rechunk({a.ndim + axis: c for axis, c in spatial.items()}) for a in (pred, target, labels)
    ]
    token = tokenize(*arrays, engine)
    name = f"m3rcr-metric-sums-{token}"
    inputs, grid = [a.name for a in arrays], arrays[2].numblocks[1:]
    tasks: dict[Key, Any] = {}
    per_chunk = []  # the keys of the sums of each chunk of patches
    for k in range(labels.numblocks[0]):
        chunk_tasks, key = _patch_chunk_tasks(inputs, token, k, grid, engine)
        tasks.update(chunk_tasks)
        per_chunk.append(key)
    tasks[name, 0, 0, 0] = (np.concatenate, per_chunk, 1)  # along patch
    # all in one layer: a layer per task (a ``delayed`` call each) merged all the layers
    # of the inputs once per task, quadratic in the number of chunks
    graph = HighLevelGraph.from_collections(name, tasks, dependencies=arrays)
    shape = (len(QUANTITIES), labels.shape[0], N_LABELS)
    return da.Array(graph, name, chunks=tuple((n,) for n in shape), dtype=np.float64)


def group_sums(pred: Any, target: Any, labels: Any, engine: str = DEFAULT_ENGINE) -> Any:
    """(quantity, patch, group) sums: :func:`chunk_pass` on NumPy arrays, else streamed."""
    if is_lazy(pred, target, labels):
        return streamed_sums(da.asarray(pred), da.asarray(target), da.asarray(labels), engine)
    return chunk_pass(np.asarray(pred), np.asarray(target), np.asarray(labels), engine=engine)[
        "sums"
    ]


def _check_sums_block(sums: np.ndarray, pred_name: str, target_name: str) -> np.ndarray:
    """Raise :class:`SchemaError` on NaN or infinite predictions (alike); return ``sums``."""
    totals = sums.reshape(len(QUANTITIES), -1).sum(axis=1)
    n_pixels = totals[_Q["n_valid"]] + totals[_Q["n_nodata"]]
    if n_pixels > 0 and totals[_Q["nan_pred"]] == n_pixels:
        raise SchemaError(f"prediction {pred_name!r} is all NaN or infinite")
    if totals[_Q["nan_in_valid"]] > 0:
        raise SchemaError(
            f"prediction {pred_name!r} is NaN or infinite at "
            f"{int(totals[_Q['nan_in_valid']])} pixel(s) where the target {target_name!r} "
            "has data"
        )
    return sums


def check_sums(sums: Any, pred_name: str = "pred", target_name: str = "target") -> Any:
    """``sums`` (quantity first) with the NaN / inf checks of the prediction: at once on a
    NumPy array, in the graph (raised when computed) on a dask one."""
    if is_lazy(sums):
        sums = sums.rechunk(-1)
    return map_blocks(
        _check_sums_block,
        sums,
        dtype=sums.dtype,
        token="m3rcr-metric-check",
        pred_name=pred_name,
        target_name=target_name,
    )
