"""A scene of one quartet's files: :func:`open_quartet` reads its layers and
:func:`assemble_layers` puts them together on the optical grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import xarray as xr

from ..align import AlignMethod
from ..cloudmask import udm2_classes_for
from ..href import PathType
from ..identity import Source, opened_file
from ..schema import validate
from .cloudmasks import ESTIMATE, cloudmask_layer
from .grids import check_same_grid, rechunk_like
from .layers import landcover_layer, optical_layer, sar_layer


def open_quartet(
    cloudy: PathType,
    cloudfree: PathType | None = None,
    sar: PathType | None = None,
    landcover: PathType | None = None,
    cloudmask: PathType | None = None,
    *,
    chunks: Any = "auto",
    align: AlignMethod = "coords",
    udm2_classes: Sequence[str] | None = None,
) -> xr.Dataset:
    """Open one M3R-CR quartet (or any scene in that form) as a lazy scene.

    Parameters
    ----------
    cloudy, cloudfree
        4-band PlanetScope GeoTIFFs (blue, green, red, NIR; reflectance x10000, read as
        stored: a header scale other than 1 or 0.0001, or an offset, is refused).
    sar
        2-band Sentinel-1 GeoTIFF (VV, VH in dB), at any resolution and CRS; a scale/offset
        in its header is applied (dB x100 stored as int16 with scale 0.01). A chunk of
        linear power instead raises :class:`~m3rcr_xr.exceptions.InputFileError` when read
        (:func:`~m3rcr_xr.io.layers.check_sar_unit`).
    landcover
        1-band ESA WorldCover GeoTIFF, at any resolution and CRS (class codes as stored:
        a header scale/offset is refused).
    cloudmask
        The cloud mask, on the optical grid: a boolean ``.npy`` or 1-band GeoTIFF (the
        dataset's masks); a Planet UDM2 GeoTIFF (recognised by its 8 uint8 bands), whose
        ``udm2_classes`` make the mask and whose unusable pixels (not imaged, or a band
        missing or suspect: :func:`m3rcr_xr.udm2_nodata`) become nodata 0 in
        ``cloudy``; or ``"estimate"``, a spectral test on ``cloudy``
        (:func:`m3rcr_xr.estimate_cloudmask`), with an :class:`~m3rcr_xr.exceptions.M3RCRWarning`.
    chunks
        ``"auto"`` (the ``scene_chunk`` option, 1024 px), an int, a dict of ``y``/``x``
        chunk sizes, or ``None`` to load into memory.
    align
        ``"coords"``: the 10 m layers go onto the optical grid by coordinates;
        ``"shape"``: by array shape, as the published loader does (SAR holes then take
        one mean over the resampled SAR, as in that loader).
    udm2_classes
        The UDM2 classes that count as cloud (:data:`m3rcr_xr.cloudmask.UDM2_CLASSES`);
        default (None) cloud, heavy haze and shadow. Add ``"light_haze"`` for UDM2.1's
        haze. Refused without a UDM2 ``cloudmask``, where they would be ignored.

    Returns
    -------
    xr.Dataset
        A scene (see :mod:`m3rcr_xr.schema`). Its ``encoding["source"]`` lists the
        files, each with its identity once opened (size, modification time and inode
        locally; ETag remotely: :func:`m3rcr_xr.identity.opened_file`, one
        ``stat`` or HEAD request a file): a file changed since (rewritten in place or
        replaced) is refused by :func:`m3rcr_xr.to_zarr`, :func:`m3rcr_xr.to_cog` and
        training, as the scene could mix pixels of the old file (read before, still in
        GDAL's cache) with the new one's; open it again. Once loaded (``.load()``), the
        scene is written whatever became of its files.

    Examples
    --------
    >>> ds = open_quartet("cloudy.tif", sar="s1.tif", landcover="lc.tif")  # doctest: +SKIP
    >>> ds.sar.sel(polarization="VV")  # doctest: +SKIP
    >>> ds = open_quartet("scene.tif", cloudmask="scene_udm2.tif")  # doctest: +SKIP
    """
    optical = optical_layer(cloudy, "cloudy", chunks)
    layers: dict[str, xr.DataArray] = {"cloudy": optical}
    if cloudfree is not None:
        layers["cloudfree"] = optical_layer(cloudfree, "cloudfree", chunks)
        check_same_grid(layers["cloudfree"], optical, cloudfree)
    if sar is not None:
        layers["sar"] = rechunk_like(sar_layer(sar, optical, chunks, align), optical)
    if landcover is not None:
        layers["landcover"] = rechunk_like(
            landcover_layer(landcover, optical, chunks, align), optical
        )
    if cloudmask is None:
        udm2_classes_for(udm2_classes, "there is no cloud mask")
    else:
        layers["cloudmask"] = cloudmask_layer(cloudmask, layers, chunks, udm2_classes)
    ds = assemble_layers(layers, optical)
    # each file's identity now, its layers open: one changed before the scene is written
    # is refused (identity.source_identities)
    opened = [opened_file(str(p)) for p in (cloudy, cloudfree, sar, landcover) if p]
    if cloudmask is not None and cloudmask != ESTIMATE:
        opened.append(_opened_mask(cloudmask, layers["cloudmask"]))
    ds.encoding["source"] = opened
    return validate(ds)


def _opened_mask(path: PathType, mask: xr.DataArray) -> Source:
    """The cloud mask file ``path`` with its identity at open: the one a UDM2's mask
    carries (:func:`~m3rcr_xr.cloudmask.open_udm2` took it: one ``stat`` or HEAD request
    saved), else taken now."""
    value = mask.encoding.get("source") or []
    named = [value] if isinstance(value, str) else value  # one source, or a list
    carried = [s for s in named if isinstance(s, Source) and s.at_open is not None]
    return carried[0] if carried else opened_file(str(path))


def assemble_layers(layers: dict[str, xr.DataArray], optical: xr.DataArray) -> xr.Dataset:
    """The scene of ``layers`` (each on ``optical``'s grid), on ``optical``'s ``y``/``x``
    coordinates and CRS."""
    coords = {"y": optical["y"].values, "x": optical["x"].values}
    variables = {}
    for name, array in layers.items():
        array = array.drop_vars([c for c in array.coords if c not in array.dims])
        variables[name] = array.assign_coords(coords)
    ds = xr.Dataset(variables)
    if optical.rio.crs is not None and optical.rio.crs.is_geographic:  # CF's units
        ds["y"].attrs = {"units": "degrees_north", "long_name": "latitude of pixel centre"}
        ds["x"].attrs = {"units": "degrees_east", "long_name": "longitude of pixel centre"}
    else:
        ds["y"].attrs = {"units": "metre", "long_name": "y coordinate of pixel centre"}
        ds["x"].attrs = {"units": "metre", "long_name": "x coordinate of pixel centre"}
    return ds.rio.write_crs(optical.rio.crs).rio.write_transform(optical.rio.transform())
