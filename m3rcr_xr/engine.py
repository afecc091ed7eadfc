"""The tiling engine: the Dask graph of a scene or a collection, run tile by tile.

:func:`tile_scene` and :func:`tile_collection` turn lazy normalised inputs into lazy
output blocks, with the tile tasks of :mod:`m3rcr_xr.blending`;
:func:`m3rcr_xr.decloud` and :func:`m3rcr_xr.classify` build their output on them, and
check the arguments they share here (:func:`check_tile_arguments`,
:func:`plan_tiles`, :func:`check_task`).

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
    every tile task runs is one :class:`~m3rcr_xr.blending.TileJob`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask import delayed

from . import runner
from .blending import Cut, TileJob, accumulate, assemble, cut
from .devices import check_device, resolve_device
from .exceptions import SchemaError, UsageError, argument, check_integer
from .options import OPTIONS
from .progress import distributed_client
from .resources import GPU_RESOURCE, annotate
from .tiling import TilePlan, block_end, group_size, groups, make_plan, pad, runs

DEFAULT_TILE = 256  # for models that take any size


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
    """Stage 1 (see module doc): each group's canvas, cut
    (:class:`~m3rcr_xr.blending.Cut`), a Delayed, by its place ``(a, b)``.

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
) -> list[Cut]:
    """The tiles of ``groups`` run through the network
    (:func:`~m3rcr_xr.blending.accumulate`), and each group's canvas cut
    (:func:`~m3rcr_xr.blending.cut`) in the same task: no canvas outlives it."""
    canvases = accumulate(inputs, job, [(group.rows, group.cols) for group in groups])
    return [
        cut(canvas, base, *group.reach, job)
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
            block = delayed(assemble, pure=True)(cuts[a, b], *parts, job)
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


# ------------------------------------------------------------------------- arguments
def check_tile_arguments(
    tile: int | None, overlap: int | None, batch_size: int, device: Any
) -> tuple[int | None, int | None, int, str]:
    """The tiling and running arguments of :func:`m3rcr_xr.decloud`, checked, as plain ints.

    The device is checked for presence only when the tasks run in this process: with a
    ``distributed`` client they run on its workers, which may have GPUs that this process
    (say, a login node) has not; a worker without the device then refuses it when it
    builds the model (:func:`~m3rcr_xr.devices.resolve_device`).
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
