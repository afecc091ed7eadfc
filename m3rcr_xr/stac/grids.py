"""Grids of STAC items and of the scene: an item's grid from its ``proj`` fields, the
scene's grid (the optical items' extent or a ``bbox``, in a CRS and resolution, on the first
item's pixels), the coarse layers' own grid over it, and the checks of ``bbox``, ``crs`` and
of items that miss the scene."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import pyproj
import pystac
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox, Geometry, box, unary_union

from ..align import check_north_up
from ..exceptions import AlignmentError, InputFileError, UsageError, argument, check_positive
from .items import item_asset

log = logging.getLogger(__name__)


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


def item_geobox(item: pystac.Item, asset_name: str) -> GeoBox:
    """The pixel grid of an item's asset, from its ``proj`` fields.

    Raises
    ------
    InputFileError
        Naming the item: it has no such asset, or no CRS, shape or transform.
    AlignmentError
        Naming the item: its grid is rotated or sheared.
    """
    asset = item_asset(item, asset_name)
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


def extent_union(geoboxes: Sequence[GeoBox], crs: Any) -> Geometry:
    """Where any of ``geoboxes`` (at least one) lies, in ``crs``."""
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
    by :func:`overlapping`)."""
    if not any(_overlaps(geobox, region) for geobox in geoboxes):
        raise AlignmentError(
            f"{argument('bbox', bbox)}: does not overlap the optical items (their extent in "
            f"degrees, west, south, east, north: {_degrees(extent_union(geoboxes, 'EPSG:4326'))})"
        )


def _overlaps(geobox: GeoBox, region: Geometry) -> bool:
    """Whether ``geobox`` shares an area with ``region``: an edge alone gives no pixel."""
    extent = geobox.extent.to_crs(region.crs)  # type: ignore[arg-type]
    return extent.intersects(region) and not extent.touches(region)


def overlapping(
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
            f"{_degrees(extent_union(geoboxes, 'EPSG:4326'))}, "
            f"the scene's {_degrees(scene.extent)})"
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


def check_bbox(bbox: Any) -> tuple[float, float, float, float] | None:
    """``bbox`` as (west, south, east, north) floats, or :class:`UsageError` before any
    item is read: four finite numbers, in degrees (whatever the scene's CRS), south below
    north and west below east. A box across the antimeridian (west > east, as STAC
    writes one) is refused, not swapped: swapped, it would be another region.

    Examples
    --------
    >>> check_bbox([11, 44.5, 12, 45])
    (11.0, 44.5, 12.0, 45.0)
    >>> check_bbox((735000, 4984700, 735288, 4985010))  # doctest: +ELLIPSIS
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


def check_crs(crs: Any) -> None:
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
        :func:`overlapping`); without ``bbox``, an item that overlaps none of the items
        before it.
    """
    check_crs(crs)
    checked = check_bbox(bbox)
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
        region = extent_union(geoboxes, target)
        for index, item in enumerate(items[1:], start=1):
            _check_overlap([item], [geoboxes[index]], extent_union(geoboxes[:index], target))
    grid = Affine(resolution, 0, 0, 0, -resolution, 0)
    if first.crs == target and first.resolution.x == resolution:
        grid = first.transform
    return snapped_geobox(region.boundingbox, target, grid)


def coarse_geobox(geoboxes: Sequence[GeoBox], scene: GeoBox) -> GeoBox | None:
    """The coarse items' own grid over the scene (one pixel beyond its edges), when they
    share the scene's CRS: loaded there and aligned by coordinates as
    :func:`m3rcr_xr.align.align_to` does. None when a CRS differs: then odc-stac
    reprojects them onto the scene's grid by nearest, as ``align_to`` does too."""
    if any(g.crs != scene.crs for g in geoboxes):
        return None
    grid = geoboxes[0].transform
    margin = abs(grid.a)
    covered = extent_union(geoboxes, scene.crs).boundingbox
    wanted = scene.extent.buffer(margin).boundingbox
    bounds = BoundingBox(
        max(covered.left, wanted.left),
        max(covered.bottom, wanted.bottom),
        min(covered.right, wanted.right),
        min(covered.top, wanted.top),
    )
    return snapped_geobox(bounds, scene.crs, grid)


def north_up(grid: GeoBox) -> GeoBox:
    """The same pixels on a north-up grid (rows in the other order where stored south-up)."""
    return grid.flipy() if grid.transform.e > 0 else grid
