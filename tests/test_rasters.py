"""Reading one raster (m3rcr_xr/rasters.py): opens bounded by the header, before any read."""

import resource
import time

import pytest

import m3rcr_xr
from m3rcr_xr.rasters import open_raster
from tests.rasters import write_lying_tiff


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize(
    ("width", "bands", "dtype", "message"),
    [
        (200_000, 4, "uint16", "declares 200000 x 200000 pixels x 4 band.*max_raster_bytes"),
        (60_000, 4, "uint16", "blocks of 60000 x 60000 pixels"),
        (200_000, 1, "uint8", "not a readable GeoTIFF"),  # GDAL reads it a row at a time
    ],
)
def test_a_tiny_file_declaring_a_huge_raster_fails_fast(tmp_path, width, bands, dtype, message):
    path = write_lying_tiff(tmp_path / "huge.tif", width, width, bands, dtype)
    assert path.stat().st_size < 300
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(m3rcr_xr.InputFileError, match=f"huge.tif: cloudy.*{message}"):
        open_raster(path, "cloudy", bands)
    assert time.perf_counter() - start < 10  # reading the declared pixels would take minutes
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100 * 1024
