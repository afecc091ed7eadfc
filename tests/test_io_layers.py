"""A quartet's layers (m3rcr_xr.io.layers): the SAR unit check, chunk by chunk."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

import m3rcr_xr
from m3rcr_xr.io.layers import _check_sar_chunk


def test_power_with_thermal_noise_residue_is_not_taken_for_db():
    """Noise removal leaves small negative powers, over calm water in much of a chunk:
    power all the same, where dB is -1 or less almost everywhere."""
    residue = np.random.default_rng(4).uniform(-0.003, 0.002, (2, 16, 16)).astype(np.float32)
    assert (residue < 0).mean() > 0.5
    assert _check_sar_chunk(residue, "power", "vh.tif") is residue


@pytest.mark.parametrize("size", [8, 16, 32, 90])
def test_the_sar_unit_check_leaves_the_real_samples_alone(shared_dir, size):
    """The two real quartets' SAR (dB, -36 to +11.5) passes the dB check, and their power
    the power check, in every window of ``size`` pixels (the chunks a file may be read
    in), band by band and both bands together; their dB fails the power check."""
    for path in sorted(shared_dir.glob("data/m3rcr-samples/*/S1_*/*/*.tif")):
        with rasterio.open(path) as src:
            db = src.read().astype(np.float32)
        step = max(size // 2, 1)
        for top in range(0, 90 - size + 1, step):
            for left in range(0, 90 - size + 1, step):
                window = db[:, top : top + size, left : left + size]
                for chunk in (window, window[:1], window[1:]):
                    _check_sar_chunk(chunk, "dB", str(path))
                    _check_sar_chunk(10 ** (chunk / 10), "power", str(path))
                    with pytest.raises(m3rcr_xr.InputFileError, match="this is backscatter in dB"):
                        _check_sar_chunk(chunk, "power", str(path))
