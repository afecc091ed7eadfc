"""Helpers that write small GeoTIFFs and masks for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine


def write_raster(
    path: Path, data: np.ndarray, transform: Affine, crs: str, nodata: float | None = None
) -> Path:
    """Write (bands, rows, cols) ``data`` as a GeoTIFF."""
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
    return path
