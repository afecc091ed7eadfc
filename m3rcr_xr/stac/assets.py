"""What the STAC assets hold: their files' headers (read and checked at open time), the band
layout declared for odc-stac, band names and order, scale/offset, and the checks that an
asset's file lies on the grid its item or its optical file gives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import pystac
import rasterio
from odc.geo.geobox import GeoBox
from rasterio.errors import RasterioError

from .. import href
from ..exceptions import InputFileError
from ..identity import opened_file
from ..io import check_same_grid
from ..rasters import band_order, check_header, check_readable, check_reflectance, names_any
from ..schema import BANDS
from .grids import item_geobox, north_up

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
#: asset headers read at once when an open checks them (remote reads wait on the network)
HEADER_THREADS = 8


class _Header(NamedTuple):
    """What an asset's file header says (:func:`_header`): odc-stac reads the file on
    its own grid."""

    #: the file, with its identity when its header was read (:func:`opened_file`)
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
                opened_file(location),  # its identity at open: one changed since is refused
                src.count,
                src.dtypes[0],
                src.nodata,
                src.descriptions,
                grid,
                scaling,
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


def layer_scaling(items: Sequence[pystac.Item], asset_name: str) -> tuple[float, float]:
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


def check_declared_reflectance(items: Sequence[pystac.Item], asset_name: str) -> None:
    """Refuse optical assets whose declared scale/offset make the stored values anything
    but reflectance x10000 (scale 1, as PlanetScope SR declares none, or 0.0001 for
    reflectance; offset 0): the library would otherwise guess at their meaning."""
    for item in items:
        for scale, offset in _scaling(item, asset_name):
            where = "in its band metadata (or its file's header)"
            check_reflectance(scale, offset, f"STAC item {item.id!r} asset {asset_name!r}:", where)


def prepared(
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


def optical_order(item: pystac.Item, asset_name: str, header: _Header) -> list[int] | None:
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


def check_udm2_grids(
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
        check_same_grid(north_up(mask.grid), north_up(image.grid), where)


def check_proj_grids(
    items: Sequence[pystac.Item], asset_name: str, headers: Sequence[_Header]
) -> None:
    """Refuse an optical asset whose file's grid (CRS, shape, transform; either may be
    stored south-up) is not the one its ``proj`` fields give: the scene's grid is built
    from those fields, while odc-stac reads the pixels where the file says they lie, so
    the scene's extent would be off (cut short, or an edge of empty fill)."""
    for item, header in zip(items, headers, strict=True):
        where = f"{header.location}: STAC item {item.id!r} asset {asset_name!r}"
        declared = north_up(item_geobox(item, asset_name))
        check_same_grid(north_up(header.grid), declared, where, "its proj fields'")
