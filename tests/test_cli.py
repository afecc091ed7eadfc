import argparse
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from affine import Affine
from rio_cogeo.cogeo import cog_validate

import m3rcr_xr
from m3rcr_xr import cli, store
from m3rcr_xr.cli import main
from m3rcr_xr.store import writing
from m3rcr_xr.testing import serve_directory, stac_item
from tests.conftest import (
    EXPIRED,
    PRESIGNED,
    a_file,
    foreign_store,
    snapshot,
    unconsolidated_store,
    user_folder,
)
from tests.metrics_scenes import scene_stores
from tests.rasters import (
    COARSE_GRID,
    CRS,
    OPTICAL_GRID,
    write_coarse,
    write_lying_tiff,
    write_optical,
    write_raster,
)

#: a small network with random weights, asked for explicitly (decloud never runs one silently)
UNTRAINED_SMALL = ["--checkpoint", "untrained", "--config", "preset=small"]
#: the cheapest run that writes decloud_std
UNCERTAINTY = ["--tile", "32", "--tta", "flips", "--uncertainty"]


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


@pytest.mark.parametrize(("status", "phrase"), [(403, "Forbidden"), (401, "Unauthorized")])
@pytest.mark.parametrize("source", ["GeoTIFF", "STAC asset"])
def test_ingest_a_refused_url_exits_2_saying_access_was_refused(
    tmp_path, capsys, monkeypatch, source, status, phrase
):
    """An expired presigned URL (S3's 403) or one without credentials (401), given or
    an item's asset: one line naming it, without its signature; nothing written."""
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    # a name of each case's own: GDAL caches a URL's answer, and the port may be reused
    name = f"cloudy-{status}-{source[0]}.tif"
    cloudy = write_optical(tmp_path / name, np.ones((4, 30, 30), np.uint16))
    dest = tmp_path / "never.zarr"
    with serve_directory(tmp_path, query=PRESIGNED, refuse=status) as url:
        src = f"{url}/{name}?{EXPIRED}"
        if source == "STAC asset":
            item = stac_item("p1", {"ortho_analytic_4b_sr": cloudy})
            item.assets["ortho_analytic_4b_sr"].href = src
            (tmp_path / "item.json").write_text(json.dumps(item.to_dict()))
            src = str(tmp_path / "item.json")
        assert main(["ingest", src, str(dest)]) == 2
    line = _one_error_line(
        capsys,
        f"{url}/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=...&",
        f"cannot be read: access refused (HTTP {status} {phrase}); the URL is presigned: "
        "its signature may have expired",
    )
    assert "S1GN" not in line
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


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["decloud", "s.zarr", "d.zarr"], "; what was written is kept: the same command"),
        (["demo"], "; run it again to start over"),
        (
            ["train", "s", "--out", "r.pth", "--model", "dsen2_cr", "--steps", "1"],
            "; a run goes on from the ",
        ),
        (["info", "s.zarr"], ""),
    ],
)
def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch, argv, said):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"m3rcr_xr.cli.{argv[0]}._{argv[0]}", interrupted)
    assert main(argv) == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"m3rcr {argv[0]}: interrupted{said}")
    assert said or line == "m3rcr info: interrupted"


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """``m3rcr info STORE | true``: the pipe closed before the output is written; exit
    1 (as Python's own), no BrokenPipeError traceback."""
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((16, 16)), tmp_path / "s.zarr")
    command = [sys.executable, "-m", "m3rcr_xr.cli", "info", str(tmp_path / "s.zarr")]
    read, write = os.pipe()
    os.close(read)  # no reader: the first write fails with EPIPE
    with os.fdopen(write, "wb") as stdout:
        done = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True)
    assert done.returncode == cli.EXIT_BROKEN_PIPE
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr


#: a command as the console script runs it (``main()``), then Ctrl-C as the process
#: ends (threads joined, modules torn down), the command's work done and said
CTRL_C_AT_EXIT = """
import os, signal, sys
from m3rcr_xr import cli
cli.info._info = lambda args: print("done") or 0
sys.argv = ["m3rcr", "info", "s.zarr"]
status = cli.main()
os.kill(os.getpid(), signal.SIGINT)
sys.exit(status)
"""


def test_ctrl_c_after_the_command_is_over_is_ignored(monkeypatch):
    """It was a KeyboardInterrupt traceback from Python's shutdown, and exit 0; the
    handler is left as it is when main is given its arguments (as here)."""
    done = subprocess.run([sys.executable, "-c", CTRL_C_AT_EXIT], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr
    assert "KeyboardInterrupt" not in done.stderr
    monkeypatch.setattr(cli.info, "_info", lambda args: 0)
    handler = signal.getsignal(signal.SIGINT)
    assert main(["info", "s.zarr"]) == 0
    assert signal.getsignal(signal.SIGINT) is handler


def test_main_without_arguments_in_another_thread_returns_its_status(monkeypatch):
    """Only the main thread may set a signal handler: main() run in a thread of a
    caller's program raised ValueError instead of returning the command's status."""
    monkeypatch.setattr(sys, "argv", ["m3rcr", "info", "s.zarr"])
    monkeypatch.setattr(cli.info, "_info", lambda args: 0)
    handler = signal.getsignal(signal.SIGINT)
    statuses = []
    thread = threading.Thread(target=lambda: statuses.append(main()))
    thread.start()
    thread.join()
    assert statuses == [0]
    assert signal.getsignal(signal.SIGINT) is handler


#: the command line's logging set up, then distributed imported (as a command that
#: starts a cluster does) and one of its loggers used; argv: verbose (0 or 1)
DISTRIBUTED_CHATTER = """
import logging, sys
from m3rcr_xr import cli
assert "distributed" not in sys.modules
with cli.command_logging(verbose=bool(int(sys.argv[1]))):
    import distributed
    logging.getLogger("distributed.scheduler").info("scheduler chatter")
    logging.getLogger("distributed.scheduler").warning("scheduler warning")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_distributed_logs_only_warnings_unless_verbose(verbose):
    result = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED_CHATTER, str(int(verbose))],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert "scheduler warning" in result.stderr
    assert ("scheduler chatter" in result.stderr) == verbose


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
            "--checkpoint",
            "untrained",
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
        assert cog.count == 4 and cog.crs.to_epsg() == 32632
    assert cog_validate(str(tmp_path / "d.tif"))[0]
    assert "wrote" in capsys.readouterr().out
    # no --uncertainty, no decloud_std: no d_std.tif
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tif", "in.zarr", "out.zarr"]


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
            "--checkpoint",
            "untrained",
            "--tile",
            "48",
        ]
    )
    assert code == 2
    _one_error_line(capsys, "built for 32x32 tiles only", "use tiles of 32 or build the model")
    assert not (tmp_path / "out.zarr").exists()


def test_unknown_model_exits_2_listing_the_known_ones(tmp_path, capsys):
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 64)), tmp_path / "in.zarr")
    argv = ["decloud", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), "--model", "unet"]
    assert main(argv) == 2
    assert "unknown model 'unet'; available: dsen2_cr, glf_cr, align_cr" in capsys.readouterr().err
    assert not (tmp_path / "out.zarr").exists()


def test_config_arguments_must_be_key_value(tmp_path, capsys):
    assert (
        main(["decloud", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), "--config", "oops"])
        == 2
    )
    assert "expected KEY=VALUE" in capsys.readouterr().err


# ------------------------------------------------- bad input files: exit 2, one line (io)
def _one_error_line(capsys, *needles: str) -> str:
    """The one stderr line of a failed command; checks it names each of ``needles``."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("m3rcr "), err
    assert all(needle in err[0] for needle in needles), err[0]
    return err[0]


def _filelist(samples_dir, tmp_path, name: str = "list.csv") -> tuple[Path, list[str]]:
    """A copy of the test split's file list beside its data: (path, the row's cells)."""
    row = (samples_dir / "one_test_sample.csv").read_text().splitlines()[0].split(",")
    return tmp_path / name, row


def test_ingest_a_filelist_that_is_not_utf8(samples_dir, tmp_path, capsys):
    csv, row = _filelist(samples_dir, tmp_path)  # line 2 in UTF-16, as some editors save
    csv.write_bytes(",".join(row).encode() + b"\n" + ",".join(row).encode("utf-16") + b"\n")
    dest = tmp_path / "never.zarr"
    code = main(["ingest", str(csv), str(dest), "--root", str(samples_dir / "test")])
    assert code == 2
    _one_error_line(capsys, "list.csv:2:", "not UTF-8")
    assert not dest.exists()


def test_ingest_a_filelist_with_a_byte_order_mark(samples_dir, tmp_path):
    csv, row = _filelist(samples_dir, tmp_path)
    csv.write_text("\ufeff" + ",".join(row) + "\n", encoding="utf-8")
    dest = tmp_path / "bom.zarr"
    assert main(["ingest", str(csv), str(dest), "--root", str(samples_dir / "test")]) == 0
    assert m3rcr_xr.open_zarr(dest).patch.values.tolist() == ["summer_33_p_1"]


def test_ingest_a_filelist_row_with_an_empty_path(samples_dir, tmp_path, capsys):
    csv, row = _filelist(samples_dir, tmp_path)
    row[2] = ""
    csv.write_text(",".join(row) + "\n")
    dest = tmp_path / "never.zarr"
    assert main(["ingest", str(csv), str(dest), "--root", str(samples_dir / "test")]) == 2
    _one_error_line(capsys, "list.csv:1:", "empty path in column 'sar'")
    assert not dest.exists()


def test_ingest_a_filelist_with_a_cell_over_the_csv_field_limit(samples_dir, tmp_path, capsys):
    csv, row = _filelist(samples_dir, tmp_path)
    row[3] = "a" * 200_000
    csv.write_text(",".join(row) + "\n")
    dest = tmp_path / "never.zarr"
    assert main(["ingest", str(csv), str(dest), "--root", str(samples_dir / "test")]) == 2
    _one_error_line(capsys, "list.csv:1:", "not a CSV row: field larger than field limit")
    assert not dest.exists()


def test_ingest_a_filelist_with_a_nul_byte(tmp_path, capsys):
    csv = tmp_path / "l.csv"
    csv.write_text("a/cf.tif,a/cloudy.tif,a/s1.tif,a/lc.tif,a/c\0m.npy\n")
    (tmp_path / "data").mkdir()
    dest = tmp_path / "never.zarr"
    assert main(["ingest", str(csv), str(dest), "--root", str(tmp_path / "data")]) == 2
    _one_error_line(capsys, r"'a/c\x00m.npy'", "NUL byte")
    assert not dest.exists()


def test_ingest_a_cloudy_raster_without_crs(tmp_path, capsys):
    cloudy = write_raster(
        tmp_path / "nocrs.tif", np.ones((4, 30, 30), "uint16"), OPTICAL_GRID, None
    )
    dest = tmp_path / "never.zarr"
    assert main(["ingest", str(cloudy), str(dest)]) == 2
    _one_error_line(capsys, "nocrs.tif: cloudy has no CRS")
    assert not dest.exists()


def test_ingest_a_sar_without_crs_names_the_align_flag(tmp_path, capsys):
    cloudy = write_optical(tmp_path / "cloudy.tif", np.ones((4, 30, 30), "uint16"))
    sar = write_raster(tmp_path / "s1.tif", np.zeros((2, 9, 9), "float32"), COARSE_GRID, None)
    assert main(["ingest", str(cloudy), str(tmp_path / "a.zarr"), "--sar", str(sar)]) == 2
    _one_error_line(capsys, "s1.tif: sar has no CRS", "--align coords", "--align shape")


def test_ingest_a_rotated_cloudy_raster(tmp_path, capsys):
    rotated = Affine(3, 0.2, 500_000, 0.2, -3, 4_000_020)
    cloudy = write_raster(tmp_path / "rot.tif", np.ones((4, 30, 30), "uint16"), rotated, CRS)
    assert main(["ingest", str(cloudy), str(tmp_path / "never.zarr")]) == 2
    _one_error_line(capsys, "rot.tif: cloudy: rotated or sheared")


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_ingest_a_tiny_file_declaring_a_huge_raster(tmp_path, capsys):
    cloudy = write_lying_tiff(tmp_path / "huge.tif", 200_000, 200_000, 4, "uint16")
    assert main(["ingest", str(cloudy), str(tmp_path / "never.zarr")]) == 2
    _one_error_line(capsys, "huge.tif: cloudy declares 200000 x 200000")


def test_ingest_optical_values_that_would_wrap_around(tmp_path, capsys):
    data = np.full((4, 30, 30), 500, "int16")
    data[2, 10, 10] = -4630
    cloudy = write_optical(tmp_path / "int16.tif", data)
    dest = tmp_path / "never.zarr"
    assert main(["ingest", str(cloudy), str(dest)]) == 2  # found while writing: lazy reader
    _one_error_line(capsys, "int16.tif: cloudy (dtype int16)", "-4630", "[0, 65535]")
    assert not dest.exists()  # nothing half-written: the store this run began is gone


def test_a_wrong_value_in_an_empty_folder_leaves_the_folder_empty(tmp_path, capsys):
    data = np.full((4, 30, 30), 500, "int16")
    data[0, 0, 0] = -1
    cloudy = write_optical(tmp_path / "int16.tif", data)
    (dest := tmp_path / "made-by-the-user").mkdir()
    assert main(["ingest", str(cloudy), str(dest)]) == 2
    _one_error_line(capsys, "int16.tif")
    assert dest.is_dir() and not any(dest.iterdir())


def test_ingest_landcover_codes_outside_worldcover(tmp_path):
    cloudy = write_optical(tmp_path / "cloudy.tif", np.full((4, 30, 30), 500, "uint16"))
    codes = np.full((1, 9, 9), 50, "uint8")
    codes[0, 0, 0] = 201
    landcover = write_coarse(tmp_path / "lc.tif", codes)
    dest = tmp_path / "lc.zarr"
    with pytest.warns(m3rcr_xr.M3RCRWarning, match=r"lc.tif: landcover: code\(s\) 201"):
        assert main(["ingest", str(cloudy), str(dest), "--landcover", str(landcover)]) == 0
    stored = m3rcr_xr.open_zarr(dest).landcover.values
    assert stored[0, 0] == 0 and (stored[5:, 5:] == 50).all()


def test_evaluate_a_decloud_store_against_its_scene_store(scene_store, tmp_path, capsys):
    out = tmp_path / "decloud.zarr"
    flags = ["--config", "preset=small", "--checkpoint", "untrained", "--tile", "32"]
    assert main(["decloud", str(scene_store), str(out), *flags]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(scene_store), str(out), "--out", str(tmp_path / "m.csv")]) == 0
    table = pd.read_csv(tmp_path / "m.csv").set_index(["stratum", "landcover_class"])
    scene = m3rcr_xr.open_zarr(scene_store).assign(m3rcr_xr.open_zarr(out).data_vars)
    expected = m3rcr_xr.evaluate(scene).PSNR.sel(stratum="all", landcover_class="all")
    assert table.PSNR["all", "all"] == pytest.approx(float(expected))


def test_evaluate_of_the_scene_store_alone_asks_for_the_decloud_store(scene_store, capsys):
    assert main(["evaluate", str(scene_store)]) == 2
    said = capsys.readouterr().err
    assert said.startswith(f"m3rcr evaluate: error: --pred decloud: {scene_store} has no ")
    assert said.endswith("too: m3rcr evaluate SCENE.zarr DECLOUD.zarr\n")


def test_evaluate_refuses_stores_that_do_not_go_together(scene_store, tmp_path, capsys):
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((48, 40), seed=5), tmp_path / "again.zarr")
    argv = ["evaluate", str(scene_store), str(tmp_path / "again.zarr")]
    _fails_alone(capsys, argv, f"cloudy: a variable of both {scene_store} and {argv[2]}")
    shifted = m3rcr_xr.synthetic_scene((48, 40), seed=2)[["cloudfree"]].rename(cloudfree="d")
    m3rcr_xr.to_zarr(shifted.assign_coords(x=shifted.x + 3), tmp_path / "shifted.zarr")
    argv = ["evaluate", str(scene_store), str(tmp_path / "shifted.zarr"), "--pred", "d"]
    _fails_alone(capsys, argv, "not on one grid, so not evaluated together")


def test_evaluate_refuses_a_prediction_of_another_scene(tmp_path, capsys):
    """Scene B on the grid of scene A, given with the decloud store of A: exit 2."""
    stores = scene_stores(tmp_path)
    argv = ["evaluate", str(stores["b"]), str(stores["decloud_a"]), "--strata", "all"]
    said = (
        "--pred decloud: the prediction was made from another input than the target "
        f"'cloudfree' of {stores['b']}"
    )
    _fails_alone(capsys, argv, said)
    assert main(["evaluate", str(stores["a"]), str(stores["decloud_a"]), "--strata", "all"]) == 0


def test_evaluate_an_infinite_prediction(tmp_path, capsys):
    scene = m3rcr_xr.synthetic_scene((64, 64), chunks=32)
    decloud = scene.cloudfree.astype("float32")
    scene["decloud"] = decloud.where(decloud.x != decloud.x[3], np.inf)
    m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    assert main(["evaluate", str(tmp_path / "s.zarr")]) == 2
    _one_error_line(capsys, "'decloud' is NaN or infinite at", "'cloudfree' has data")


def test_evaluate_semantic_prints_and_writes_both_tables(tmp_path, capsys):
    scene = m3rcr_xr.synthetic_scene((64, 64), chunks=32, seed=3)
    m3rcr_xr.to_zarr(scene.assign(decloud=scene.cloudfree.astype("float32")), tmp_path / "s.zarr")
    out = tmp_path / "table.csv"
    argv = ["evaluate", str(tmp_path / "s.zarr"), "--semantic", "--out", str(out)]
    assert main([*argv, "--classifier", "landcover_unet-demo", "--level", "1"]) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "mIoU" in printed and f"wrote {out}" in printed
    metrics = pd.read_csv(out)
    semantic = pd.read_csv(tmp_path / "table_semantic.csv")
    assert "PSNR" in metrics and "mIoU" not in metrics and len(metrics) == 3 * 8
    assert {"source", "stratum", "landcover_class", "IoU", "F1", "OA"} <= set(semantic)
    assert set(semantic.source) == {"pred", "target", "cloudy"}
    # the prediction is the target: the same classes, the same scores
    pred, target = (
        semantic[semantic.source == s].reset_index(drop=True) for s in ("pred", "target")
    )
    pd.testing.assert_series_equal(pred.IoU, target.IoU)
    # level 2 with an untrained classifier of that level
    argv = ["evaluate", str(tmp_path / "s.zarr"), "--semantic", "--level", "2"]
    argv += ["--classifier", "untrained", "--classifier-config", "preset=small"]
    argv += ["--classifier-config", "level=2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out  # without --out, both tables are printed all the same
    assert "built-up" in printed and "PSNR" in printed and "mIoU" in printed


def test_evaluate_semantic_refusals(scene_store, capsys):
    argv = ["evaluate", str(scene_store), "--pred", "cloudy"]
    _fails_alone(capsys, [*argv, "--classifier", "x"], "--classifier and --classifier-config go")
    argv += ["--semantic", "--level", "2", "--classifier", "landcover_unet-demo"]
    _fails_alone(capsys, argv, "built for WorldCover level 1")


def _predicted_scene() -> xr.Dataset:
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=4)
    return scene.assign(decloud=scene.cloudfree.astype("float32") * 1.01)


def test_evaluate_reads_the_land_cover_and_cloud_mask_it_is_told(tmp_path):
    scene = _predicted_scene()
    renamed = scene.rename(landcover="lc", cloudmask="cm")
    m3rcr_xr.to_zarr(renamed, tmp_path / "renamed.zarr")
    argv = ["evaluate", str(tmp_path / "renamed.zarr"), "--out", str(tmp_path / "r.csv")]
    assert main([*argv, "--landcover", "lc", "--cloudmask", "cm"]) == 0
    table = pd.read_csv(tmp_path / "r.csv").set_index(["stratum", "landcover_class"])
    expected = m3rcr_xr.evaluate(scene).PSNR.to_series()
    pd.testing.assert_series_equal(table.PSNR, expected, check_names=False)


def test_evaluate_goes_without_land_cover_or_cloud_mask(tmp_path, capsys):
    """A store without land cover (STAC items ingested without --landcover) or without a
    cloud mask is evaluated; the refusals name the flags to go without them."""
    scene = _predicted_scene()
    m3rcr_xr.to_zarr(scene.drop_vars("landcover"), tmp_path / "no_lc.zarr")
    argv = ["evaluate", str(tmp_path / "no_lc.zarr")]
    assert main(argv) == 2
    _one_error_line(capsys, "'landcover' is missing", "(pass --landcover none to evaluate")
    assert main([*argv, "--landcover", "none", "--out", str(tmp_path / "a.csv")]) == 0
    table = pd.read_csv(tmp_path / "a.csv")
    assert set(table.landcover_class) == {"all"} and len(table) == 3
    _fails_alone(capsys, [*argv, "--landcover", "none", "--semantic"], "got --level 1, --lan")

    m3rcr_xr.to_zarr(scene.drop_vars("cloudmask"), tmp_path / "no_cm.zarr")
    argv = ["evaluate", str(tmp_path / "no_cm.zarr")]
    assert main(argv) == 2
    _one_error_line(capsys, "'cloudmask' is missing", "(pass --strata all to evaluate")
    assert main([*argv, "--strata", "all", "--out", str(tmp_path / "s.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "s.csv").stratum) == {"all"}


def test_evaluate_of_a_variable_without_bands_is_one_line(tmp_path, capsys):
    """``--pred cloudmask`` (2-D): exit 2 and a line naming pred, not a traceback."""
    m3rcr_xr.to_zarr(_predicted_scene(), tmp_path / "scene.zarr")
    assert main(["evaluate", str(tmp_path / "scene.zarr"), "--pred", "cloudmask"]) == 2
    _one_error_line(capsys, "pred: dims ('y', 'x') lack ['band']")


@pytest.mark.parametrize(
    "strata, says",
    [
        ("all,fog", "--strata all,fog: unknown stratum 'fog'"),
        ("clear,clear", "--strata clear,clear: 'clear' given twice"),
        (",", "--strata '': no stratum given; strata are distinct values of all, cloudy, clear"),
    ],
)
def test_evaluate_refuses_bad_strata_before_reading(tmp_path, capsys, strata, says):
    out = tmp_path / "m.csv"
    argv = ["evaluate", str(tmp_path / "absent.zarr"), "--strata", strata, "--out", str(out)]
    _fails_alone(capsys, argv, says, out)


# ------------------------------------------------- argument and output-path checks
# Each bad argument ends with exit 2, one line naming the flag, before any work: no
# output store, no partial file.
def _fails_alone(capsys, argv: list[str], match: str, *never: Path) -> None:
    assert main(argv) == 2
    assert _one_error_line(capsys, match).startswith(f"m3rcr {argv[0]}: error: ")
    for path in never:
        assert not path.exists(), path


@pytest.fixture(scope="module")
def scene_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "scene.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((48, 40), seed=2), path)
    return path


@pytest.mark.parametrize(
    ("size", "match"),
    [
        ("0", "--size 0: must be an integer from 1 to 16384"),
        ("-3", "--size -3: must be an integer from 1"),
        ("1000000", "--size 1000000: must be an integer from 1 to 16384"),
    ],
)
def test_demo_refuses_a_size_before_writing(tmp_path, capsys, size, match):
    out = tmp_path / "demo"
    _fails_alone(capsys, ["demo", "--out", str(out), "--size", size], match, out)


def test_demo_refuses_a_file_as_its_folder(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    _fails_alone(capsys, ["demo", "--out", str(tmp_path / "taken")], "is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--batch-size", "0"], "--batch-size 0: must be an integer >= 1"),
        (["--batch-size", "-2"], "--batch-size -2: must be an integer >= 1"),
        (["--tile", "0"], "--tile 0: must be an integer >= 1"),
        (["--overlap", "-1"], "--overlap -1: must be an integer >= 0"),
        (["--tile", "32", "--overlap", "16"], "--overlap 16: must be in [0, tile/2)"),
        (["--device", "gpu"], "--device gpu: not a device"),
        (["--device", "cuda:99"], "--device cuda:99: this process has"),
        (["--config", "n_feats=16.5"], "dsen2_cr: n_feats=16.5 must be an integer"),
        (["--config", "n_feets=16"], "unknown configuration key 'n_feets'"),
        (["--config", "n_feats={{[1]:2}}"], "n_feats='{[1]:2}' must be an integer"),
        (["--config", "res_scale=1e999"], "dsen2_cr: res_scale=inf must be a finite number"),
        (["--cog", "{tmp}/d.png"], "write a .tif/.tiff file, not '.png'"),
        (["--cog", "{tmp}/d"], "write a .tif/.tiff file, not 'no suffix'"),
        (["--cog", "{tmp}/no/d.tif"], "/no does not exist"),
    ],
)
def test_decloud_refuses_arguments_before_writing(scene_store, tmp_path, capsys, flags, match):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    out = tmp_path / "out.zarr"
    argv = ["decloud", str(scene_store), str(out), *UNTRAINED_SMALL, *flags]
    _fails_alone(capsys, argv, match, out, tmp_path / "d.tif", tmp_path / "d.png")


def test_decloud_never_replaces_a_cog_unasked(scene_store, tmp_path, capsys):
    cog, out = tmp_path / "mine.tif", tmp_path / "out.zarr"
    cog.write_bytes(b"not ours")
    argv = ["decloud", str(scene_store), str(out), *UNTRAINED_SMALL, "--cog", str(cog)]
    _fails_alone(capsys, argv, f"--cog {cog}: {cog} exists; pass --overwrite", out)
    assert cog.read_bytes() == b"not ours"
    # asked, it still replaces only a GeoTIFF of m3rcr_xr, before any work
    _fails_alone(capsys, [*argv, "--overwrite"], f"{cog}: was not written by m3rcr_xr", out)
    assert cog.read_bytes() == b"not ours"
    cog.unlink()
    assert main([*argv, "--tile", "32"]) == 0
    first = cog.read_bytes()
    assert main([*argv, "--tile", "16", "--overwrite"]) == 0  # its own: replaced
    assert cog.read_bytes()[:2] in (b"II", b"MM") and cog.read_bytes() != first


def test_decloud_refused_by_another_run_renaming_its_cog_names_cog(scene_store, tmp_path, capsys):
    """Another run renaming the same GeoTIFF at that moment: the refusal said "choose
    another --path", an option decloud does not have."""
    from m3rcr_xr import locks
    from m3rcr_xr.exceptions import StoreError

    cog, out = tmp_path / "d.tif", tmp_path / "out.zarr"
    argv = ["decloud", str(scene_store), str(out), *UNTRAINED_SMALL, "--cog", str(cog)]
    with locks.locked_file(cog, "path", StoreError):
        assert main(argv) == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(
            "another run is writing this file (it holds "
            f"{tmp_path / '.d.tif.m3rcr-lock'}); wait for it to end or choose another --cog"
        )
    )
    assert not cog.exists()


def test_decloud_writes_the_uncertainty_beside_the_cog(scene_store, tmp_path, capsys):
    import rasterio

    cog, std = tmp_path / "d.tif", tmp_path / "d_std.tif"
    argv = ["decloud", str(scene_store), str(tmp_path / "o.zarr"), *UNTRAINED_SMALL]
    assert main([*argv, *UNCERTAINTY, "--cog", str(cog)]) == 0
    assert f"wrote {cog}\nwrote {std}\n" in capsys.readouterr().out
    assert cog_validate(str(std), strict=True)[0]
    expected = m3rcr_xr.open_zarr(tmp_path / "o.zarr")["decloud_std"].values
    with rasterio.open(std) as f:
        assert f.descriptions == ("blue", "green", "red", "nir") and np.isnan(f.nodata)
        assert np.array_equal(f.read()[:, :48, :40], expected, equal_nan=True)
    assert (expected > 0).any()


def test_decloud_writes_a_scene_cog_to_object_storage(bucket, scene_store, capsys):
    """A URL's suffix is checked before any work, its bucket by check_cog_destination."""
    import s3fs

    cog, out = f"s3://{bucket}/d.tif", f"s3://{bucket}/out.zarr"
    argv = ["decloud", str(scene_store), out, *UNTRAINED_SMALL]
    _fails_alone(capsys, [*argv, "--cog", f"s3://{bucket}/d.png"], "d.png: write a .tif/.tiff")
    assert main([*argv, "--cog", cog]) == 0
    assert capsys.readouterr().out.endswith(f"wrote {out}\nwrote {cog}\n")
    assert s3fs.S3FileSystem().cat_file(cog)[:2] in (b"II", b"MM")


def test_decloud_prints_no_password_of_a_url(scene_store, capsys):
    """Neither in what it wrote, nor in its log (-v: to_cog's INFO lines too)."""
    where = "memory://alice:S3CRET@m3rcr-cli"
    argv = ["-v", "decloud", str(scene_store), f"{where}/out.zarr", *UNTRAINED_SMALL]
    assert main([*argv, "--cog", f"{where}/d.tif"]) == 0
    shown = capsys.readouterr()
    assert "S3CRET" not in shown.out + shown.err
    wrote = "wrote memory://alice@m3rcr-cli/out.zarr\nwrote memory://alice@m3rcr-cli/d.tif\n"
    assert wrote in shown.out
    assert "wrote 1 GeoTIFF(s) to memory://alice@m3rcr-cli/d.tif" in shown.err


def test_decloud_never_replaces_an_uncertainty_cog_unasked(scene_store, tmp_path, capsys):
    cog, std, out = tmp_path / "d.tif", tmp_path / "d_std.tif", tmp_path / "out.zarr"
    std.write_bytes(b"not ours")
    argv = ["decloud", str(scene_store), str(out), *UNTRAINED_SMALL, *UNCERTAINTY]
    _fails_alone(capsys, [*argv, "--cog", str(cog)], f"{std}: exists; pass --overwrite", out, cog)
    assert std.read_bytes() == b"not ours"


def test_decloud_writes_a_cog_per_patch_of_a_collection(tmp_path, capsys):
    """With --uncertainty, decloud_std goes to the folder beside, under the same names."""
    import rasterio

    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_collection(2, 32), tmp_path / "c.zarr")
    cogs = tmp_path / "cogs"
    argv = ["decloud", str(tmp_path / "c.zarr"), str(tmp_path / "out.zarr"), "--cog", str(cogs)]
    assert main([*argv, *UNTRAINED_SMALL, *UNCERTAINTY]) == 0
    names = sorted(p.name for p in cogs.iterdir())
    assert names == ["synthetic_0_p_0.tif", "synthetic_1_p_0.tif"]
    assert sorted(p.name for p in (tmp_path / "cogs_std").iterdir()) == names
    std = m3rcr_xr.open_zarr(tmp_path / "out.zarr")["decloud_std"].isel(patch=1).values
    with (
        rasterio.open(cogs / names[1]) as cog,
        rasterio.open(cogs.with_name("cogs_std") / names[1]) as spread,
    ):
        assert cog.count == 4 and cog.crs.to_epsg() == 32632 and cog.shape == (32, 32)
        assert spread.crs == cog.crs and spread.transform == cog.transform
        assert np.array_equal(spread.read(), std, equal_nan=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_decloud_refuses_a_folder_it_cannot_write_to(scene_store, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    argv = ["decloud", str(scene_store), str(tmp_path / "o.zarr"), "--cog", str(locked / "d.tif")]
    _fails_alone(capsys, argv, "is not writable", tmp_path / "o.zarr")


@pytest.mark.parametrize(
    ("name", "match"),
    [("m.txt", "--out {path}: write a .csv/.json file"), ("no/m.csv", "folder {folder}")],
)
def test_evaluate_checks_its_table_path_before_computing(
    scene_store, tmp_path, capsys, monkeypatch, name, match
):
    from m3rcr_xr import metrics

    monkeypatch.setattr(metrics, "evaluate", lambda *a, **k: pytest.fail("evaluate ran"))
    path = tmp_path / name
    argv = ["evaluate", str(scene_store), "--pred", "cloudy", "--out", str(path)]
    _fails_alone(capsys, argv, match.format(path=path, folder=path.parent), path)


def test_evaluate_writes_no_table_into_a_store_it_reads(scene_store, capsys, monkeypatch):
    from m3rcr_xr import metrics

    monkeypatch.setattr(metrics, "evaluate", lambda *a, **k: pytest.fail("evaluate ran"))
    path = scene_store / "m.csv"
    argv = ["evaluate", str(scene_store), "--pred", "cloudy", "--out", str(path)]
    _fails_alone(capsys, argv, f"m.csv: the destination lies inside the input {scene_store}", path)


@pytest.mark.parametrize("semantic", [False, True])
def test_evaluate_replaces_an_existing_table_only_with_overwrite(
    scene_store, tmp_path, capsys, monkeypatch, semantic
):
    from m3rcr_xr import metrics

    table = tmp_path / "m.csv"
    theirs = table.with_name("m_semantic.csv") if semantic else table
    theirs.write_text("my,own\n1,2\n")
    monkeypatch.setattr(metrics, "evaluate", lambda *a, **k: pytest.fail("evaluate ran"))
    argv = ["evaluate", str(scene_store), "--pred", "cloudy", "--out", str(table)]
    argv += ["--semantic"] if semantic else []
    assert main(argv) == 2
    assert f"--out {theirs}: {theirs} exists; pass --overwrite" in capsys.readouterr().err
    assert theirs.read_text() == "my,own\n1,2\n"
    assert main([*argv, "--overwrite"]) == 2  # a user's file, even with --overwrite
    assert f"{theirs}: is not a table m3rcr_xr wrote" in capsys.readouterr().err
    assert theirs.read_text() == "my,own\n1,2\n"
    theirs.unlink()
    monkeypatch.undo()
    if not semantic:
        assert main(argv) == 0
        first = table.read_text()
        assert main([*argv, "--level", "2", "--overwrite"]) == 0  # its own table
        assert "PSNR" in table.read_text() and table.read_text() != first


class _Killed(BaseException):
    """A kill, as far as the files on disk can tell: nothing after it is written."""


def _semantic_runs(scene_store: Path) -> dict[str, xr.Dataset]:
    """evaluate(..., semantic=True) results of ``--pred cloudy`` and ``cloudfree``, told
    apart by their PSNR (the semantic scores: stand-ins, without the classifier)."""
    from m3rcr_xr.metrics import SEMANTIC_SCORES

    run = m3rcr_xr.evaluate(m3rcr_xr.open_zarr(scene_store), "cloudy", "cloudfree").compute()
    runs = {}
    for offset, pred in enumerate(("cloudy", "cloudfree")):
        psnr = run.PSNR - offset
        by_source = psnr.expand_dims(source=["pred", "target"])
        runs[pred] = run.assign(PSNR=psnr, **dict.fromkeys(SEMANTIC_SCORES, by_source))
    return runs


def test_evaluate_never_leaves_tables_of_two_runs(scene_store, tmp_path, capsys, monkeypatch):
    """Killed as its metrics table replaced the earlier run's, ``evaluate --semantic
    --overwrite`` left the earlier semantic table beside it; a run without
    ``--semantic`` left it too. Both tables go together now."""
    from m3rcr_xr import metrics

    runs = _semantic_runs(scene_store)

    def evaluate(stores, pred, *args, semantic, **kwargs):
        return runs[pred] if semantic else metrics.split_semantic(runs[pred])[0]

    monkeypatch.setattr(metrics, "evaluate", evaluate)
    out, beside = tmp_path / "pair.csv", tmp_path / "pair_semantic.csv"
    argv = ["evaluate", str(scene_store), "--semantic", "--out", str(out), "--overwrite"]
    assert main([*argv, "--pred", "cloudy"]) == 0
    first = out.read_text()
    replace = os.replace

    def killed_in(source, destination):
        replace(source, destination)
        if Path(destination) == out:
            raise _Killed

    monkeypatch.setattr(os, "replace", killed_in)
    with pytest.raises(_Killed):
        main([*argv, "--pred", "cloudfree"])
    assert out.read_text() != first
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # not the earlier semantic
    monkeypatch.setattr(os, "replace", replace)
    assert main([*argv, "--pred", "cloudfree"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, beside.name]
    # without --semantic: the earlier semantic table goes, with --overwrite only
    plain = ["evaluate", str(scene_store), "--pred", "cloudy", "--out", str(out)]
    out.unlink()
    capsys.readouterr()
    _fails_alone(capsys, plain, f"{beside} holds the semantic scores of an earlier run", out)
    assert main([*plain, "--overwrite"]) == 0
    said = f"removed {beside}: the semantic table of an earlier run\nwrote {out}\n"
    assert capsys.readouterr().out.endswith(said)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    beside.write_text("source,mine\n")  # a user's file of that name stays
    assert main([*plain, "--overwrite"]) == 0
    assert beside.read_text() == "source,mine\n"


@pytest.mark.parametrize("other", ["with --semantic", "without"])
def test_evaluate_keeps_the_tables_another_run_wrote_meanwhile(
    scene_store, tmp_path, capsys, monkeypatch, other
):
    """Two ``evaluate --semantic --out T`` started together, without ``--overwrite``,
    both found no T at their start and both said "wrote": the second to finish had
    replaced the first's tables. It is refused now, naming the file; the first's stay."""
    from m3rcr_xr import metrics

    runs = _semantic_runs(scene_store)
    out, beside = tmp_path / "ev.csv", tmp_path / "ev_semantic.csv"
    first = metrics.split_semantic(runs["cloudy"])
    first = first if other == "with --semantic" else first[:1]

    def evaluate(stores, pred, *args, **kwargs):
        metrics.write_tables(list(zip(first, [out, beside], strict=False)))  # the other run
        return runs[pred]

    monkeypatch.setattr(metrics, "evaluate", evaluate)
    argv = ["evaluate", str(scene_store), "--semantic", "--out", str(out), "--pred", "cloudfree"]
    assert main(argv) == 2
    said = f"m3rcr evaluate: error: {out}: exists (another run may have written it meanwhile); "
    _one_error_line(capsys, said + "pass --overwrite to replace it")
    tables = snapshot(tmp_path)  # the other run's, and no temporary file of this one
    assert sorted(tables) == sorted(p.name for p in (out, beside)[: len(first)])
    monkeypatch.setattr(metrics, "evaluate", lambda stores, pred, *a, **k: runs[pred])
    assert main(argv) == 2  # at the start, as before
    assert main([*argv, "--overwrite"]) == 0  # asked: replaced
    assert snapshot(tmp_path) != tables


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--steps", "0"], "--steps 0: must be an integer >= 1"),
        (["--batch-size", "0"], "--batch-size 0: must be an integer >= 1"),
        (["--crop", "0"], "--crop 0: must be an integer >= 1"),
        (["--lr", "0"], "--lr 0.0: must be a finite number > 0"),
        (["--lr", "nan"], "--lr nan: must be a finite number > 0"),
        (["--lr-step", "-1"], "--lr-step -1: must be an integer >= 1"),
        (["--lr-decay-start", "-1"], "--lr-decay-start -1: must be an integer >= 0"),
        (["--seed", "-1"], "--seed -1: must be an integer >= 0"),
        (["--checkpoint-every", "0"], "--checkpoint-every 0: must be an integer >= 1"),
        (["--workers", "-1"], "--num-workers -1: must be an integer >= 0"),
        (["--device", "cuda:99"], "--device cuda:99: this process has"),
        (["--config", "n_feats=16.5"], "dsen2_cr: n_feats=16.5 must be an integer"),
        (
            ["--model", "glf_cr", "--config", "preset=small", "--crop", "48"],
            "got 48x48; use --crop 32 or build it with --config preset=small --config "
            "input_size=48",
        ),
        (["--out", "{tmp}/run.txt"], "--out {tmp}/run.txt: write a .pth/.pt/.ckpt file"),
        (["--out", "{tmp}/no/run.pth"], "/no does not exist"),
        (["--export", "{tmp}/w.pth"], "write a .safetensors file, not '.pth'"),
    ],
)
def test_train_refuses_arguments_before_any_work(scene_store, tmp_path, capsys, flags, match):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    run = tmp_path / "run.pth"
    argv = ["train", str(scene_store), "--model", "dsen2_cr", "--steps", "1", "--out", str(run)]
    _fails_alone(capsys, [*argv, *flags], match.format(tmp=tmp_path), run, tmp_path / "run.txt")


@pytest.mark.parametrize("flag", ["--out", "--export"])
@pytest.mark.parametrize("role", ["training store", "validation store"])
def test_train_writes_no_file_into_a_store_it_reads(scene_store, tmp_path, capsys, flag, role):
    """A checkpoint or weights inside a store changes its listing (the resume then
    refuses the store as rewritten): refused before any work, the store as it was."""
    val = shutil.copytree(scene_store, tmp_path / "val.zarr")
    store = scene_store if role == "training store" else val
    files = {"--out": tmp_path / "run.pth", "--export": tmp_path / "w.safetensors"}
    files[flag] = store / files[flag].name
    before = snapshot(store)
    argv = ["train", str(scene_store), "--model", "dsen2_cr", "--steps", "1", "--val", str(val)]
    argv += ["--config", "preset=small", "--crop", "32"]  # data it could train on
    argv += ["--out", str(files["--out"]), "--export", str(files["--export"])]
    says = f"{files[flag]}: the destination lies inside the {role} {store}; write it somewhere"
    _fails_alone(capsys, argv, says, *files.values())
    assert snapshot(store) == before


# ------------------------------------------------------ data safety: destinations
# Each case ends with exit status 2 and one line naming the path and the problem, and
# every file that was there before is still there, byte for byte.


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
    assert _one_error_line(capsys).startswith(
        f"m3rcr ingest: error: .: the destination contains the input {copies['cloudy']}"
    )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dest", ["DATA", "DATA/out.zarr", "."])
def test_ingest_a_dataset_into_itself_deletes_nothing(tmp_path, samples_dir, capsys, dest):
    shutil.copytree(samples_dir / "test", tmp_path / "DATA")
    before = snapshot(tmp_path)
    assert main(["ingest", str(tmp_path / "DATA"), str(tmp_path / dest), "--overwrite"]) == 2
    assert f"the input {tmp_path / 'DATA'}" in _one_error_line(capsys)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("out", "how"), [("S.zarr", "is"), ("S.zarr/out.zarr", "lies inside")])
def test_decloud_into_its_own_input_deletes_nothing(tmp_path, capsys, out, how):
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 64)), tmp_path / "S.zarr")
    before = snapshot(tmp_path)
    args = ["decloud", str(tmp_path / "S.zarr"), str(tmp_path / out), "--overwrite"]
    assert main([*args, *UNTRAINED_SMALL, "--tile", "32"]) == 2
    assert f"the destination {how} the input" in _one_error_line(capsys)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("as_url", [False, True])
def test_decloud_over_its_checkpoint_is_refused(tmp_path, capsys, small_checkpoint, as_url):
    """A checkpoint inside the output store is refused as a path and as a file:// URL
    (which was taken for a remote one and left out of the check)."""
    for name in ("S.zarr", "out.zarr"):
        m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 64)), tmp_path / name, progress=False)
    weights = tmp_path / "out.zarr" / "w.pth"
    shutil.copy(small_checkpoint, weights)
    before = snapshot(tmp_path)
    checkpoint = weights.as_uri() if as_url else str(weights)
    args = ["decloud", str(tmp_path / "S.zarr"), str(tmp_path / "out.zarr"), "--overwrite"]
    assert main([*args, "--checkpoint", checkpoint, "--config", "preset=small"]) == 2
    assert f"the destination contains the input {checkpoint}" in _one_error_line(capsys)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("cog", "role"), [("S.zarr/d.tif", "input"), ("out.zarr/d.tif", "output store")]
)
def test_a_cog_inside_the_input_or_the_output_is_refused(tmp_path, capsys, cog, role):
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 64)), tmp_path / "S.zarr")
    before = snapshot(tmp_path)
    args = ["decloud", str(tmp_path / "S.zarr"), str(tmp_path / "out.zarr"), "--tile", "32"]
    assert main([*args, *UNTRAINED_SMALL, "--cog", str(tmp_path / cog)]) == 2
    assert f"the destination lies inside the {role}" in _one_error_line(capsys, cog)
    assert snapshot(tmp_path) == before


def test_a_failed_cog_write_leaves_no_partial_file(scene_store, tmp_path, capsys, monkeypatch):
    from m3rcr_xr import cog as cog_module

    def crash(array, path, *args, **kwargs):
        Path(path).write_bytes(b"half a GeoTIFF")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cog_module, "cog_graph", crash)
    cog = tmp_path / "d.tif"
    argv = ["decloud", str(scene_store), str(tmp_path / "o.zarr"), *UNTRAINED_SMALL]
    assert main([*argv, "--tile", "32", "--cog", str(cog)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the store's progress bar
    assert last.startswith("m3rcr decloud: error: ") and "No space left on device" in last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]  # no d.tif, no partial


def _cog_run(scene_store, tmp_path):
    """``m3rcr decloud --uncertainty --cog d.tif`` of ``scene_store``: the output store,
    the two GeoTIFF paths and the command line."""
    out, cog, std = tmp_path / "o.zarr", tmp_path / "d.tif", tmp_path / "d_std.tif"
    argv = ["decloud", str(scene_store), str(out), *UNTRAINED_SMALL, *UNCERTAINTY]
    return out, cog, std, [*argv, "--cog", str(cog)]


def _never(*args, **kwargs):
    raise AssertionError("the store was written again")


def test_a_run_cut_off_in_its_cogs_writes_them_from_its_complete_store(
    scene_store, tmp_path, capsys, monkeypatch
):
    """Cut off after "wrote o.zarr" (a full disk here; Ctrl-C alike): the same command
    again writes the GeoTIFFs from the store (it holds this run's data), without
    running the network again or --overwrite."""
    import rasterio

    from m3rcr_xr import cog as cog_module

    def cut_off(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out, cog, std, argv = _cog_run(scene_store, tmp_path)
    monkeypatch.setattr(cog_module, "cog_graph", cut_off)
    assert main(argv) == 2
    assert store.is_complete(out) and not cog.exists() and not std.exists()
    capsys.readouterr()
    monkeypatch.undo()
    before = snapshot(out)
    monkeypatch.setattr(store, "to_zarr", _never)
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert f"{out} is complete: its GeoTIFFs come from it\nwrote {cog}\nwrote {std}\n" in shown
    assert snapshot(out) == before
    assert cog_validate(str(std), strict=True)[0]
    with rasterio.open(cog) as f:
        expected = m3rcr_xr.open_zarr(out)["decloud"].values
        assert np.array_equal(f.read()[:, :48, :40], expected, equal_nan=True)


def _second_cog_missing(scene_store, tmp_path):
    """:func:`_cog_run`, run, its second GeoTIFF then removed (by hand; or a run of an
    earlier version, which wrote one GeoTIFF after the other, was cut off between them)."""
    out, cog, std, argv = _cog_run(scene_store, tmp_path)
    assert main(argv) == 0
    std.unlink()
    return out, cog, std, argv


def test_a_run_cut_off_in_its_second_cog_replaces_neither(
    scene_store, tmp_path, capsys, monkeypatch
):
    """A run cut off (Ctrl-C here, a kill alike) while it wrote OUT_std.tif had replaced
    OUT.tif already: OUT.tif of the new run beside OUT_std.tif of the one before, and
    nothing said so. Both are renamed together now, once both are written. Its line
    said the same command without --overwrite goes on, which refused the pair of the
    run before (other data): it says to remove them first, which works."""
    from m3rcr_xr import cog as cog_module

    _, cog, std, argv = _cog_run(scene_store, tmp_path)
    assert main(argv) == 0
    pair = cog.read_bytes(), std.read_bytes()
    graph, calls = cog_module.cog_graph, []

    def cut_off_in_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return graph(*args, **kwargs)

    monkeypatch.setattr(cog_module, "cog_graph", cut_off_in_the_second)
    capsys.readouterr()
    assert main([*argv, "--tta", "d4", "--overwrite"]) == cli.EXIT_INTERRUPTED
    assert (cog.read_bytes(), std.read_bytes()) == pair
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tif", "d_std.tif", "o.zarr"]
    # its line said "the same command (without --overwrite) goes on": refused at d.tif
    assert capsys.readouterr().err.splitlines()[-1] == (
        "m3rcr decloud: interrupted; what was written is kept: the same command without "
        f"--overwrite goes on once the GeoTIFFs an earlier run left at {cog} (and its _std "
        "beside it) are removed (else it may refuse them); with --overwrite it starts over"
    )
    _fails_alone(capsys, [*argv, "--tta", "d4"], f"--cog {cog}: {cog} exists; pass --overwrite")
    cog.unlink()
    std.unlink()
    monkeypatch.setattr(store, "to_zarr", _never)  # as it says: the store is kept
    assert main([*argv, "--tta", "d4"]) == 0
    assert f"wrote {cog}\nwrote {std}\n" in capsys.readouterr().out


def test_a_rerun_keeps_the_cog_of_its_store_and_writes_the_missing_one(
    scene_store, tmp_path, capsys, monkeypatch
):
    """OUT_std.tif missing beside OUT.tif: the same command again keeps OUT.tif (written
    from the store with the same options, as it records) and writes OUT_std.tif, without
    running the network again or --overwrite. Before, it was refused at OUT.tif."""
    out, cog, std, argv = _second_cog_missing(scene_store, tmp_path)
    assert store.is_complete(out) and cog.exists() and not std.exists()
    capsys.readouterr()
    first, written_at = cog.read_bytes(), cog.stat().st_mtime_ns
    monkeypatch.setattr(store, "to_zarr", _never)
    assert main(argv) == 0
    assert (
        f"{out} is complete: its GeoTIFFs come from it\nkept {cog}: written from this "
        f"store already\nwrote {std}\n"
    ) in capsys.readouterr().out
    assert cog.read_bytes() == first and cog.stat().st_mtime_ns == written_at
    assert cog_validate(str(std), strict=True)[0]
    assert main(argv) == 0  # once more: both kept
    assert f"kept {cog}: written from this store already\nkept {std}: " in capsys.readouterr().out


def _opens_and_listings(monkeypatch, path: Path) -> Counter:
    """Counts, from now on, of the opens (``open_zarr``) and listings (its identity) of
    the store at ``path``."""
    from m3rcr_xr import identity

    counts: Counter = Counter()
    open_zarr, listing = store.open_zarr, identity._listing_identity

    def opened(where, *args, **kwargs):
        counts["opens"] += Path(where) == path
        return open_zarr(where, *args, **kwargs)

    def listed(target):
        counts["listings"] += Path(target.path) == path
        return listing(target)

    monkeypatch.setattr(store, "open_zarr", opened)
    monkeypatch.setattr(identity, "_listing_identity", listed)
    return counts


def test_a_rerun_opens_and_lists_its_store_once(scene_store, tmp_path, capsys, monkeypatch):
    """A rerun on the complete store opened it twice (to see which GeoTIFFs it keeps,
    then to write the others) and listed it once a GeoTIFF, kept or written, to identify
    the data; a run that writes the store and two GeoTIFFs listed it twice. Once now."""
    out, cog, std, argv = _second_cog_missing(scene_store, tmp_path)
    counts = _opens_and_listings(monkeypatch, out)
    assert main(argv) == 0
    assert f"kept {cog}: written from this store already\nwrote {std}\n" in capsys.readouterr().out
    assert counts == {"opens": 1, "listings": 1}
    counts.clear()
    assert main(argv) == 0  # both kept
    assert counts == {"opens": 1, "listings": 1}
    counts.clear()
    assert main([*argv, "--overwrite"]) == 0  # the store and both GeoTIFFs written
    assert counts == {"opens": 1, "listings": 1}


def test_a_rerun_keeps_only_a_cog_of_its_store_written_as_it_writes_it(
    scene_store, tmp_path, capsys, monkeypatch
):
    """A GeoTIFF of m3rcr_xr from another store or with other options, or a user's, at
    OUT.tif (or OUT_std.tif) is refused without --overwrite, as before, and kept."""
    out, cog, std, argv = _second_cog_missing(scene_store, tmp_path)
    capsys.readouterr()
    ours = cog.read_bytes()
    decloud = m3rcr_xr.open_zarr(out)["decloud"]
    others = [
        lambda: m3rcr_xr.to_cog(m3rcr_xr.open_zarr(scene_store)["cloudy"], cog),
        lambda: m3rcr_xr.to_cog(decloud, cog, blocksize=256),
        lambda: decloud.rio.to_raster(cog),  # a user's GeoTIFF of the same data
    ]
    for write in others:
        cog.unlink()
        write()
        before = cog.read_bytes()
        _fails_alone(capsys, argv, f"--cog {cog}: {cog} exists; pass --overwrite", std)
        assert cog.read_bytes() == before
    cog.write_bytes(ours)  # the one it wrote, under its name again
    std.write_bytes(b"not ours")
    _fails_alone(capsys, argv, f"{std}: exists; pass --overwrite")
    assert std.read_bytes() == b"not ours" and cog.read_bytes() == ours
    std.unlink()
    monkeypatch.setattr(store, "to_zarr", _never)
    assert main(argv) == 0
    assert f"kept {cog}: written from this store already\nwrote {std}\n" in capsys.readouterr().out


def test_a_complete_store_of_other_settings_is_refused_saying_how_to_write_its_cogs(
    scene_store, tmp_path, capsys
):
    out, cog = tmp_path / "o.zarr", tmp_path / "d.tif"
    argv = ["decloud", str(scene_store), str(out), *UNTRAINED_SMALL]
    assert main([*argv, "--tile", "32"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    call = f"m3rcr_xr.to_cog(m3rcr_xr.open_zarr('{out}')['decloud'], '{cog}')"
    _fails_alone(
        capsys,
        [*argv, "--tile", "16", "--cog", str(cog)],
        f"{out}: a complete store of other data exists (other inputs or settings than this "
        f"run's); pass --overwrite to replace it, or write the GeoTIFFs of the store as it "
        f"is: {call}",
        cog,
    )
    # with --uncertainty: the store holds no decloud_std, so no call of it is offered
    assert main([*argv, "--tile", "32", "--tta", "flips", "--uncertainty", "--cog", str(cog)]) == 2
    said = capsys.readouterr().err
    assert said.endswith(f"as it is: {call}\n") and "decloud_std" not in said
    _fails_alone(capsys, [*argv, "--tile", "16"], "a complete store exists; pass --overwrite", cog)
    assert snapshot(out) == before


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
    line = _one_error_line(capsys)
    assert f"m3rcr ingest: error: {dest}: {message}" in line and "overwrite=" not in line
    assert snapshot(dest) == before


def test_a_complete_store_names_the_flag(tmp_path, train_quartet, capsys):
    args = _ingest_args(train_quartet, tmp_path / "q.zarr")
    assert main(args) == 0
    capsys.readouterr()
    before = snapshot(tmp_path / "q.zarr")
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert line.endswith("a complete store exists; pass --overwrite to replace it")
    assert snapshot(tmp_path / "q.zarr") == before
    assert main([*args, "--overwrite"]) == 0


def test_ingest_over_an_unfinished_store_of_other_data(
    tmp_path, train_quartet, monkeypatch, capsys
):
    write_step = writing._write_step

    def disk_went_away(ds, where, dim, region, show=False):
        if region.start:  # after the first step is written and recorded
            raise OSError("disk went away")
        write_step(ds, where, dim, region, show)

    with monkeypatch.context() as patch, m3rcr_xr.set_options(scene_chunk=32):
        patch.setattr(writing, "_write_step", disk_went_away)
        with pytest.raises(OSError, match="disk went away"):
            m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((300, 300)), tmp_path / "q.zarr")
    before = snapshot(tmp_path / "q.zarr")
    assert main(_ingest_args(train_quartet, tmp_path / "q.zarr")) == 2
    line = _one_error_line(capsys)
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
    line = _one_error_line(capsys)
    assert message in line and "incomplete" not in line


@pytest.mark.parametrize(
    ("step", "code"), [("initialise", errno.EROFS), ("writing._write_step", errno.ENOSPC)]
)
def test_a_read_only_or_full_file_system_exits_2(
    tmp_path, train_quartet, monkeypatch, capsys, step, code
):
    def unwritable(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "q.zarr"))

    monkeypatch.setattr(f"m3rcr_xr.store.{step}", unwritable)
    assert main(_ingest_args(train_quartet, tmp_path / "q.zarr")) == 2
    assert f"q.zarr: writing the store failed: {os.strerror(code)}" in _one_error_line(capsys)


def test_your_own_area_from_stac_to_a_cog(tmp_path, capsys):
    """README, "Your own area": ingest STAC items, decloud, --cog; the COG is valid, names
    its bands, declares NaN nodata and has it exactly where the UDM2 says blackfill."""
    import rasterio

    from tests.test_stac import scene_files, write_catalog

    stac = tmp_path / "stac"
    stac.mkdir()
    files = scene_files(tmp_path)
    write_catalog(stac, files)
    ingest = ["ingest", str(stac / "planet" / "catalog.json"), str(tmp_path / "area.zarr")]
    layers = ["--sar", str(stac / "s1" / "catalog.json")]
    layers += ["--landcover", str(stac / "worldcover" / "catalog.json")]
    assert main(ingest + layers) == 0
    cog = tmp_path / "area-decloud.tif"
    decloud = ["decloud", str(tmp_path / "area.zarr"), str(tmp_path / "area-decloud.zarr")]
    assert main([*decloud, "--checkpoint", "dsen2_cr-demo", "--cog", str(cog)]) == 0
    assert cog_validate(str(cog), strict=True)[0]
    with rasterio.open(files["udm2"]) as udm2:
        blackfill = (udm2.read(8) & 1).astype(bool)
    with rasterio.open(cog) as f:
        assert np.isnan(f.nodata) and f.descriptions == ("blue", "green", "red", "nir")
        values = f.read()
    assert 0 < blackfill.sum() < blackfill.size
    np.testing.assert_array_equal(np.isnan(values), np.broadcast_to(blackfill, values.shape))
    assert f"wrote {cog}" in capsys.readouterr().out


# ------------------------------------------------------- ingest flags by source
@pytest.mark.parametrize(
    ("source", "flags", "needles"),
    [
        ("c.tif", ["--bbox", "0", "0", "1", "1"], ["--bbox 0.0 0.0 1.0 1.0: not with a cloudy"]),
        ("c.tif", ["--crs", "EPSG:4326"], ["--crs EPSG:4326: not with a cloudy GeoTIFF"]),
        ("c.tif", ["--root", "r"], ["--root r: not with a cloudy", "only with a file-list CSV"]),
        ("FOLDER", ["--cloudmask", "estimate"], ["--cloudmask estimate: not with a split"]),
        ("FOLDER", ["--sar", "/nonexistent.tif"], ["--sar /nonexistent.tif: not with a split"]),
        ("FOLDER", ["--udm2-classes", "a,b"], ["--udm2-classes a,b: not with a split folder"]),
        ("list.csv", ["--cloudfree", "f.tif"], ["--cloudfree f.tif: not with a file-list CSV"]),
        ("items.json", ["--align", "shape"], ["--align shape: not with STAC items", "GeoTIFF)"]),
        ("items.json", ["--cloudmask", "m.npy"], ["--cloudmask m.npy: not with STAC items"]),
        ("c.tif", ["--sar-unit", "dB"], ["--sar-unit dB: not with a cloudy", "only with STAC"]),
    ],
)
def test_ingest_refuses_a_flag_its_source_would_ignore(tmp_path, capsys, source, flags, needles):
    src = tmp_path if source == "FOLDER" else tmp_path / source  # refused before it is read
    dest = tmp_path / "never.zarr"
    assert main(["ingest", str(src), str(dest), *flags]) == 2
    _one_error_line(capsys, *needles)
    assert not dest.exists()


@pytest.fixture
def stac_json(tmp_path) -> dict[str, Path]:
    """The files of a STAC scene, and STAC JSON of its optical and SAR items."""
    from m3rcr_xr.testing import stac_item
    from tests.test_stac import scene_files

    files = scene_files(tmp_path)
    layers = {"planet": {"ortho_analytic_4b_sr": files["cloudy"]}, "s1": {"vv": files["vv"]}}
    for name, assets in layers.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(stac_item(name, assets).to_dict()))
    return files


@pytest.mark.parametrize(
    ("source", "flags", "needles"),
    [
        ("cloudy", ["--sar", "s1"], ["s1.json: sar is STAC JSON, not a raster; STAC items are"]),
        (
            "planet",
            ["--bbox", "735000", "4984700", "735288", "4985010"],
            ["--bbox 735000.0 4984700.0 735288.0 4985010.0: out of range: a bbox is in degrees"],
        ),
        (
            "planet",
            ["--bbox", "12", "44", "11", "45"],
            ["--bbox 12.0 44.0 11.0 45.0: west 12 > east 11 is a box across the antimeridian"],
        ),
        (
            "planet",
            ["--bbox", "0", "0", "0.1", "0.1"],
            ["--bbox 0.0 0.0 0.1 0.1: does not overlap the optical items (their extent in"],
        ),
    ],
    ids=["stac-json-for-a-geotiff", "bbox-in-metres", "bbox-east-to-west", "bbox-elsewhere"],
)
def test_ingest_names_the_argument_that_is_wrong(
    stac_json, tmp_path, capsys, source, flags, needles
):
    """These named the wrong cause: "sar has 0 band(s), expected 2" after a rasterio
    warning; "STAC item 'planet': does not overlap the scene's extent" for a bbox in
    metres or beside the items; and a bbox east to west was swapped silently."""
    dest = tmp_path / "never.zarr"
    flags = [str(stac_json[flag]) if flag in stac_json else flag for flag in flags]
    assert main(["ingest", str(stac_json[source]), str(dest), *flags]) == 2
    _one_error_line(capsys, *needles)
    assert not dest.exists()


def test_ingest_of_a_larger_search_with_a_bbox_leaves_the_items_outside_out(
    stac_json, tmp_path, capsys
):
    """`m3rcr ingest ITEMS.json --bbox` of a search over a larger area: the item outside
    the bbox is left out, named in the log (before: refused, "STAC item 'far': does not
    overlap bbox=...")."""
    import pystac

    from tests.test_stac import far_items

    planet = pystac.Item.from_file(str(stac_json["planet"]))
    far = far_items(tmp_path, stac_json)["optical"]
    pystac.ItemCollection([planet, far]).save_object(dest_href=str(tmp_path / "search.json"))
    dest, west, south, east, north = tmp_path / "area.zarr", *planet.bbox
    bbox = [str(v) for v in (west, south, east, north)]
    assert main(["-v", "ingest", str(tmp_path / "search.json"), str(dest), "--bbox", *bbox]) == 0
    err = capsys.readouterr().err
    assert "1 optical STAC item(s) left out, outside the scene's extent: 'far'" in err
    alone = stac_item("planet", {"ortho_analytic_4b_sr": stac_json["cloudy"]})
    expected = m3rcr_xr.open_stac([alone], bbox=planet.bbox, chunks=None)
    xr.testing.assert_equal(m3rcr_xr.open_zarr(dest).compute(), expected)


def test_ingest_of_stac_sar_in_db_with_sar_unit_db(stac_json, tmp_path, capsys):
    """`--sar-unit dB`: vv/vh assets in dB are read as they are; without it they are
    refused when read, the message naming `--sar-unit dB` (before: no such option)."""
    from tests.test_stac import db_assets

    (tmp_path / "s1_db.json").write_text(
        json.dumps(stac_item("s1", db_assets(tmp_path, stac_json)).to_dict())
    )
    args = ["ingest", str(stac_json["planet"]), "--sar", str(tmp_path / "s1_db.json")]
    assert main([*args, str(tmp_path / "power.zarr")]) == 2
    _one_error_line(capsys, "asset 'v", "not the linear power expected", "pass --sar-unit dB if")
    assert main([*args, str(tmp_path / "db.zarr"), "--sar-unit", "dB"]) == 0
    power = stac_item("s1", {"vv": stac_json["vv"], "vh": stac_json["vh"]})
    optical = stac_item("planet", {"ortho_analytic_4b_sr": stac_json["cloudy"]})
    expected = m3rcr_xr.open_stac([optical], sar_items=[power])["sar"].values
    sar = m3rcr_xr.open_zarr(tmp_path / "db.zarr")["sar"].values
    np.testing.assert_allclose(sar, expected, rtol=0, atol=1e-5)


def test_ingest_help_lists_the_options_of_each_source(capsys):
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "with STAC items: --sar, --landcover, --bbox, --crs, --sar-unit;" in out
    assert "with a cloudy GeoTIFF: --cloudfree, --sar, --landcover, --cloudmask, --udm2" in out


# ------------------------------------------------------------- errors, logging
def test_the_summary_names_every_command():
    parser = cli.build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert all(name in parser.description for name in commands.choices), parser.description
    assert "``" not in parser.description and parser.description.endswith("(demo).")


@pytest.fixture
def dangling(tmp_path) -> Path:
    """A symbolic link to a folder that does not exist."""
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere" / "dir")
    return link


@pytest.mark.parametrize(
    ("dest", "needles"),
    [
        ("dangling", ["dangling is a symbolic link to", "nowhere/dir, which does not exist"]),
        ("dangling/x.zarr", ["no store can be made there", "dangling is a symbolic link"]),
        ("a" * 300 + ".zarr", ["no store can be made there (File name too long)"]),
        ("foo://x.zarr", ["foo://x.zarr: cannot open this location (Protocol not known: foo)"]),
        ("m3rcrtest://x.zarr", ["cannot open this location (install no_such_module"]),
    ],
)
def test_a_destination_out_of_reach_is_one_line_before_any_work(
    tmp_path, dangling, capsys, monkeypatch, dest, needles
):
    from fsspec.registry import known_implementations

    monkeypatch.setitem(  # a protocol whose backend is not installed (gcsfs for gs://)
        known_implementations,
        "m3rcrtest",
        {"class": "no_such_module.FileSystem", "err": "install no_such_module"},
    )
    monkeypatch.chdir(tmp_path)
    # an empty folder: read after the destination is checked, it would fail otherwise
    (tmp_path / "split").mkdir()
    assert main(["ingest", "split", dest]) == 2
    _one_error_line(capsys, f"m3rcr ingest: error: {dest}", *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "split"]
    assert not (tmp_path / "nowhere").exists()  # nothing made where the link points


def test_evaluate_refuses_a_dangling_out_before_evaluating(tmp_path, capsys, monkeypatch):
    link = tmp_path / "t.csv"
    link.symlink_to(tmp_path / "nowhere" / "t.csv")
    monkeypatch.setattr("m3rcr_xr.metrics.evaluate", pytest.fail)  # no work at all
    assert main(["evaluate", str(tmp_path / "s.zarr"), "--out", str(link)]) == 2
    _one_error_line(capsys, f"--out {link}: {link} is a symbolic link to", "does not exist")
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_main_twice_logs_as_each_call_asks_and_leaves_logging_as_it_was(monkeypatch, capsys):
    import dask

    seen = []

    def logs(args):
        cli.log.info("info of the command")
        seen.append(dask.config.get("logging.distributed", None))
        return 0

    monkeypatch.setattr(cli.info, "_info", logs)
    logger, before = logging.getLogger("m3rcr_xr"), logging.getLogger("m3rcr_xr").level
    handlers, setting = list(logger.handlers), dask.config.get("logging.distributed", None)
    for verbose in (False, True, True, False):
        assert main(["-v", "info", "s.zarr"] if verbose else ["info", "s.zarr"]) == 0
        assert capsys.readouterr().err.count("INFO m3rcr_xr: info of the command") == verbose
        assert logger.handlers == handlers and logger.level == before
        assert dask.config.get("logging.distributed", None) == setting
    assert seen[0] == "warning" and seen[3] == "warning"


@pytest.mark.parametrize("cog", ["s3://bucket/", "/"])
def test_decloud_refuses_a_root_cog_folder_before_any_work(tmp_path, capsys, monkeypatch, cog):
    from m3rcr_xr import inference

    monkeypatch.setattr(inference, "decloud", lambda *a, **k: pytest.fail("decloud ran"))
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_collection(2, 32), tmp_path / "c.zarr")
    out = tmp_path / "out.zarr"
    argv = ["decloud", str(tmp_path / "c.zarr"), str(out), *UNTRAINED_SMALL, *UNCERTAINTY]
    assert main([*argv, "--cog", cog]) == 2
    _one_error_line(capsys, f"--cog {cog}: ", "no folder beside it", "give a folder inside")
    assert not out.exists()


def test_the_cli_package_is_reached_from_the_package_and_imported_without_running():
    """``help(m3rcr_xr.cli)`` after ``import m3rcr_xr`` (an AttributeError), and tools that
    import every module (pydoc, sphinx) ran the command line at ``cli.__main__``."""
    code = (
        "import importlib, m3rcr_xr; importlib.import_module('m3rcr_xr.cli.__main__'); "
        "print(m3rcr_xr.cli.main.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "m3rcr_xr.cli\n"), done.stderr
