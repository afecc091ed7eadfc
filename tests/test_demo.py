import pytest

import m3rcr_xr
from m3rcr_xr.cli import main

pytestmark = pytest.mark.slow


def test_demo_writes_every_output(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--size", "512"]) == 0
    for name in (
        "scene.zarr",
        "decloud.zarr",
        "quicklook.png",
        "metrics.csv",
        "metrics_by_class.png",
    ):
        assert (tmp_path / name).exists(), name
    out = capsys.readouterr().out
    assert "Dask dashboard: http" in out
    assert "whole scene: PSNR" in out
    decloud = m3rcr_xr.open_zarr(tmp_path / "decloud.zarr")["decloud"]
    scene = m3rcr_xr.open_zarr(tmp_path / "scene.zarr")
    assert decloud.shape == scene.cloudy.shape and decloud.rio.crs == scene.rio.crs
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "PSNR" in header and "landcover_class" in header
