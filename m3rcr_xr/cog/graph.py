"""odc-geo's Dask graph of one GeoTIFF (:func:`cog_graph`): bands interleaved by pixel,
overviews that keep 2 pixels a side, and a writer that writes as it goes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from dask.utils import key_split

from .arrays import LOSSY_8BIT
from .records import software_tag

#: compressed bytes a part of odc-geo's writer gathers before it goes to disk
SPILL_BYTES = 4 * 2**20
#: part numbers odc-geo's file writer allows, and at most how many each task may use
MAX_PARTS, WRITES_PER_TASK = 10_000, 4


def cog_graph(array: xr.DataArray, dst: Path, compress: str, size: int, **kwargs: Any) -> Any:
    """odc-geo's graph writing ``array`` to ``dst`` (a Dask ``Delayed``).

    Bands are interleaved by pixel (``(y, x, band)``, GDAL's COG default): one tile
    holds every band, so each block of the scene is compressed once and let go. Band
    by band (``(band, y, x)``), odc-geo compresses each band in its own stream, and
    every block, which holds all bands, stayed in memory until the last band's stream
    reached it: the whole raw scene, at worst. And odc-geo gives each compression task
    a single part number, so no task could write on its own and compressed tiles
    gathered in memory (20 MiB, then a whole tree of merges); several part numbers a
    task and a smaller spill let each write as it goes, within the writer's 10 000 parts.
    """
    from odc.geo.cog import save_cog_with_dask

    array = _two_pixels_at_least(array)
    array = array.chunk({"y": size, "x": size, **({"band": -1} if "band" in array.dims else {})})
    if "band" in array.dims:
        # one band stays a plane: tifffile refuses a single sample interleaved by pixel
        many = array.sizes["band"] > 1
        array = array.transpose(*(("y", "x", "band") if many else ("band", "y", "x")))
    # no band statistics: odc-geo computes them from an overview level in a graph of
    # their own, which ran every block of the source twice (a lazy decloud's network too)
    blocksize = _blocksizes((array.sizes["y"], array.sizes["x"]), size)
    kwargs = {"compression": compress, "blocksize": blocksize, "stats": False, **kwargs}
    kwargs["software"] = software_tag()  # what overwrite=True checks (check_replaceable)
    if str(compress).lower() not in LOSSY_8BIT:
        # bands, not colours: odc-geo tags 3 or 4 samples as RGB(A), and GDAL then takes
        # the fourth (NIR) for an alpha mask and the first (blue) for red
        kwargs["photometric"] = "minisblack"
    tasks = sum(bag.npartitions for bag in save_cog_with_dask(array, "", **kwargs)["tiles"])
    writes = max(1, min(WRITES_PER_TASK, (MAX_PARTS - 1) // max(tasks, 1)))
    graph = save_cog_with_dask(array, dst, writes_per_chunk=writes, spill_sz=SPILL_BYTES, **kwargs)
    return _seeds_fused(graph)


def _two_pixels_at_least(array: xr.DataArray) -> xr.DataArray:
    """``array`` with a side of one pixel grown by a pixel of its nodata (0 for
    integers without one) on the bottom or right, as odc-geo grows the image: odc-geo
    computes the grid of a level below its last, which has a side of 0 pixels there."""
    short = [dim for dim in ("y", "x") if array.sizes[dim] == 1]
    if not short:
        return array
    transform = array.rio.transform()
    origin_step = {"x": (transform.c, transform.a), "y": (transform.f, transform.e)}
    nodata = array.rio.encoded_nodata
    grown = array.pad({dim: (0, 1) for dim in short}, constant_values=nodata or 0)
    centres = np.arange(2) + 0.5
    grown = grown.assign_coords(
        {dim: origin_step[dim][0] + origin_step[dim][1] * centres for dim in short}
    ).assign_attrs(array.attrs)
    return grown if nodata is None else grown.rio.write_nodata(nodata, encoded=True)


def _blocksizes(shape: tuple[int, int], size: int) -> list[int]:
    """odc-geo's ``blocksize``: ``size`` at each level, and overviews down to one
    block, as odc-geo makes them, but never down to a side of one pixel.

    odc-geo makes as many levels as the last block size of the list needs to fit the
    image, and computes the grid of the level below the last one too: a side of one
    pixel in the last level is a side of 0 there, and a ``ZeroDivisionError``. So the
    levels stop while every side keeps 2 pixels (odc-geo rounds the sides up to a
    multiple of ``2**levels``), and the list ends with a block size (never a level's
    block) that gives odc-geo that many levels.
    """
    levels = 0
    while size < max(shape) >> levels:  # odc-geo's count: halve until one block
        levels += 1
    levels = min(levels, (min(shape) - 1).bit_length() - 1)
    last = -(-max(max(shape) >> levels, 1) // 16) * 16  # a multiple of 16 fitting it
    return [size] * (levels + 1) + [last]


def _seeds_fused(graph: Any) -> Any:
    """``graph`` (a ``Delayed``) with each seed of odc-geo's writer copied, and fused
    into the task that appends to it.

    The writer starts each part of the file from a seed (an empty ``MPUChunk``, a root
    task), which joins the graph where a batch of compressed tiles is appended to it:
    ``mpu.append`` tasks. Dask's ordering ran these roots, and so the appends, late: at
    8192x8192 (four float32 bands, 512-pixel blocks) 14 batches of four compressed
    tiles, 196 MiB, waited for theirs. And the seed is a value held by the graph, which
    the append grows in place: the tiles a part did not write in its own task (a batch
    under ``SPILL_BYTES``, an overview level of fewer than 20 tiles, which odc-geo does
    not batch) stayed referenced until the whole write was done. Fused, a batch is
    appended once it is compressed; copied, what the append holds is let go with it.
    """
    from dask._task_spec import Task, convert_legacy_graph
    from dask.core import reverse_dict
    from dask.delayed import Delayed

    dsk = convert_legacy_graph(dict(graph.__dask_graph__()))
    dependents = reverse_dict({key: task.dependencies for key, task in dsk.items()})
    for root in [key for key, task in dsk.items() if not task.dependencies]:
        users = list(dependents[root])
        if len(users) == 1 and key_split(users[0]).startswith("mpu.append"):
            seed = Task(root, copy.deepcopy, dsk.pop(root))
            dsk[users[0]] = Task.fuse(seed, dsk[users[0]], key=users[0])
    return Delayed(graph.key, dsk)
