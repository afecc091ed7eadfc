import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import m3rcr_xr
from m3rcr_xr import store
from m3rcr_xr.cli import main
from tests.conftest import a_file, foreign_store, snapshot, unconsolidated_store, user_folder


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


# ------------------------------------------------------ data safety: destinations
# Each case ends with exit status 2 and one line naming the path and the problem, and
# every file that was there before is still there, byte for byte.


def _error_line(capsys) -> str:
    """The one line the command wrote to stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _ingest_args(quartet: dict[str, Path], dest: Path | str) -> list[str]:
    return ["ingest", str(quartet["cloudy"]), str(dest), "--sar", str(quartet["sar"])]


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_ingest_into_the_working_directory_deletes_nothing(
    tmp_path, train_quartet, monkeypatch, capsys, flags
):
    copies = {name: Path(shutil.copy(path, tmp_path)).name for name, path in train_quartet.items()}
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    assert main([*_ingest_args(copies, "."), *flags]) == 2
    assert _error_line(capsys).startswith(
        f"m3rcr ingest: error: .: the destination contains the input {copies['cloudy']}"
    )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dest", ["DATA", "DATA/out.zarr", "."])
def test_ingest_a_dataset_into_itself_deletes_nothing(tmp_path, samples_dir, capsys, dest):
    shutil.copytree(samples_dir / "test", tmp_path / "DATA")
    before = snapshot(tmp_path)
    assert main(["ingest", str(tmp_path / "DATA"), str(tmp_path / dest), "--overwrite"]) == 2
    assert f"the input {tmp_path / 'DATA'}" in _error_line(capsys)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("out", "how"), [("S.zarr", "is"), ("S.zarr/out.zarr", "lies inside")])
def test_decloud_into_its_own_input_deletes_nothing(tmp_path, capsys, out, how):
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 64)), tmp_path / "S.zarr")
    before = snapshot(tmp_path)
    args = ["decloud", str(tmp_path / "S.zarr"), str(tmp_path / out), "--overwrite"]
    assert main([*args, "--config", "preset=small", "--tile", "32"]) == 2
    assert f"the destination {how} the input" in _error_line(capsys)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (a_file, "is a file, not a Zarr store"),
        (user_folder, "is a folder of other files, not a store written by m3rcr_xr"),
        (foreign_store, "is a Zarr store of other software"),
    ],
    ids=["file", "user-folder", "foreign-zarr"],
)
def test_ingest_never_writes_over_what_m3rcr_did_not_write(
    tmp_path, train_quartet, capsys, make, message
):
    dest = make(tmp_path / "dest")
    before = snapshot(dest)
    assert main([*_ingest_args(train_quartet, dest), "--overwrite"]) == 2
    line = _error_line(capsys)
    assert f"m3rcr ingest: error: {dest}: {message}" in line and "overwrite=" not in line
    assert snapshot(dest) == before


def test_a_complete_store_names_the_flag(tmp_path, train_quartet, capsys):
    args = _ingest_args(train_quartet, tmp_path / "q.zarr")
    assert main(args) == 0
    capsys.readouterr()
    before = snapshot(tmp_path / "q.zarr")
    assert main(args) == 2
    assert _error_line(capsys).endswith("a complete store exists; pass --overwrite to replace it")
    assert snapshot(tmp_path / "q.zarr") == before
    assert main([*args, "--overwrite"]) == 0


def test_ingest_over_an_unfinished_store_of_other_data(
    tmp_path, train_quartet, monkeypatch, capsys
):
    def disk_went_away(*args, **kwargs):
        raise OSError("disk went away")

    with monkeypatch.context() as patch:
        patch.setattr(store, "_write_step", disk_went_away)
        with pytest.raises(OSError, match="disk went away"):
            m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((300, 300)), tmp_path / "q.zarr")
    before = snapshot(tmp_path / "q.zarr")
    assert main(_ingest_args(train_quartet, tmp_path / "q.zarr")) == 2
    line = _error_line(capsys)
    assert "an unfinished store of other data" in line and "pass --overwrite to start" in line
    assert snapshot(tmp_path / "q.zarr") == before
    assert main([*_ingest_args(train_quartet, tmp_path / "q.zarr"), "--overwrite"]) == 0
    assert m3rcr_xr.open_zarr(tmp_path / "q.zarr").sizes == {
        "band": 4,
        "polarization": 2,
        "y": 300,
        "x": 300,
    }


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (a_file, "not a store written by m3rcr_xr (a file)"),
        (user_folder, "not a store written by m3rcr_xr (no zarr.json)"),
        (foreign_store, "not a store written by m3rcr_xr (a Zarr store without m3rcr_*"),
        (unconsolidated_store, "has no consolidated metadata, so m3rcr_xr did not finish it"),
    ],
    ids=["file", "user-folder", "foreign-zarr", "unconsolidated"],
)
def test_info_on_what_m3rcr_did_not_write(tmp_path, capsys, make, message):
    target = make(tmp_path / "in.zarr")
    capsys.readouterr()
    assert main(["info", str(target)]) == 2
    line = _error_line(capsys)
    assert message in line and "incomplete" not in line


@pytest.mark.parametrize(
    ("step", "code"), [("_initialise", errno.EROFS), ("_write_step", errno.ENOSPC)]
)
def test_a_read_only_or_full_file_system_exits_2(
    tmp_path, train_quartet, monkeypatch, capsys, step, code
):
    def unwritable(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "q.zarr"))

    monkeypatch.setattr(store, step, unwritable)
    assert main(_ingest_args(train_quartet, tmp_path / "q.zarr")) == 2
    assert f"q.zarr: writing the store failed: {os.strerror(code)}" in _error_line(capsys)
