"""Scenes from STAC: PlanetScope, Sentinel-1 RTC and ESA WorldCover items, via odc-stac.

:func:`open_stac` returns the same *scene* as :func:`m3rcr_xr.open_quartet` (see
:mod:`m3rcr_xr.schema`), from STAC items instead of files: the optical items define
the grid (one CRS, 3 m, north-up), several of them are mosaicked into one scene (the
first item with a valid pixel wins, the whole pixel: all its bands and its UDM2 from
that item), and the 10 m layers go onto that grid as ``align="coords"``
puts them: by nearest, each optical pixel centre taking the coarse pixel that holds it.

The asset layouts it knows (:data:`ASSETS`; any name can be overridden with
``assets=``):

``ortho_analytic_4b_sr``
    PlanetScope surface reflectance, 4 bands (blue, green, red, NIR), uint16
    reflectance x10000, nodata 0. Bands named by the asset (``eo:bands`` common names,
    STAC 1.1 ``bands``) or else by the file's band descriptions are put in that order by
    name, as :func:`m3rcr_xr.rasters.band_order` does for ``open_quartet``; unnamed, by
    position.
``ortho_udm2``
    PlanetScope's usable data mask (8 bands), read when every optical item in the scene
    has it (items outside a ``bbox`` are left out): it gives ``cloudmask`` and the
    optical nodata, and is not kept in the scene. Its file
    must lie on its optical file's grid, as ``open_quartet`` requires.
``vv``, ``vh``
    Sentinel-1 RTC backscatter in linear power, converted to dB (``10 log10``; powers
    at or below :data:`SAR_POWER_FLOOR` become :data:`SAR_DB_FLOOR`, -50 dB). A chunk
    mostly negative (dB, not power) raises :class:`InputFileError` when read
    (:func:`m3rcr_xr.io.check_sar_unit`). Assets in dB are read as they are with
    ``sar_unit="dB"``; then a chunk of linear power is refused.
``map``
    ESA WorldCover class codes.

A ``scale``/``offset`` in an asset's ``raster:bands`` (value = raw x scale + offset)
is applied to SAR and to land cover (an integer offset; a scale is refused); optical
assets must store reflectance x10000 (scale 1 or 0.0001, offset 0), else are refused.
A scale/offset in a file's header counts as declared where the item declares none; one
the item declares must agree with the header's (unless that is 1, 0), else is refused.

Items need the ``proj`` extension (a CRS, ``proj:shape`` and ``proj:transform``):
it gives each item's grid without opening its files; an optical asset's must be its
file's grid. Each asset's header and last
block are still read once at open time, so that a missing, unreachable or truncated
file fails now, naming it, not half-way through a write.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from numbers import Real
from os import PathLike
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import pyproj
import pystac
import rasterio
import xarray as xr
from affine import Affine
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox, Geometry, box, unary_union
from rasterio.errors import RasterioError

from . import href
from .align import align_to, check_north_up, fill_nan_with_mean, yx_dims
from .cloudmask import UDM2_BANDS as CLOUDMASK_UDM2_BANDS
from .cloudmask import (
    mask_nodata,
    udm2_classes_for,
    udm2_cloudmask,
    udm2_nodata,
    unusable_bits,
)
from .exceptions import AlignmentError, InputFileError, UsageError, argument, check_positive
from .io import (
    assemble_layers,
    check_same_grid,
    check_sar_unit,
    describe_optical,
    landcover_attrs,
    rechunk_like,
    sar_attrs,
)
from .landcover import NODATA_CODE, to_worldcover
from .rasters import (
    apply_scaling,
    as_uint16,
    band_order,
    check_header,
    check_readable,
    check_reflectance,
    map_blocks,
    names_any,
    spatial_chunks,
)
from .schema import BANDS, POLARIZATIONS, validate

log = logging.getLogger(__name__)

#: asset names of each layer, as PlanetScope, Sentinel-1 RTC and WorldCover items have them
ASSETS: Mapping[str, str] = {
    "optical": "ortho_analytic_4b_sr",
    "udm2": "ortho_udm2",
    "vv": "vv",
    "vh": "vh",
    "landcover": "map",
}
#: bands of a PlanetScope UDM2 asset
UDM2_BANDS = 8
#: linear SAR power at or below this (zeros included) is taken as this value: -50 dB
SAR_POWER_FLOOR = 1e-5
SAR_DB_FLOOR = 10 * math.log10(SAR_POWER_FLOOR)
#: what SAR assets may hold (``sar_unit=``): linear power (converted to dB) or dB
SAR_UNITS = ("power", "dB")
#: asset headers read at once when an open checks them (remote reads wait on the network)
HEADER_THREADS = 8

ItemsLike = (
    pystac.Item | pystac.ItemCollection | pystac.Catalog | Iterable[pystac.Item] | str | PathLike
)


# -------------------------------------------------------------------------- items
class _FsspecStacIO(pystac.stac_io.DefaultStacIO):
    """pystac reads through fsspec: local paths, ``https://`` and ``s3://`` alike."""

    def read_text_from_href(self, href_: str) -> str:
        return href.read_bytes(href_, "STAC JSON").decode("utf-8")


def read_items(source: ItemsLike) -> list[pystac.Item]:
    """The STAC items of ``source``: an item, an item collection, a catalog (all its
    items, recursively), a sequence of items, or the path or URL of any of them as JSON.

    Raises
    ------
    InputFileError
        Naming the file or URL: it cannot be read, or is not STAC JSON.
    """
    if isinstance(source, pystac.Item):
        return [source]
    if isinstance(source, pystac.Catalog):
        return list(source.get_items(recursive=True))
    if isinstance(source, str | PathLike):
        return _read_json_items(source)
    items = list(source)
    wrong = [type(item).__name__ for item in items if not isinstance(item, pystac.Item)]
    if wrong:
        raise UsageError(f"expected STAC items, got {wrong[0]}")
    return items


def _read_json_items(source: str | PathLike) -> list[pystac.Item]:
    location = str(source) if href.is_remote(source) else os.path.abspath(href.local_path(source))
    stac_io = _FsspecStacIO()
    try:
        doc = json.loads(stac_io.read_text_from_href(location))
        if doc.get("type") == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(doc))
            for item in items:  # relative asset hrefs: relative to the collection's file
                if item.get_self_href() is None:
                    item.set_self_href(location)
            return items
        found = pystac.read_file(location, stac_io=stac_io)
        return [found] if isinstance(found, pystac.Item) else list(found.get_items(recursive=True))  # type: ignore[attr-defined]
    except InputFileError:  # a file that cannot be read, already named
        raise
    except (ValueError, KeyError, AttributeError, pystac.STACError, pystac.STACTypeError) as err:
        raise InputFileError(
            f"{source}: not a STAC item, item collection or catalog ({err})"
        ) from href.cause(err)


def _crs(item: pystac.Item, asset: pystac.Asset) -> str | None:
    """The CRS of an asset from the ``proj`` extension (on the asset, else the item)."""
    for fields in (asset.extra_fields, item.properties):
        if fields.get("proj:code"):
            return str(fields["proj:code"])
        if fields.get("proj:epsg"):
            return f"EPSG:{int(fields['proj:epsg'])}"
        if fields.get("proj:wkt2"):
            return str(fields["proj:wkt2"])
    return None


def _proj(item: pystac.Item, asset: pystac.Asset, key: str) -> Any:
    return asset.extra_fields.get(key, item.properties.get(key))


def _asset(item: pystac.Item, asset_name: str) -> pystac.Asset:
    if asset_name not in item.assets:
        raise InputFileError(
            f"STAC item {item.id!r}: no asset {asset_name!r} (it has {sorted(item.assets)}); "
            f"name the asset with {argument('assets', {'LAYER': 'NAME'})}"
        )
    return item.assets[asset_name]


def item_geobox(item: pystac.Item, asset_name: str) -> GeoBox:
    """The pixel grid of an item's asset, from its ``proj`` fields.

    Raises
    ------
    InputFileError
        Naming the item: it has no such asset, or no CRS, shape or transform.
    AlignmentError
        Naming the item: its grid is rotated or sheared.
    """
    asset = _asset(item, asset_name)
    crs = _crs(item, asset)
    shape, transform = _proj(item, asset, "proj:shape"), _proj(item, asset, "proj:transform")
    if crs is None or shape is None or transform is None:
        missing = [
            k for k, v in (("CRS", crs), ("shape", shape), ("transform", transform)) if not v
        ]
        raise InputFileError(
            f"STAC item {item.id!r}: asset {asset_name!r} has no {' or '.join(missing)} "
            "(the proj extension: proj:code or proj:epsg, proj:shape, proj:transform)"
        )
    check_north_up(Affine(*transform[:6]), f"STAC item {item.id!r} asset {asset_name!r}")
    return GeoBox(tuple(shape), Affine(*transform[:6]), crs)


# -------------------------------------------------------------------------- grids
def snapped_geobox(bounds: BoundingBox, crs: Any, grid: Affine) -> GeoBox:
    """The smallest north-up grid that covers ``bounds``, with the pixels of ``grid``
    (size and phase), so that one item alone gives back its own grid exactly (a
    south-up item, positive y step, its pixels on the north-up grid of the same lines).

    Examples
    --------
    >>> south_up = Affine(3, 0, 500001, 0, 3, 3999822)  # 60 rows up to y = 4000002
    >>> geobox = snapped_geobox(BoundingBox(500001, 3999822, 500181, 4000002), None, south_up)
    >>> tuple(geobox.transform)[:6], geobox.shape
    ((3.0, 0.0, 500001.0, 0.0, -3.0, 4000002.0), Shape2d(x=60, y=60))
    """

    def edges(low: float, high: float, origin: float, step: float) -> tuple[float, int]:
        first = math.floor(round((low - origin) / step, 6))
        last = math.ceil(round((high - origin) / step, 6))
        return origin + first * step, max(last - first, 1)

    step_x, step_y = abs(grid.a), abs(grid.e)  # the same pixel lines, north-up
    left, width = edges(bounds.left, bounds.right, grid.c, step_x)
    top, height = edges(-bounds.top, -bounds.bottom, -grid.f, step_y)
    return GeoBox((height, width), Affine(step_x, 0, left, 0, -step_y, -top), crs)


def _union(geoboxes: Sequence[GeoBox], crs: Any) -> Geometry:
    union = unary_union(g.extent.to_crs(crs) for g in geoboxes)
    assert union is not None  # a union of at least one extent
    return union


def _check_overlap(items: Sequence[pystac.Item], geoboxes: Sequence[GeoBox], scene: Geometry):
    for item, geobox in zip(items, geoboxes, strict=True):
        if not geobox.extent.to_crs(scene.crs).intersects(scene):  # type: ignore[arg-type]
            raise AlignmentError(f"STAC item {item.id!r}: does not overlap the scene's extent")


def _degrees(extent: Geometry) -> str:
    """``extent``'s bounds in degrees, as a bbox is given: "west, south, east, north"."""
    return ", ".join(f"{value:.5f}" for value in extent.to_crs("EPSG:4326").boundingbox)


def _check_in_bbox(geoboxes: Sequence[GeoBox], bbox: Any, region: Geometry) -> None:
    """Refuse a ``bbox`` (``region`` in the scene's CRS) that misses all the optical
    items, naming where they lie in degrees (those it misses among others are left out
    by :func:`_overlapping`)."""
    if not any(_overlaps(geobox, region) for geobox in geoboxes):
        raise AlignmentError(
            f"{argument('bbox', bbox)}: does not overlap the optical items (their extent in "
            f"degrees, west, south, east, north: {_degrees(_union(geoboxes, 'EPSG:4326'))})"
        )


def _overlaps(geobox: GeoBox, region: Geometry) -> bool:
    """Whether ``geobox`` shares an area with ``region``: an edge alone gives no pixel."""
    extent = geobox.extent.to_crs(region.crs)  # type: ignore[arg-type]
    return extent.intersects(region) and not extent.touches(region)


def _overlapping(
    items: Sequence[pystac.Item], asset_name: str, scene: GeoBox, layer: str
) -> list[pystac.Item]:
    """The items whose ``asset_name`` overlaps the scene; the others (a search over a
    larger area than ``bbox``) give it no pixel and are left out, logged at INFO.

    Raises
    ------
    AlignmentError
        None of them overlaps the scene, naming them and where they lie in degrees.
    """
    geoboxes = [item_geobox(item, asset_name) for item in items]
    inside = [_overlaps(geobox, scene.extent) for geobox in geoboxes]
    if not any(inside):
        raise AlignmentError(
            f"{layer} STAC item{'s' * (len(items) > 1)} {_ids(items)}: none overlaps the "
            f"scene's extent (in degrees, west, south, east, north: theirs "
            f"{_degrees(_union(geoboxes, 'EPSG:4326'))}, the scene's {_degrees(scene.extent)})"
        )
    outside = [item for item, kept in zip(items, inside, strict=True) if not kept]
    if outside:
        log.info(
            "%d %s STAC item(s) left out, outside the scene's extent: %s",
            len(outside),
            layer,
            _ids(outside),
        )
    return [item for item, kept in zip(items, inside, strict=True) if kept]


def _ids(items: Sequence[pystac.Item], shown: int = 5) -> str:
    """The ids of ``items``, the first ``shown`` of them and how many more.

    Examples
    --------
    >>> _ids([pystac.Item(f"s{i}", None, None, "2020-07-01T00:00:00Z", {}) for i in range(7)], 2)
    "'s0', 's1' and 5 more"
    """
    ids = ", ".join(repr(item.id) for item in items[:shown])
    return ids + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _check_bbox(bbox: Any) -> tuple[float, float, float, float] | None:
    """``bbox`` as (west, south, east, north) floats, or :class:`UsageError` before any
    item is read: four finite numbers, in degrees (whatever the scene's CRS), south below
    north and west below east. A box across the antimeridian (west > east, as STAC
    writes one) is refused, not swapped: swapped, it would be another region.

    Examples
    --------
    >>> _check_bbox([11, 44.5, 12, 45])
    (11.0, 44.5, 12.0, 45.0)
    >>> _check_bbox((735000, 4984700, 735288, 4985010))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    m3rcr_xr.exceptions.UsageError: bbox=(735000, 4984700, 735288, 4985010): out of range: ...
    """
    if bbox is None:
        return None
    name = argument("bbox", bbox)
    values = list(bbox) if isinstance(bbox, Sequence | np.ndarray) else []
    if isinstance(bbox, str) or len(values) != 4 or not all(_finite(v) for v in values):
        raise UsageError(
            f"{name}: must be four finite numbers: west, south, east, north in degrees"
        )
    west, south, east, north = map(float, values)
    if not (max(abs(west), abs(east)) <= 180 and max(abs(south), abs(north)) <= 90):
        raise UsageError(
            f"{name}: out of range: a bbox is in degrees (longitude, latitude: EPSG:4326), "
            "whatever the scene's CRS; west and east from -180 to 180, south and north "
            "from -90 to 90"
        )
    if south >= north:
        raise UsageError(f"{name}: south {south:g} must be less than north {north:g}")
    if west == east:
        raise UsageError(f"{name}: west {west:g} must be less than east {east:g}")
    if west > east:
        raise UsageError(
            f"{name}: west {west:g} > east {east:g} is a box across the antimeridian (180 "
            "degrees), as STAC writes one, which is not supported: split it there, "
            f"({west:g}, {south:g}, 180, {north:g}) and (-180, {south:g}, {east:g}, "
            f"{north:g}), and open each (or swap west and east if they were given the "
            "wrong way round)"
        )
    return west, south, east, north


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite real number (numpy's too), not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_crs(crs: Any) -> None:
    """Refuse a ``crs`` that pyproj does not know, before any item is read."""
    if crs is None:
        return
    try:
        pyproj.CRS.from_user_input(crs)
    except (pyproj.exceptions.CRSError, TypeError) as err:
        raise UsageError(f"{argument('crs', crs)}: not a CRS ({err})") from err


def optical_geobox(
    items: Sequence[pystac.Item],
    asset_name: str,
    *,
    bbox: Sequence[float] | None = None,
    crs: Any = None,
    resolution: float | None = None,
) -> GeoBox:
    """The scene's grid: the optical items' extent (or ``bbox``: west, south, east,
    north in degrees, west below east), in ``crs`` (default: the first item's,
    projected or geographic), ``resolution`` in the CRS's units, on the first item's
    pixel phase. The default resolution: 3 (metres) in a projected CRS; in a geographic
    one, the first item's pixel size there (degrees).

    Raises
    ------
    UsageError
        ``crs`` is not a CRS; ``resolution`` is not a positive number; ``bbox`` is not
        four numbers in degrees with south below north and west below east (a box
        across the antimeridian, west > east in STAC, is refused: split it there).
    InputFileError
        An item without the asset or its ``proj`` fields.
    AlignmentError
        ``bbox`` misses all the items (those it misses among others are left to
        :func:`_overlapping`); without ``bbox``, an item that overlaps none of the items
        before it.
    """
    _check_crs(crs)
    checked = _check_bbox(bbox)
    if resolution is not None:
        check_positive("resolution", resolution)
    geoboxes = [item_geobox(item, asset_name) for item in items]
    first = geoboxes[0]
    target = crs if crs is not None else first.crs
    assert target is not None  # item_geobox refuses an item without a CRS
    if resolution is None:
        geographic = pyproj.CRS.from_user_input(str(target)).is_geographic
        resolution = abs(first.to_crs(target).resolution.x) if geographic else 3.0
    if checked is not None:
        region = box(*checked, "EPSG:4326").to_crs(target)
        _check_in_bbox(geoboxes, bbox, region)
    else:
        region = _union(geoboxes, target)
        for index, item in enumerate(items[1:], start=1):
            _check_overlap([item], [geoboxes[index]], _union(geoboxes[:index], target))
    grid = Affine(resolution, 0, 0, 0, -resolution, 0)
    if first.crs == target and first.resolution.x == resolution:
        grid = first.transform
    return snapped_geobox(region.boundingbox, target, grid)


def _coarse_geobox(geoboxes: Sequence[GeoBox], scene: GeoBox) -> GeoBox | None:
    """The coarse items' own grid over the scene (one pixel beyond its edges), when they
    share the scene's CRS: loaded there and aligned by coordinates as
    :func:`m3rcr_xr.align.align_to` does. None when a CRS differs: then odc-stac
    reprojects them onto the scene's grid by nearest, as ``align_to`` does too."""
    if any(g.crs != scene.crs for g in geoboxes):
        return None
    grid = geoboxes[0].transform
    margin = abs(grid.a)
    covered = _union(geoboxes, scene.crs).boundingbox
    wanted = scene.extent.buffer(margin).boundingbox
    bounds = BoundingBox(
        max(covered.left, wanted.left),
        max(covered.bottom, wanted.bottom),
        min(covered.right, wanted.right),
        min(covered.top, wanted.top),
    )
    return snapped_geobox(bounds, scene.crs, grid)


# ------------------------------------------------------------------------ headers
class _Header(NamedTuple):
    """What an asset's file header says (:func:`_header`): odc-stac reads the file on
    its own grid."""

    location: str
    band_count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    grid: GeoBox
    #: (scale, offset) of each band: value = raw x scale + offset
    scaling: tuple[tuple[float, float], ...]


def _header(item: pystac.Item, asset_name: str) -> _Header:
    """The asset's file header, checked as :func:`m3rcr_xr.rasters.open_raster` checks a
    file (its last block read: a truncated file fails now, not half-way through a write)."""
    location = item.assets[asset_name].get_absolute_href() or item.assets[asset_name].href
    what = f"STAC item {item.id!r} asset {asset_name!r}"
    try:
        with rasterio.open(location) as src:
            check_header(location, what, src)
            check_readable(src)
            grid = GeoBox(src.shape, src.transform, src.crs)
            scaling = tuple(zip(map(float, src.scales), map(float, src.offsets), strict=True))
            return _Header(
                location, src.count, src.dtypes[0], src.nodata, src.descriptions, grid, scaling
            )
    except RasterioError as err:
        href.raise_if_refused(location, err, what)
        raise InputFileError(f"{location}: {what} cannot be read ({err})") from href.cause(err)


def _headers(items: Sequence[pystac.Item], asset_name: str) -> list[_Header]:
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        return list(pool.map(lambda item: _header(item, asset_name), items))


def _declared_bands(asset: pystac.Asset) -> tuple[str, list[dict[str, Any]]]:
    """The bands an asset declares: the key (``raster:bands``, or STAC 1.1's ``bands``)
    and its list of band objects; ``("", [])`` where it declares none."""
    for key in ("raster:bands", "bands"):
        if asset.extra_fields.get(key):
            return key, list(asset.extra_fields[key])
    return "", []


def _declare_bands(item: pystac.Item, asset_name: str, header: _Header) -> None:
    """Give odc-stac the band layout of an asset from its file header, where the item
    does not declare it (``raster:bands``): without it, odc-stac reads band 1 only. A
    declared layout must have the file's band count (odc-stac fails on it otherwise).

    The header's scale/offset (other than 1, 0) goes into each band that declares none,
    so that the readers apply or check it as a declared one (odc-stac reads raw values);
    a band that declares one must agree with it (:func:`_with_header_scaling`).
    """
    asset = item.assets[asset_name]
    key, declared = _declared_bands(asset)
    what = f"{header.location}: STAC item {item.id!r} asset {asset_name!r}"
    if declared and len(declared) != header.band_count:
        raise InputFileError(
            f"{what} declares {len(declared)} band(s) in {key!r}, the file has {header.band_count}"
        )
    if declared:
        asset.extra_fields[key] = [
            _with_header_scaling(band, pair, key, what)
            for band, pair in zip(declared, header.scaling, strict=True)
        ]
        return
    nodata = {"nodata": header.nodata} if header.nodata is not None else {}
    asset.extra_fields["raster:bands"] = [
        {"data_type": header.dtype, **nodata, **_scaling_fields(pair, "")}
        for pair in header.scaling
    ]


def _scaling_fields(pair: tuple[float, float], prefix: str) -> dict[str, float]:
    """A band object's fields for (scale, offset): none for (1, 0)."""
    if pair == (1.0, 0.0):
        return {}
    return {f"{prefix}scale": pair[0], f"{prefix}offset": pair[1]}


def _with_header_scaling(
    band: dict[str, Any], header: tuple[float, float], key: str, what: str
) -> dict[str, Any]:
    """A declared band object with its file header's (scale, offset) where it declares
    none; refused where it declares another and the header's is not (1, 0): which one
    the stored values follow cannot be told."""
    prefix = "raster:" if key == "bands" else ""
    if header == (1.0, 0.0):
        return band
    if not any(f"{prefix}{field}" in band for field in ("scale", "offset")):
        return {**band, **_scaling_fields(header, prefix)}
    declared = _band_scaling(band, prefix, key, what)
    if not np.allclose(declared, header):
        raise InputFileError(
            f"{what} declares scale {declared[0]:g}, offset {declared[1]:g} in {key!r}, its "
            f"file's header scale {header[0]:g}, offset {header[1]:g}; they must agree "
            "(or one be left out): which one the stored values follow cannot be told"
        )
    return band


def _band_scaling(band: Any, prefix: str, key: str, what: str) -> tuple[float, float]:
    """(scale, offset) of one declared band object, (1, 0) where absent."""
    try:
        return float(band.get(f"{prefix}scale", 1)), float(band.get(f"{prefix}offset", 0))
    except (TypeError, ValueError, AttributeError) as err:
        raise InputFileError(f"{what}: unreadable scale or offset in {key!r} ({err})") from err


def _scaling(item: pystac.Item, asset_name: str) -> list[tuple[float, float]]:
    """(scale, offset) of each band the asset declares (STAC raster extension: value =
    raw * scale + offset; ``raster:scale`` in STAC 1.1 ``bands``), (1, 0) where absent.
    odc-stac reads the raw values: the readers apply these themselves."""
    key, declared = _declared_bands(item.assets[asset_name])
    prefix = "raster:" if key == "bands" else ""
    what = f"STAC item {item.id!r} asset {asset_name!r}"
    return [_band_scaling(band, prefix, key, what) for band in declared]


def _layer_scaling(items: Sequence[pystac.Item], asset_name: str) -> tuple[float, float]:
    """The (scale, offset) of a 1-band asset, the same in every item: odc-stac fuses the
    items' raw values into one layer, so one scaling must fit them all."""
    first = (_scaling(items[0], asset_name) or [(1.0, 0.0)])[0]
    for item in items[1:]:
        scaling = (_scaling(item, asset_name) or [(1.0, 0.0)])[0]
        if not np.allclose(scaling, first):
            raise InputFileError(
                f"STAC item {item.id!r} asset {asset_name!r}: scale, offset {scaling} differ "
                f"from item {items[0].id!r}'s {first}; the items of a layer must share them"
            )
    return first


def _check_reflectance(items: Sequence[pystac.Item], asset_name: str) -> None:
    """Refuse optical assets whose declared scale/offset make the stored values anything
    but reflectance x10000 (scale 1, as PlanetScope SR declares none, or 0.0001 for
    reflectance; offset 0): the library would otherwise guess at their meaning."""
    for item in items:
        for scale, offset in _scaling(item, asset_name):
            where = "in its band metadata (or its file's header)"
            check_reflectance(scale, offset, f"STAC item {item.id!r} asset {asset_name!r}:", where)


def _prepared(
    items: Sequence[pystac.Item], asset_name: str, count: int | None, layer: str
) -> list[_Header]:
    """Check the asset of every item (proj fields, header, band count), declare its
    band layout for odc-stac; return the files' headers."""
    for item in items:
        item_geobox(item, asset_name)
    headers = _headers(items, asset_name)
    for item, header in zip(items, headers, strict=True):
        if count is not None and header[1] != count:
            raise InputFileError(
                f"{header[0]}: STAC item {item.id!r} asset {asset_name!r} has {header[1]} "
                f"band(s); {layer} needs {count}"
            )
        _declare_bands(item, asset_name, header)
    return headers


def _stac_band_names(asset: pystac.Asset) -> tuple[str, list[str | None]]:
    """The band names an asset declares: the key (``eo:bands``, or STAC 1.1's ``bands``)
    and each band's common name, else its name; ``("", [])`` where it declares none."""
    for key, common in (("eo:bands", "common_name"), ("bands", "eo:common_name")):
        if asset.extra_fields.get(key):
            bands = [band if isinstance(band, Mapping) else {} for band in asset.extra_fields[key]]
            return key, [band.get(common) or band.get("name") for band in bands]
    return "", []


def _optical_order(item: pystac.Item, asset_name: str, header: _Header) -> list[int] | None:
    """Where blue, green, red and nir lie in an optical asset's file (as
    :func:`m3rcr_xr.rasters.band_order` finds them), by the names the item gives its bands,
    else by the file's band descriptions; None, by position (Planet's 4-band SR is
    BGRN), where neither names them.

    Raises
    ------
    InputFileError
        Naming the asset: its names do not name each band once, or the item's and the
        file's name them in different orders.
    """
    what = f"STAC item {item.id!r} asset {asset_name!r}"
    key, declared = _stac_band_names(item.assets[asset_name])
    from_item = band_order(declared, BANDS, f"{what} ({key})")
    from_file = band_order(header.descriptions, BANDS, f"{header.location}: {what}")
    if not names_any(declared, BANDS):
        return from_file
    if names_any(header.descriptions, BANDS) and from_item != from_file:
        raise InputFileError(
            f"{header.location}: {what} names its bands {tuple(declared)} in {key!r}, "
            f"its file's band descriptions {header.descriptions} otherwise; cannot tell "
            "which band is which"
        )
    return from_item


def _check_udm2_grids(
    items: Sequence[pystac.Item],
    asset_name: str,
    udm2: Sequence[_Header],
    optical: Sequence[_Header],
) -> None:
    """Refuse a UDM2 file off its optical file's grid (CRS, shape, transform; either may
    be stored south-up), as :func:`m3rcr_xr.open_quartet` refuses it: odc-stac would
    resample it onto the scene, each mask pixel over another pixel, or none."""
    for item, mask, image in zip(items, udm2, optical, strict=True):
        where = f"{mask.location}: STAC item {item.id!r} asset {asset_name!r}"
        check_same_grid(_north_up(mask.grid), _north_up(image.grid), where)


def _check_proj_grids(
    items: Sequence[pystac.Item], asset_name: str, headers: Sequence[_Header]
) -> None:
    """Refuse an optical asset whose file's grid (CRS, shape, transform; either may be
    stored south-up) is not the one its ``proj`` fields give: the scene's grid is built
    from those fields, while odc-stac reads the pixels where the file says they lie, so
    the scene's extent would be off (cut short, or an edge of empty fill)."""
    for item, header in zip(items, headers, strict=True):
        where = f"{header.location}: STAC item {item.id!r} asset {asset_name!r}"
        declared = _north_up(item_geobox(item, asset_name))
        check_same_grid(_north_up(header.grid), declared, where, "its proj fields'")


def _north_up(grid: GeoBox) -> GeoBox:
    """The same pixels on a north-up grid (rows in the other order where stored south-up)."""
    return grid.flipy() if grid.transform.e > 0 else grid


# ------------------------------------------------------------------------ loading
def _one_group(*_: Any) -> int:
    """odc-stac's ``groupby``: every item in one group, one scene (a mosaic)."""
    return 0


def _each_item(_item: Any, _parsed: Any, index: int) -> int:
    """odc-stac's ``groupby``: each item a layer of its own, in the order given."""
    return index


def _load(
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


def _stack(loaded: xr.Dataset, names: Sequence[str], dim: str) -> xr.DataArray:
    """The variables ``names`` of odc-stac's result as one array along ``dim``."""
    array = xr.concat([loaded[name] for name in names], dim=dim)
    array.attrs = {"_FillValue": loaded[names[0]].attrs.get("nodata")}
    return array.rio.write_crs(loaded.rio.crs)


def _band_names(asset_name: str, count: int) -> list[str]:
    return [f"{asset_name}.{i}" for i in range(1, count + 1)] if count > 1 else [asset_name]


def _in_band_order(
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


def _mosaic(
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


def _footprints(items: Sequence[pystac.Item], asset_name: str, scene: GeoBox) -> list[Geometry]:
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


def _optical(
    items: Sequence[pystac.Item], names: Mapping[str, str], udm2: bool, scene: GeoBox, chunks: Any
) -> tuple[xr.DataArray, xr.DataArray | None, list[str]]:
    """The optical mosaic and, with ``udm2``, the UDM2 of the same items (each pixel's
    bands all from one item, :func:`_first_valid_index`), and the files read."""
    headers = _prepared(items, names["optical"], len(BANDS), "optical")
    _check_proj_grids(items, names["optical"], headers)
    _check_reflectance(items, names["optical"])
    orders = [_optical_order(i, names["optical"], h) for i, h in zip(items, headers, strict=True)]
    bands = _band_names(names["optical"], len(BANDS))
    sources = [header.location for header in headers]
    if udm2:
        udm2_headers = _prepared(items, names["udm2"], UDM2_BANDS, "udm2")
        _check_udm2_grids(items, names["udm2"], udm2_headers, headers)
        sources += [header.location for header in udm2_headers]
        bands += _band_names(names["udm2"], UDM2_BANDS)
    loaded = yx_dims(_load(items, bands, scene, chunks, per_item=True))
    loaded = _in_band_order(loaded, bands[: len(BANDS)], orders)
    merged = _mosaic(loaded, bands, len(BANDS), _footprints(items, names["optical"], scene))
    optical = merged.isel(band=slice(0, len(BANDS))).astype(loaded[bands[0]].dtype)
    optical.attrs = {"_FillValue": loaded[bands[0]].attrs.get("nodata")}
    optical = describe_optical(as_uint16(optical, sources[0], "cloudy"), "cloudy")
    if not udm2:
        return optical, None, sources
    mask = merged.isel(band=slice(len(BANDS), None)).astype(loaded[bands[-1]].dtype)
    mask = mask.rename(band="udm2_band").assign_coords(udm2_band=np.arange(1, UDM2_BANDS + 1))
    mask.attrs = {"long_name": "PlanetScope usable data mask (UDM2)"}
    return optical, mask, sources


def _coarse(
    items: Sequence[pystac.Item],
    asset_names: Sequence[str],
    scene: GeoBox,
    chunks: Any,
    dim: str,
    **kwargs: Any,
) -> tuple[xr.DataArray, GeoBox | None, list[str]]:
    """The assets (one band each) stacked along ``dim``, on their own grid where they
    share the scene's CRS (else on the scene's); the declared nodata in ``_FillValue``."""
    sources = [h.location for name in asset_names for h in _prepared(items, name, 1, dim)]
    geoboxes = [item_geobox(item, asset_names[0]) for item in items]
    native = _coarse_geobox(geoboxes, scene)
    loaded = yx_dims(_load(items, list(asset_names), native or scene, chunks, **kwargs))
    return _stack(loaded, asset_names, dim), native, sources


def to_db(power: xr.DataArray) -> xr.DataArray:
    """Linear SAR power in dB: ``10 log10``, powers at or below :data:`SAR_POWER_FLOOR`
    (zeros, negative noise) taken as the floor (-50 dB); NaN stays NaN.

    Examples
    --------
    >>> to_db(xr.DataArray(np.array([1.0, 0.01, 0.0], dtype="float32"))).values
    array([  0., -20., -50.], dtype=float32)
    """
    floored = power.where(np.isnan(power) | (power > SAR_POWER_FLOOR), SAR_POWER_FLOOR)
    # in float64: float32 log10 differs by an ulp between CPUs' vector paths (-20.000002)
    return (10 * xr.ufuncs.log10(floored.astype("float64"))).astype("float32")


def _on_scene(array: xr.DataArray, native: GeoBox | None, optical: xr.DataArray, fill: Any):
    if native is None:
        return array.assign_coords(y=optical["y"].values, x=optical["x"].values)
    return align_to(array, optical, method="coords", fill=fill)


def _sar(
    items,
    assets: Mapping[str, str],
    scene: GeoBox,
    optical: xr.DataArray,
    chunks: Any,
    *,
    unit: str,
):
    stored, native, sources = _coarse(
        items, [assets["vv"], assets["vh"]], scene, chunks, "polarization", dtype="float32"
    )
    crs, nodata = stored.rio.crs, stored.attrs["_FillValue"]
    if nodata is not None and not np.isnan(nodata):  # declared nodata: holes, as NaN
        stored = stored.where(stored != nodata)
    scaling = [_layer_scaling(items, assets[name]) for name in ("vv", "vh")]
    stored = apply_scaling(stored, scaling, "polarization")  # stored scaled: raw * scale + offset
    stored = _checked_unit(stored, unit, [assets["vv"], assets["vh"]], items, sources)
    array = to_db(stored) if unit == "power" else stored
    array = array.assign_coords(polarization=list(POLARIZATIONS)).rename("sar")
    array = array.rio.write_crs(crs)
    # holes only inside the items: odc-stac's empty fill beyond them (a gap between two
    # items, the window's edge) is no measurement, and stays NaN rather than the mean;
    # on the items' own grid, align_to then gives the half pixel beyond the edge its value
    covered = _covered(items, assets["vv"], array)
    array = fill_nan_with_mean(array, per_band=True, covered=covered)
    aligned = _on_scene(array, native, optical, np.nan)
    aligned.attrs = sar_attrs(array.attrs["nan_fill"], "coords")
    return rechunk_like(aligned, optical), sources


def _checked_unit(
    sar: xr.DataArray,
    unit: str,
    asset_names: Sequence[str],
    items: Sequence[pystac.Item],
    hrefs: list[str],
) -> xr.DataArray:
    """``sar`` (polarization, y, x), each polarization's chunks checked when read to
    hold ``unit`` (:data:`SAR_UNITS`), not the other (:func:`m3rcr_xr.io.check_sar_unit`);
    an error names the asset, its files (``hrefs``: each asset's, one per item, in turn)
    and the ``sar_unit`` that reads the other unit."""
    ids = ", ".join(repr(item.id) for item in items)
    other = SAR_UNITS[1 - SAR_UNITS.index(unit)]
    hint = f"pass {argument('sar_unit', other)} if the assets hold {other}"
    checked = []
    for index, name in enumerate(asset_names):
        files = ", ".join(hrefs[index * len(items) : (index + 1) * len(items)])
        source = f"{files}: STAC item{'s' * (len(items) > 1)} {ids} asset {name!r}"
        checked.append(check_sar_unit(sar.isel(polarization=[index]), unit, source, hint))
    return xr.concat(checked, "polarization")


def _check_sar_unit_argument(sar_unit: Any) -> None:
    """:class:`UsageError` unless ``sar_unit`` is one of :data:`SAR_UNITS`.

    Examples
    --------
    >>> _check_sar_unit_argument("dB")
    >>> _check_sar_unit_argument("db")
    Traceback (most recent call last):
    ...
    m3rcr_xr.exceptions.UsageError: sar_unit='db': must be power or dB
    """
    if sar_unit not in SAR_UNITS:
        raise UsageError(f"{argument('sar_unit', sar_unit)}: must be {' or '.join(SAR_UNITS)}")


def _covered(items: Sequence[pystac.Item], asset_name: str, like: xr.DataArray) -> xr.DataArray:
    """Where on ``like``'s grid the items' ``asset_name`` has pixels (see :func:`_inside`):
    the rest is odc-stac's empty fill, no stored value."""
    geoboxes = [item_geobox(item, asset_name) for item in items]
    return _inside(_union(geoboxes, like.rio.crs), like)


def _inside(footprint: Geometry, like: xr.DataArray) -> xr.DataArray:
    """Whether each pixel centre of ``like``'s grid lies in ``footprint`` (in its CRS),
    lazily, block by block on the chunks of ``like``."""
    from rasterio.features import geometry_mask

    transform = like.rio.transform()
    height, width = like.sizes["y"], like.sizes["x"]
    chunks = like.chunks[-2:] if like.chunks is not None else ((height,), (width,))

    def block(_: np.ndarray, block_info: dict) -> np.ndarray:
        (top, bottom), (left, right) = block_info[0]["array-location"]
        return geometry_mask(
            [footprint.geom],
            out_shape=(bottom - top, right - left),
            transform=transform * Affine.translation(left, top),
            invert=True,
        )

    mask = da.zeros((height, width), chunks=chunks, dtype=bool).map_blocks(block, dtype=bool)
    return xr.DataArray(mask, dims=("y", "x"), coords={"y": like["y"], "x": like["x"]})


def _landcover(items, assets: Mapping[str, str], scene, optical: xr.DataArray, chunks: Any):
    codes, native, sources = _coarse(items, [assets["landcover"]], scene, chunks, "band")
    nodata = codes.attrs["_FillValue"]
    scale, offset = _layer_scaling(items, assets["landcover"])
    if scale != 1 or offset != int(offset):
        raise InputFileError(
            f"STAC item {items[0].id!r} asset {assets['landcover']!r}: scale {scale:g}, "
            f"offset {offset:g}: land-cover values so scaled are no class codes"
        )
    if offset:  # codes stored shifted: the declared nodata is a stored value
        # odc-stac's empty fill where no item is (a gap, beyond them) is no stored
        # value: shifted, it would read as a class; it stays nodata
        covered = _covered(items, assets["landcover"], codes)
        nodata = -1 if nodata is None else nodata + offset
        codes = (codes.astype("int32") + int(offset)).where(covered, nodata)
    array = map_blocks(
        to_worldcover,
        codes.isel(band=0, drop=True),
        "uint8",
        nodata=nodata,
        source=f"{sources[0]}: landcover",
    ).rio.write_crs(codes.rio.crs)
    aligned = _on_scene(array.rename("landcover"), native, optical, NODATA_CODE)
    aligned.attrs = landcover_attrs("coords")
    return rechunk_like(aligned, optical), sources


def _asset_names(assets: Mapping[str, str] | None) -> dict[str, str]:
    unknown = sorted(set(assets or {}) - set(ASSETS))
    if unknown:
        raise UsageError(
            f"{argument('assets', dict(assets or {}))}: unknown layer {unknown[0]!r} "
            f"(layers: {', '.join(ASSETS)})"
        )
    return {**ASSETS, **(assets or {})}


def _stac_chunks(chunks: Any) -> dict[str, int] | None:
    spatial = spatial_chunks(chunks)
    return None if spatial is None else {k: v for k, v in spatial.items() if k in ("y", "x")}


def with_cloudmask(ds: xr.Dataset, classes: Sequence[str] | None = None) -> xr.Dataset:
    """The scene with its ``udm2`` turned into ``cloudmask`` (``classes`` flagged; None:
    :data:`~m3rcr_xr.cloudmask.DEFAULT_CLASSES`) and its unusable pixels (blackfill, a
    band missing or suspect: :func:`~m3rcr_xr.cloudmask.udm2_nodata`) into optical nodata
    (0 in every band of ``cloudy``), as :func:`m3rcr_xr.open_quartet` does with a UDM2 file;
    unchanged without ``udm2``, where ``classes`` are refused."""
    if "udm2" not in ds:
        udm2_classes_for(classes, "the optical items have no 'udm2' asset")
        return ds
    udm2 = ds["udm2"].rename(udm2_band="band").assign_coords(band=list(CLOUDMASK_UDM2_BANDS))
    cloudmask = udm2_cloudmask(udm2, udm2_classes_for(classes))
    cloudy = mask_nodata(ds["cloudy"], udm2_nodata(udm2))
    return ds.drop_vars("udm2").assign(cloudy=cloudy, cloudmask=cloudmask)


def open_stac(
    optical_items: ItemsLike,
    *,
    sar_items: ItemsLike | None = None,
    landcover_items: ItemsLike | None = None,
    bbox: Sequence[float] | None = None,
    crs: Any = None,
    resolution: float | None = None,
    chunks: Any = "auto",
    assets: Mapping[str, str] | None = None,
    udm2_classes: Sequence[str] | None = None,
    sar_unit: str = "power",
) -> xr.Dataset:
    """Open a scene from STAC items: PlanetScope optical, Sentinel-1 RTC, WorldCover.

    Parameters
    ----------
    optical_items
        PlanetScope items (4-band surface reflectance): an item, an item collection, a
        catalog, a list of items, or the path or URL (``https://``, ``s3://``) of their
        JSON. Several are mosaicked into one scene, the first given winning where they
        overlap: each pixel whole from the first item where it is valid (not 0 in all
        bands, not unusable in its UDM2: blackfill, a band missing or suspect); items in
        other CRSs (UTM zones) are reprojected onto one, items stored south-up onto the
        north-up grid of the same pixels.
    sar_items, landcover_items
        Sentinel-1 RTC items (``vv``, ``vh``, in ``sar_unit``) and WorldCover items
        (``map``), in the same forms; optional. SAR is NaN where no item reaches (a gap
        between items, beyond them; on the items' own grid, the edge value half a 10 m
        pixel beyond their outer edge, as ``align="coords"``); its holes inside the
        items take the band mean over the items' part of the loaded window.
    bbox
        (west, south, east, north) in degrees (EPSG:4326, whatever ``crs`` is), west
        below east; default: the optical items' extent. A box across the antimeridian
        (west > east, as STAC writes one) is refused: split it at 180 degrees. Items
        outside the scene (those of a search over a larger area) are left out, logged
        at INFO with their ids.
    crs
        CRS of the scene, projected or geographic; default: the first optical item's.
    resolution
        Pixel size in the units of the scene's CRS: metres in a projected CRS (default
        3, PlanetScope's), degrees in a geographic one (default: the first optical
        item's pixel size there).
    chunks
        As in :func:`m3rcr_xr.open_quartet`: ``"auto"``, an int, a dict or None.
    assets
        Asset names instead of :data:`ASSETS`, e.g. ``{"optical": "analytic_sr"}``
        (layers ``optical``, ``udm2``, ``vv``, ``vh``, ``landcover``).
    udm2_classes
        The UDM2 classes that count as cloud (see :func:`m3rcr_xr.cloudmask.udm2_cloudmask`);
        refused when the optical items have no ``udm2`` asset, where they would be ignored.
    sar_unit
        What the ``vv``, ``vh`` assets hold (after their ``raster:bands`` scale/offset):
        ``"power"`` (linear; converted to dB, powers at or below
        :data:`SAR_POWER_FLOOR` taken as -50 dB) or ``"dB"`` (read as it is; the
        operational deliveries and some catalogues).

    Returns
    -------
    xr.Dataset
        A scene: ``cloudy``, and ``sar``, ``landcover`` when their items are given;
        ``cloudmask`` from the UDM2 when every optical item in the scene has that asset
        (its unusable pixels become optical nodata, 0 in ``cloudy``).
        ``encoding["source"]`` lists the files read (not those of items left out).

    Raises
    ------
    UsageError
        ``crs`` is not a CRS, ``resolution`` not a positive number, ``bbox`` not four
        numbers in degrees with south below north and west below east, ``sar_unit`` not
        ``"power"`` or ``"dB"``.
    InputFileError
        The JSON or an asset cannot be read; an item lacks an asset asked for, or the
        ``proj`` fields (CRS, shape, transform); an asset has the wrong band count, or
        declares (``raster:bands``) another count than its file has; an optical asset
        declares a scale/offset other than reflectance x10000 as stored (scale 1 or
        0.0001, offset 0), a land-cover one a scale other than 1; the items of a SAR or
        land-cover layer declare different scales/offsets; an optical asset's band names
        (the item's or its file's) do not name each band once, or the item's and its
        file's disagree; an asset declares another scale/offset than its file's header
        (where that is not 1, 0). When a chunk is read: SAR assets holding dB where
        ``sar_unit`` is ``"power"``, or linear power where it is ``"dB"``
        (:func:`m3rcr_xr.io.check_sar_unit`).
    AccessDeniedError
        A server refused access to the JSON or an asset (HTTP 401, 403: for a presigned
        URL, its signature may have expired).
    AlignmentError
        ``bbox`` misses all the optical items (items it misses among others are left
        out, logged at INFO; so are SAR and land-cover items outside the scene, and
        none of a layer's inside is refused); without ``bbox``, an optical item overlaps
        none of the items before it; an item's grid is rotated; an optical file is not
        on the grid its item's ``proj`` fields give, or a UDM2 file not on its optical
        file's grid (CRS, shape, transform).

    Examples
    --------
    >>> scene = open_stac("planet/items.json", sar_items="s1-rtc.json",
    ...                   landcover_items="worldcover.json")  # doctest: +SKIP
    >>> scene.m3rcr.decloud("dsen2_cr", "weights.pth")  # doctest: +SKIP
    """
    names = _asset_names(assets)
    stac_chunks = _stac_chunks(chunks)
    _check_crs(crs)
    _check_bbox(bbox)
    _check_sar_unit_argument(sar_unit)
    optical_list = read_items(optical_items)
    if not optical_list:
        raise InputFileError(f"{optical_items}: no STAC items found")
    scene = optical_geobox(
        optical_list, names["optical"], bbox=bbox, crs=crs, resolution=resolution
    )
    optical_list = _overlapping(optical_list, names["optical"], scene, "optical")
    without = [item for item in optical_list if names["udm2"] not in item.assets]
    if without and assets and "udm2" in assets:  # asked for by name: its absence is an error
        _asset(without[0], names["udm2"])
    optical, udm2, sources = _optical(optical_list, names, not without, scene, stac_chunks)
    layers: dict[str, xr.DataArray] = {"cloudy": optical}
    if udm2 is not None:
        layers["udm2"] = udm2
    for given, opener, name, asset in (
        (sar_items, functools.partial(_sar, unit=sar_unit), "sar", "vv"),
        (landcover_items, _landcover, "landcover", "landcover"),
    ):
        if given is None:
            continue
        items = read_items(given)
        if not items:
            raise InputFileError(f"{given}: no STAC items found for {name}")
        items = _overlapping(items, names[asset], scene, name)
        layers[name], found = opener(items, names, scene, optical, stac_chunks)
        sources += found
    ds = assemble_layers(layers, optical)
    ds.encoding["source"] = list(dict.fromkeys(sources))
    return validate(with_cloudmask(ds, udm2_classes))
