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

Its modules: :mod:`~m3rcr_xr.stac.items` reads the items, :mod:`~m3rcr_xr.stac.grids`
gives their grids and the scene's, :mod:`~m3rcr_xr.stac.assets` reads and checks the
assets' headers, bands and scale/offset, :mod:`~m3rcr_xr.stac.mosaic` loads them with
odc-stac and mosaics the optical items, :mod:`~m3rcr_xr.stac.layers` makes the scene's
layers of them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import xarray as xr

from ..cloudmask import UDM2_BANDS as CLOUDMASK_UDM2_BANDS
from ..cloudmask import mask_nodata, udm2_classes_for, udm2_cloudmask, udm2_nodata
from ..exceptions import InputFileError, UsageError, argument
from ..io import assemble_layers
from ..rasters import spatial_chunks
from ..schema import validate
from .assets import ASSETS, HEADER_THREADS, UDM2_BANDS
from .grids import check_bbox, check_crs, item_geobox, optical_geobox, overlapping, snapped_geobox
from .items import ItemsLike, item_asset, read_items
from .layers import (
    SAR_DB_FLOOR,
    SAR_POWER_FLOOR,
    SAR_UNITS,
    landcover_layer,
    optical_layer,
    sar_layer,
    to_db,
)

__all__ = [
    "ASSETS",
    "HEADER_THREADS",
    "SAR_DB_FLOOR",
    "SAR_POWER_FLOOR",
    "SAR_UNITS",
    "UDM2_BANDS",
    "ItemsLike",
    "item_geobox",
    "open_stac",
    "optical_geobox",
    "read_items",
    "snapped_geobox",
    "to_db",
    "with_cloudmask",
]


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
        ``encoding["source"]`` lists the files read (not those of items left out), each
        with its identity when its header was read (one HEAD request a remote file): a
        file changed since is refused when the scene is written, as in
        :func:`m3rcr_xr.open_quartet`.

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
    check_crs(crs)
    check_bbox(bbox)
    _check_sar_unit_argument(sar_unit)
    optical_list = read_items(optical_items)
    if not optical_list:
        raise InputFileError(f"{optical_items}: no STAC items found")
    scene = optical_geobox(
        optical_list, names["optical"], bbox=bbox, crs=crs, resolution=resolution
    )
    optical_list = overlapping(optical_list, names["optical"], scene, "optical")
    without = [item for item in optical_list if names["udm2"] not in item.assets]
    if without and assets and "udm2" in assets:  # asked for by name: its absence is an error
        item_asset(without[0], names["udm2"])
    optical, udm2, sources = optical_layer(optical_list, names, not without, scene, stac_chunks)
    layers: dict[str, xr.DataArray] = {"cloudy": optical}
    if udm2 is not None:
        layers["udm2"] = udm2
    for given, opener, name, asset in (
        (sar_items, functools.partial(sar_layer, unit=sar_unit), "sar", "vv"),
        (landcover_items, landcover_layer, "landcover", "landcover"),
    ):
        if given is None:
            continue
        items = read_items(given)
        if not items:
            raise InputFileError(f"{given}: no STAC items found for {name}")
        items = overlapping(items, names[asset], scene, name)
        layers[name], found = opener(items, names, scene, optical, stac_chunks)
        sources += found
    ds = assemble_layers(layers, optical)
    ds.encoding["source"] = list(dict.fromkeys(sources))
    return validate(with_cloudmask(ds, udm2_classes))
