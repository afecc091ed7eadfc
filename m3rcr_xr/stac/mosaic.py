"""Loading STAC items with odc-stac, and the optical mosaic: each pixel whole (all its bands,
its UDM2) from the first item where it is valid, lazily, a tile reading only its items."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import pystac
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from ..cloudmask import unusable_bits
from .assets import UDM2_BANDS
from .grids import item_geobox


# ------------------------------------------------------------------------ loading
def _one_group(*_: Any) -> int:
    """odc-stac's ``groupby``: every item in one group, one scene (a mosaic)."""
    return 0


def _each_item(_item: Any, _parsed: Any, index: int) -> int:
    """odc-stac's ``groupby``: each item a layer of its own, in the order given."""
    return index


def load(
    items: Sequence[pystac.Item],
    bands: list[str],
    geobox: GeoBox,
    chunks: Any,
    *,
    per_item: bool = False,
    **kwargs: Any,
) -> xr.Dataset:
    """The bands on ``geobox``: fused band by band into one scene by odc-stac (the first
    item with data wins), or with ``per_item`` one layer per item along ``time``."""
    import odc.stac

    loaded = odc.stac.load(
        items,
        bands=bands,
        geobox=geobox,
        groupby=_each_item if per_item else _one_group,
        preserve_original_order=True,  # the first item given wins where they overlap
        resampling="nearest",
        chunks=None if chunks is None else {"time": 1, **chunks},
        **kwargs,
    )
    return loaded if per_item else loaded.isel(time=0, drop=True)


def stack(loaded: xr.Dataset, names: Sequence[str], dim: str) -> xr.DataArray:
    """The variables ``names`` of odc-stac's result as one array along ``dim``."""
    array = xr.concat([loaded[name] for name in names], dim=dim)
    array.attrs = {"_FillValue": loaded[names[0]].attrs.get("nodata")}
    return array.rio.write_crs(loaded.rio.crs)


def band_names(asset_name: str, count: int) -> list[str]:
    """odc-stac's names of an asset's ``count`` bands: ``asset.1``, ``asset.2``... (the
    asset's own name where it has one band)."""
    return [f"{asset_name}.{i}" for i in range(1, count + 1)] if count > 1 else [asset_name]


def in_band_order(
    loaded: xr.Dataset, bands: Sequence[str], orders: Sequence[list[int] | None]
) -> xr.Dataset:
    """odc-stac's per-item layers with ``bands`` (an asset's, named by position in its
    file) in the library's order, item by item along ``time``: each item's file may
    order them its own way (``orders``, None: in order already); lazily."""
    if all(order is None for order in orders):
        return loaded
    identity = list(range(len(bands)))
    reordered = {
        name: xr.concat(
            [
                loaded[bands[(order or identity)[position]]].isel(time=[i])
                for i, order in enumerate(orders)
            ],
            "time",
        )
        for position, name in enumerate(bands)
    }
    return loaded.assign(reordered)


# ------------------------------------------------------------------------- mosaic
def _first_valid_index(
    items: Sequence[Sequence[np.ndarray]], optical_count: int, nodata: float | None = None
) -> np.ndarray:
    """For each pixel, the index in ``items`` of the first item whose pixel is valid (0
    where none is): the item that gives all the pixel's bands, UDM2 included.

    ``items[i]`` holds item i's optical bands, each (1, y, x), then its UDM2's band 8
    if it has one. A pixel is valid where its optical bands are not all missing (0, NaN
    or the declared ``nodata``: a dark pixel may read 0 in one band) and not unusable
    in its UDM2's band 8 (blackfill, or one of its bands missing or suspect:
    :func:`m3rcr_xr.cloudmask.unusable_bits`). A UDM2 declares no nodata: its 0 is a value, so it is
    never fused band by band.

    Examples
    --------
    >>> dark = [np.array([[[0, 0]]]), np.array([[[300, 0]]])]  # a dark pixel, a missing one
    >>> later = [np.array([[[5000, 5000]]]), np.array([[[5000, 5000]]])]
    >>> _first_valid_index([dark, later], 2).tolist()
    [[0, 1]]
    """
    index = np.zeros(items[0][0].shape[1:], np.uint16)
    done = np.zeros(index.shape, bool)
    for position, bands in enumerate(items):
        take = _valid(bands, optical_count, nodata) & ~done
        index[take] = position
        done |= take
    return index


def _valid(bands: Sequence[np.ndarray], optical_count: int, nodata: float | None) -> np.ndarray:
    valid = np.zeros(bands[0].shape[1:], bool)
    for block in bands[:optical_count]:
        valid |= (block[0] != 0) & ~np.isnan(block[0]) & (block[0] != nodata)
    if len(bands) > optical_count:  # the UDM2's band 8
        valid &= (bands[optical_count][0] & unusable_bits(optical_count)) == 0
    return valid


def _pick(index: np.ndarray, blocks: Sequence[np.ndarray]) -> np.ndarray:
    """One band (y, x): each pixel from ``blocks[index]`` (blocks (1, y, x), one per item)."""
    picked = blocks[0][0].copy()
    for position, block in enumerate(blocks[1:], start=1):
        chosen = index == position
        picked[chosen] = block[0][chosen]
    return picked


def _tile_items(
    geobox: GeoBox, chunks: Sequence[Sequence[int]], footprints: Sequence[Geometry]
) -> dict[tuple[int, int], list[int]]:
    """For each tile (row, column) of ``geobox`` cut by ``chunks`` (y, x), the items whose
    footprint reaches it (item 0 where none does: odc-stac's empty fill)."""
    ychunks, xchunks = chunks
    tiles: dict[tuple[int, int], list[int]] = {}
    ystarts, xstarts = np.cumsum((0, *ychunks)), np.cumsum((0, *xchunks))
    for j, k in itertools.product(range(len(ychunks)), range(len(xchunks))):
        tile = geobox[ystarts[j] : ystarts[j + 1], xstarts[k] : xstarts[k + 1]].extent
        tiles[j, k] = [i for i, f in enumerate(footprints) if f.intersects(tile)] or [0]
    return tiles


def _tiled(
    name: str, graph: dict[Any, Any], like: da.Array, dependencies: list[Any], dtype: Any
) -> da.Array:
    """A (y, x) dask array of the tasks ``graph`` on the spatial chunks of ``like``."""
    layer = HighLevelGraph.from_collections(name, graph, dependencies=dependencies)
    return da.Array(layer, name, chunks=like.chunks[1:], dtype=dtype)


def _lazy_mosaic(
    bands: Sequence[da.Array],
    validity: Sequence[da.Array],
    optical_count: int,
    nodata: float | None,
    tiles: Mapping[tuple[int, int], list[int]],
) -> list[da.Array]:
    """Each of ``bands`` (item, y, x) as one mosaic band (y, x), tile by tile: a task per
    tile picks each pixel's item from the ``validity`` bands (:func:`_first_valid_index`),
    a task per band and tile takes its pixels. A tile reads only its items (``tiles``),
    and a band is read only where it is used."""
    token = tokenize(*bands, optical_count, nodata)
    index_name = f"stac-mosaic-index-{token}"
    index_graph = {
        (index_name, j, k): (
            _first_valid_index,
            [[(band.name, i, j, k) for band in validity] for i in items],
            optical_count,
            nodata,
        )
        for (j, k), items in tiles.items()
    }
    index = _tiled(index_name, index_graph, bands[0], list(validity), np.uint16)
    mosaic = []
    for band in bands:
        name = f"stac-mosaic-{band.name}-{token}"
        graph = {
            (name, j, k): (_pick, (index_name, j, k), [(band.name, i, j, k) for i in items])
            for (j, k), items in tiles.items()
        }
        mosaic.append(_tiled(name, graph, band, [index, band], band.dtype))
    return mosaic


def first_valid_mosaic(
    loaded: xr.Dataset, bands: Sequence[str], optical_count: int, footprints: Sequence[Geometry]
) -> xr.DataArray:
    """The bands of odc-stac's per-item layers (optical, then UDM2) as one mosaic (band,
    y, x), each pixel whole from the first item where it is valid."""
    if loaded.sizes["time"] == 1:  # one item: nothing to choose, its bands as they are
        merged = xr.concat([loaded[name] for name in bands], "band").isel(time=0)
        return merged.drop_vars("time").rio.write_crs(loaded.rio.crs)
    arrays = [loaded[name].data for name in bands]
    validity = arrays[:optical_count] + arrays[optical_count + UDM2_BANDS - 1 :]  # + band 8
    nodata = loaded[bands[0]].attrs.get("nodata")
    if isinstance(arrays[0], da.Array):
        tiles = _tile_items(loaded.odc.geobox, arrays[0].chunks[1:], footprints)
        picked = _lazy_mosaic(arrays, validity, optical_count, nodata, tiles)
        stacked = da.stack(picked)
    else:  # chunks=None: loaded already
        items = [[a[i : i + 1] for a in validity] for i in range(loaded.sizes["time"])]
        index = _first_valid_index(items, optical_count, nodata)
        stacked = np.stack([_pick(index, [a[i : i + 1] for i in range(len(a))]) for a in arrays])
    coords = {"y": loaded["y"], "x": loaded["x"]}
    array = xr.DataArray(stacked, dims=("band", "y", "x"), coords=coords)
    return array.rio.write_crs(loaded.rio.crs)


def footprints(items: Sequence[pystac.Item], asset_name: str, scene: GeoBox) -> list[Geometry]:
    """Where each item may have data on the scene: its grid and its STAC geometry (odc-stac
    reads an item in the tiles its geometry reaches), a scene pixel wider."""
    margin, crs = 2 * abs(scene.resolution.x), scene.crs
    assert crs is not None  # the scene's grid has the items' CRS or the one asked for
    shapes = []
    for item in items:
        shape = item_geobox(item, asset_name).extent.to_crs(crs)
        if item.geometry:
            shape = shape.union(Geometry(item.geometry, "EPSG:4326").to_crs(crs))
        shapes.append(shape.buffer(margin))
    return shapes
