"""The scene's layers from their STAC items: the optical mosaic and its UDM2, SAR in dB,
land cover as WorldCover codes; the 10 m layers put onto the optical grid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import pystac
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from ..align import align_to, fill_nan_with_mean, yx_dims
from ..exceptions import InputFileError, argument
from ..io import check_sar_unit, describe_optical, landcover_attrs, rechunk_like, sar_attrs
from ..landcover import NODATA_CODE, to_worldcover
from ..rasters import apply_scaling, as_uint16, map_blocks
from ..schema import BANDS, POLARIZATIONS
from .assets import (
    UDM2_BANDS,
    check_declared_reflectance,
    check_proj_grids,
    check_udm2_grids,
    layer_scaling,
    optical_order,
    prepared,
)
from .grids import coarse_geobox, extent_union, item_geobox
from .mosaic import band_names, first_valid_mosaic, footprints, in_band_order, load, stack

#: linear SAR power at or below this (zeros included) is taken as this value: -50 dB
SAR_POWER_FLOOR = 1e-5
SAR_DB_FLOOR = 10 * math.log10(SAR_POWER_FLOOR)
#: what SAR assets may hold (``sar_unit=``): linear power (converted to dB) or dB
SAR_UNITS = ("power", "dB")


def optical_layer(
    items: Sequence[pystac.Item], names: Mapping[str, str], udm2: bool, scene: GeoBox, chunks: Any
) -> tuple[xr.DataArray, xr.DataArray | None, list[str]]:
    """The optical mosaic and, with ``udm2``, the UDM2 of the same items (each pixel's
    bands all from one item, :func:`~m3rcr_xr.stac.mosaic.first_valid_mosaic`), and the
    files read."""
    headers = prepared(items, names["optical"], len(BANDS), "optical")
    check_proj_grids(items, names["optical"], headers)
    check_declared_reflectance(items, names["optical"])
    orders = [optical_order(i, names["optical"], h) for i, h in zip(items, headers, strict=True)]
    bands = band_names(names["optical"], len(BANDS))
    sources = [header.location for header in headers]
    if udm2:
        udm2_headers = prepared(items, names["udm2"], UDM2_BANDS, "udm2")
        check_udm2_grids(items, names["udm2"], udm2_headers, headers)
        sources += [header.location for header in udm2_headers]
        bands += band_names(names["udm2"], UDM2_BANDS)
    loaded = yx_dims(load(items, bands, scene, chunks, per_item=True))
    loaded = in_band_order(loaded, bands[: len(BANDS)], orders)
    merged = first_valid_mosaic(
        loaded, bands, len(BANDS), footprints(items, names["optical"], scene)
    )
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
    sources = [h.location for name in asset_names for h in prepared(items, name, 1, dim)]
    geoboxes = [item_geobox(item, asset_names[0]) for item in items]
    native = coarse_geobox(geoboxes, scene)
    loaded = yx_dims(load(items, list(asset_names), native or scene, chunks, **kwargs))
    return stack(loaded, asset_names, dim), native, sources


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


def sar_layer(
    items: Sequence[pystac.Item],
    assets: Mapping[str, str],
    scene: GeoBox,
    optical: xr.DataArray,
    chunks: Any,
    *,
    unit: str,
) -> tuple[xr.DataArray, list[str]]:
    """The ``sar`` layer (polarization, y, x) on ``optical``'s grid from the items' ``vv``
    and ``vh`` assets holding ``unit``, in dB (power converted by :func:`to_db`), its
    holes inside the items filled with the band mean; and the files read."""
    stored, native, sources = _coarse(
        items, [assets["vv"], assets["vh"]], scene, chunks, "polarization", dtype="float32"
    )
    crs, nodata = stored.rio.crs, stored.attrs["_FillValue"]
    if nodata is not None and not np.isnan(nodata):  # declared nodata: holes, as NaN
        stored = stored.where(stored != nodata)
    scaling = [layer_scaling(items, assets[name]) for name in ("vv", "vh")]
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


def _covered(items: Sequence[pystac.Item], asset_name: str, like: xr.DataArray) -> xr.DataArray:
    """Where on ``like``'s grid the items' ``asset_name`` has pixels (see :func:`_inside`):
    the rest is odc-stac's empty fill, no stored value."""
    geoboxes = [item_geobox(item, asset_name) for item in items]
    return _inside(extent_union(geoboxes, like.rio.crs), like)


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


def landcover_layer(
    items: Sequence[pystac.Item],
    assets: Mapping[str, str],
    scene: GeoBox,
    optical: xr.DataArray,
    chunks: Any,
) -> tuple[xr.DataArray, list[str]]:
    """The ``landcover`` layer (y, x) on ``optical``'s grid from the items' land-cover
    asset, as WorldCover codes, and the files read."""
    codes, native, sources = _coarse(items, [assets["landcover"]], scene, chunks, "band")
    nodata = codes.attrs["_FillValue"]
    scale, offset = layer_scaling(items, assets["landcover"])
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
