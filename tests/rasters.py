"""Helpers that write small GeoTIFFs and masks for the tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

#: a 3 m optical grid and the 10 m grid over the same 90 m x 90 m (UTM 32N)
CRS = "EPSG:32632"
OPTICAL_GRID = Affine(3, 0, 500_000, 0, -3, 4_000_020)
COARSE_GRID = Affine(10, 0, 500_000, 0, -10, 4_000_020)


def write_raster(
    path: Path,
    data: np.ndarray,
    transform: Affine | None,
    crs: str | None,
    nodata: float | None = None,
    descriptions: tuple[str | None, ...] = (),
    scales: tuple[float, ...] = (),
    offsets: tuple[float, ...] = (),
) -> Path:
    """Write (bands, rows, cols) ``data`` as a GeoTIFF (no georeference where None),
    its bands described (named) by ``descriptions`` if given, and with the header's
    ``scales`` and ``offsets`` (value = raw x scale + offset) if given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bands, height, width = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=bands,
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(data)
        for band, text in enumerate(descriptions, start=1):
            if text is not None:
                dst.set_band_description(band, text)
        if scales:
            dst.scales = scales
        if offsets:
            dst.offsets = offsets
    return path


def write_optical(path: Path, data: np.ndarray, nodata: float | None = None) -> Path:
    """A 4-band optical GeoTIFF of (4, 30, 30) ``data`` (any dtype) on :data:`OPTICAL_GRID`."""
    return write_raster(path, data, OPTICAL_GRID, CRS, nodata)


def write_coarse(path: Path, data: np.ndarray, nodata: float | None = None) -> Path:
    """A (bands, 9, 9) SAR or land-cover GeoTIFF on :data:`COARSE_GRID`."""
    return write_raster(path, data, COARSE_GRID, CRS, nodata)


def write_lying_tiff(path: Path, width: int, height: int, bands: int, dtype: str) -> Path:
    """A TIFF of a few hundred bytes that declares ``height`` x ``width`` x ``bands`` in
    one DEFLATE strip holding 1 KiB of zeros: a reader that trusts it allocates it all."""
    sample = np.dtype(dtype)
    strip = zlib.compress(bytes(1024))
    short, long = 3, 4
    tags = [  # (tag, type, value), in ascending tag order as TIFF requires
        (256, long, width),
        (257, long, height),
        (258, short, sample.itemsize * 8),  # bits per sample
        (259, short, 8),  # DEFLATE
        (262, short, 1),  # min-is-black
        (273, long, 0),  # strip offset, set below
        (277, short, bands),
        (278, long, height),  # rows per strip: all of them
        (279, long, len(strip)),
        (284, short, 1),  # pixel interleaved
        (339, short, {"u": 1, "i": 2, "f": 3}[sample.kind]),
    ]
    header = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = header if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == short else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + strip)
    return path
