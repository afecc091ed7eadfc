import subprocess
import sys
from pathlib import Path

import pytest

import m3rcr_xr
from m3rcr_xr.cli import main


def test_ingest_a_split_folder_then_info(tmp_path, samples_dir, capsys):
    assert main(["ingest", str(samples_dir / "test"), str(tmp_path / "t.zarr")]) == 0
    assert m3rcr_xr.open_zarr(tmp_path / "t.zarr").sizes["patch"] == 1
    assert main(["info", str(tmp_path / "t.zarr"), "--stats"]) == 0
    out = capsys.readouterr().out
    assert "collection: 1 patches of 300x300 px; EPSG [32736]" in out
    assert "cloud fraction" in out


def test_ingest_a_filelist(tmp_path, samples_dir):
    with pytest.warns(m3rcr_xr.M3RCRWarning, match="duplicate"):
        code = main(
            [
                "ingest",
                str(samples_dir / "one_train_sample.csv"),
                str(tmp_path / "c.zarr"),
                "--root",
                str(samples_dir / "train"),
            ]
        )
    assert code == 0
    assert m3rcr_xr.open_zarr(tmp_path / "c.zarr").patch.values.tolist() == ["fall_1_p_457"]


def test_ingest_a_quartet(tmp_path, train_quartet, capsys):
    q = train_quartet
    code = main(
        [
            "ingest",
            str(q["cloudy"]),
            str(tmp_path / "q.zarr"),
            "--sar",
            str(q["sar"]),
            "--landcover",
            str(q["landcover"]),
            "--cloudmask",
            str(q["cloudmask"]),
        ]
    )
    assert code == 0
    scene = m3rcr_xr.open_zarr(tmp_path / "q.zarr")
    assert set(scene.data_vars) == {"cloudy", "sar", "landcover", "cloudmask"}
    assert main(["info", str(tmp_path / "q.zarr")]) == 0
    assert "scene: 300x300 px at 3 m; CRS EPSG:32646" in capsys.readouterr().out


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, train_quartet, capsys):
    dest = tmp_path / "never.zarr"
    code = main(
        ["ingest", str(train_quartet["cloudy"]), str(dest), "--sar", str(tmp_path / "missing.tif")]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.tif: sar file does not exist" in err[0]
    assert not dest.exists()


def test_info_on_an_incomplete_store(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing.zarr")]) == 2
    assert "no Zarr store" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "m3rcr_xr.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert "ingest" in result.stdout and "demo" in result.stdout


def test_decloud_writes_zarr_and_a_cog(tmp_path, capsys):
    import rasterio

    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((200, 150), chunks=64), tmp_path / "in.zarr")
    code = main(
        [
            "decloud",
            str(tmp_path / "in.zarr"),
            str(tmp_path / "out.zarr"),
            "--config",
            "preset=small",
            "--tile",
            "64",
            "--cog",
            str(tmp_path / "d.tif"),
        ]
    )
    assert code == 0
    out = m3rcr_xr.open_zarr(tmp_path / "out.zarr")["decloud"]
    assert out.shape == (4, 200, 150) and out.rio.crs.to_epsg() == 32632
    with rasterio.open(tmp_path / "d.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert cog.count == 4 and cog.crs.to_epsg() == 32632
    assert "wrote" in capsys.readouterr().out


def test_decloud_bad_tile_exits_2_before_writing(tmp_path, capsys):
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 64)), tmp_path / "in.zarr")
    code = main(
        [
            "decloud",
            str(tmp_path / "in.zarr"),
            str(tmp_path / "out.zarr"),
            "--model",
            "glf_cr",
            "--config",
            "preset=small",
            "--tile",
            "48",
        ]
    )
    assert code == 2
    assert "built for 32x32 tiles only" in capsys.readouterr().err
    assert not (tmp_path / "out.zarr").exists()


def test_config_arguments_must_be_key_value(tmp_path, capsys):
    assert (
        main(["decloud", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), "--config", "oops"])
        == 2
    )
    assert "expected KEY=VALUE" in capsys.readouterr().err
