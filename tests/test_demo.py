import contextlib
import errno
import os
import types

import pytest

import m3rcr_xr
from m3rcr_xr.cli import main
from m3rcr_xr.demo import MAX_SIZE, run_demo
from m3rcr_xr.exceptions import UsageError
from m3rcr_xr.store import folder_obstacle
from tests.conftest import snapshot


@pytest.mark.slow
def test_demo_writes_every_output(tmp_path, capsys, forked_workers):
    with forked_workers():
        assert main(["demo", "--out", str(tmp_path), "--size", "256"]) == 0
    for name in (
        "scene.zarr",
        "decloud.zarr",
        "quicklook.png",
        "metrics.csv",
        "metrics_by_class.png",
        "semantic.csv",
        "semantic.png",
    ):
        assert (tmp_path / name).exists(), name
    out = capsys.readouterr().out
    assert "Dask dashboard: http" in out
    assert "whole scene: PSNR" in out and (tmp_path / ".m3rcr-demo").is_file()
    assert "mIoU, cloudy pixels: target" in out
    result = m3rcr_xr.open_zarr(tmp_path / "decloud.zarr")
    decloud = result["decloud"]
    scene = m3rcr_xr.open_zarr(tmp_path / "scene.zarr")
    assert decloud.shape == scene.cloudy.shape and decloud.rio.crs == scene.rio.crs
    assert result.decloud_std.attrs["tta"] == "flips" and float(result.decloud_std.max()) > 0
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "PSNR" in header and "landcover_class" in header and "IoU" not in header
    header = (tmp_path / "semantic.csv").read_text().splitlines()[0]
    assert "source" in header and "mIoU" in header and "PSNR" not in header


@pytest.mark.parametrize(
    ("size", "match"),
    [
        (0, "size=0: must be an integer from 1 to 16384"),
        (-1, "size=-1"),
        (MAX_SIZE + 1, f"size={MAX_SIZE + 1}"),
        (512.0, "size=512.0: .* not float"),
        (True, "size=True"),
    ],
)
def test_sizes_the_demo_cannot_run_are_refused_before_any_work(tmp_path, size, match):
    out = tmp_path / "demo"
    with pytest.raises(UsageError, match=match):
        run_demo(out, size=size)
    assert not out.exists()


def test_an_unknown_tta_is_refused_before_any_work(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--tta", "spin"]) == 2
    assert "--tta spin: must be one of" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_the_demo_folder_cannot_be_a_file(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    with pytest.raises(UsageError, match="out='.*taken': .* is a file, not a folder"):
        run_demo(str(taken), size=16)
    assert taken.read_text() == "mine"


@pytest.mark.parametrize(
    ("place", "says"),
    [
        ("link", "is a symbolic link to"),
        ("under a file", "no folder can be made there"),
        ("unwritable", "cannot write there (Read-only file system)"),
    ],
)
def test_a_demo_folder_that_cannot_be_made_is_one_line(tmp_path, capsys, monkeypatch, place, says):
    (tmp_path / "mine.txt").write_text("mine")
    out = {
        "link": tmp_path / "dangling",
        "under a file": tmp_path / "mine.txt" / "demo",
        "unwritable": tmp_path / "demo",
    }[place]
    if place == "link":
        out.symlink_to(tmp_path / "nowhere")
    if place == "unwritable":

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(out))

        monkeypatch.setattr(m3rcr_xr.demo.Path, "mkdir", read_only)
    assert main(["demo", "--out", str(out), "--size", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {out}: " in err[0] and says in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["mine.txt", *(["dangling"] if place == "link" else [])]
    )
    assert (tmp_path / "mine.txt").read_text() == "mine"


@pytest.mark.timeout(10)
def test_a_bare_relative_out_is_checked_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert folder_obstacle("demo-output") is None  # the demo's default --out
    assert folder_obstacle(os.path.join("demo-output", "x")) is None
    (tmp_path / "mine.txt").write_text("mine")
    assert "no folder can be made there" in folder_obstacle(os.path.join("mine.txt", "x"))


def test_a_folder_of_the_users_files_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "metrics.csv").write_text("my,own\n")
    assert main(["demo", "--out", str(tmp_path), "--size", "16"]) == 2
    assert "holds files the demo did not write" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
    assert (tmp_path / "metrics.csv").read_text() == "my,own\n"


@pytest.mark.parametrize("made_by", ["this version", "an earlier version"])
def test_the_demos_own_folder_is_taken_again(tmp_path, made_by):
    from m3rcr_xr.demo import DEMO_SEED, MARK, STAMP, _check_out

    scene = m3rcr_xr.synthetic_scene((16, 16), seed=DEMO_SEED)
    if made_by == "this version":
        scene = m3rcr_xr.synthetic_scene((16, 16), seed=1).assign_attrs({STAMP: 1})
        (tmp_path / MARK).touch()
        (tmp_path / "notes.txt").write_text("added by hand")
    m3rcr_xr.to_zarr(scene, tmp_path / "scene.zarr")
    (tmp_path / "metrics.csv").write_text("stratum,landcover_class,PSNR\n")
    _check_out(tmp_path)  # no error


@pytest.mark.parametrize("left", [(), (".m3rcr-lock",), (".m3rcr-lock", ".m3rcr-store")])
def test_a_demo_store_emptied_by_a_cut_off_run_is_taken(tmp_path, left):
    """A run that removed its old scene.zarr and was killed before writing the new one
    leaves the folder empty, or holding only the store's own lock and identifier: the
    demo's still."""
    from m3rcr_xr.demo import MARK, _check_out

    (tmp_path / MARK).touch()
    (tmp_path / "scene.zarr").mkdir()
    for name in left:
        (tmp_path / "scene.zarr" / name).write_text("")
    _check_out(tmp_path)  # no error


@pytest.mark.parametrize("marked", [False, True])
@pytest.mark.parametrize("store", ["scene.zarr", "decloud.zarr"])
def test_a_store_of_the_users_own_under_a_demo_name_is_refused(tmp_path, capsys, marked, store):
    """A user's scene named scene.zarr is no demo output, even in the demo's folder."""
    from m3rcr_xr.demo import DEMO_SEED, MARK

    if marked:
        (tmp_path / MARK).touch()
    scene = m3rcr_xr.synthetic_scene((16, 16), seed=7)
    if store == "decloud.zarr":
        demo_scene = m3rcr_xr.synthetic_scene((16, 16), seed=DEMO_SEED)
        m3rcr_xr.to_zarr(demo_scene, tmp_path / "scene.zarr")  # an earlier demo's
        scene = scene[["cloudfree"]].rename(cloudfree="decloud").astype("float32")
    m3rcr_xr.to_zarr(scene, tmp_path / store)
    before = snapshot(tmp_path)
    assert main(["demo", "--out", str(tmp_path), "--size", "16"]) == 2
    assert f"{store} is not a store the demo wrote" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def _no_cluster():
    """In place of local_cluster: a client-less context (the demo computes on threads)."""
    client = contextlib.nullcontext(types.SimpleNamespace(dashboard_link="-"))
    return contextlib.nullcontext(types.SimpleNamespace(get_client=lambda: client))


def test_a_run_cut_off_leaves_nothing_of_the_earlier_run(tmp_path, monkeypatch):
    """Ctrl-C once the new scene is written: the earlier run's decloud store, tables and
    figures are gone (removed before it), not left beside the new scene; a file of the
    user's in the folder stays."""
    from m3rcr_xr import cluster, demo

    (tmp_path / demo.MARK).touch()
    earlier = m3rcr_xr.synthetic_scene((32, 32), seed=1).assign_attrs({demo.STAMP: 1})
    m3rcr_xr.to_zarr(earlier, tmp_path / "scene.zarr")
    estimate = earlier[["cloudfree"]].rename(cloudfree="decloud").astype("float32")
    m3rcr_xr.to_zarr(estimate, tmp_path / "decloud.zarr")
    for name in ("metrics.csv", "semantic.csv"):  # tables of an earlier run
        (tmp_path / name).write_text("stratum,landcover_class,PSNR\nall,all,30\n")
    for name in ("quicklook.png", "metrics_by_class.png", "semantic.png"):
        _png(tmp_path / name, demo.FIGURE_STAMP)  # figures of an earlier run
    (tmp_path / "notes.txt").write_text("mine")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster, "local_cluster", _no_cluster)
    monkeypatch.setattr(demo, "decloud", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path, size=16, tta=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [demo.MARK, "notes.txt", "scene.zarr"]
    assert m3rcr_xr.open_zarr(tmp_path / "scene.zarr").sizes["y"] == 16  # the new run's
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / demo.MARK).read_text() == demo.MARK_TEXT
    with _held(tmp_path / demo.MARK):  # the run's lock went with it
        pass


@contextlib.contextmanager
def _held(mark):
    """The lock a running demo holds on its mark, taken on another open file of it
    (which flock refuses to this process too); refused when another holds it."""
    import fcntl

    fd = os.open(mark, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


@pytest.mark.parametrize("first", ["running", "marking the folder as the second checks it"])
def test_a_second_demo_in_the_same_folder_is_refused_at_its_start(
    tmp_path, capsys, monkeypatch, first
):
    """Two demos in one folder both ran, each removing and writing outputs: a run killed
    left its scene beside the other's tables and figures. A demo holds its folder's mark
    locked now, and a second one there is refused at its start (exit 2, one line),
    whether the first marked the folder before it started or while it checked the
    folder; nothing of the first's is touched."""
    from m3rcr_xr import demo

    monkeypatch.setattr(demo, "synthetic_scene", lambda *a, **k: pytest.fail("it ran"))
    with contextlib.ExitStack() as running:
        if first == "running":
            (tmp_path / demo.MARK).write_text(demo.MARK_TEXT)
            (tmp_path / "metrics.csv").write_text("stratum,landcover_class,PSNR\nall,all,3\n")
            running.enter_context(_held(tmp_path / demo.MARK))
        else:
            check = demo._check_out

            def first_marks_meanwhile(out):
                check(out)
                running.enter_context(_held(out / demo.MARK))

            monkeypatch.setattr(demo, "_check_out", first_marks_meanwhile)
        before = snapshot(tmp_path)
        assert main(["demo", "--out", str(tmp_path), "--size", "16"]) == 2
        after = snapshot(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    said = f"m3rcr demo: error: --out {tmp_path}: another demo is writing this folder;"
    assert len(err) == 1 and err[0].startswith(said)
    assert after == (before if first == "running" else {demo.MARK: b""})  # the first's


@pytest.fixture(scope="module")
def tiny_result():
    from m3rcr_xr.demo import DEMO_CLASSIFIER

    scene = m3rcr_xr.synthetic_scene((32, 32), seed=3)
    scene = scene.assign(decloud=scene.cloudfree.astype("float32") * 1.01)
    result = m3rcr_xr.evaluate(
        scene, "decloud", "cloudfree", level=1, semantic=True, classifier=DEMO_CLASSIFIER
    )
    return scene, result


def test_the_demo_figures_are_closed_once_written(tmp_path, tiny_result):
    """Each figure holds tens of MiB: a notebook running the demo again keeps none."""
    import matplotlib.pyplot as plt

    from m3rcr_xr.demo import OUTPUTS, _figures

    before = plt.get_fignums()
    paths = _figures(*tiny_result, tmp_path)
    assert plt.get_fignums() == before
    assert sorted(p.name for p in paths.values()) == sorted(
        OUTPUTS[k] for k in ("quicklook", "metrics_by_class", "semantic_figure")
    )
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths.values())


def test_a_figure_that_fails_to_draw_is_closed(tmp_path, tiny_result):
    import matplotlib.pyplot as plt

    from m3rcr_xr.demo import _figures

    scene, result = tiny_result
    before = plt.get_fignums()
    with pytest.raises(m3rcr_xr.SchemaError, match="no 'confusion' variable"):
        _figures(scene, result.drop_vars("confusion"), tmp_path)
    assert plt.get_fignums() == before


class _Killed(BaseException):
    """A kill, as far as the files on disk can tell: nothing after it is written."""


def test_a_run_killed_while_it_writes_a_figure_leaves_none_the_rerun_refuses(
    tmp_path, tiny_result, monkeypatch
):
    """Killed as it wrote quicklook.png, the demo left a truncated PNG there, which the
    rerun refused as no figure of its own. A figure is written whole or not at all."""
    from matplotlib.figure import Figure

    from m3rcr_xr import demo

    (tmp_path / demo.MARK).write_text(demo.MARK_TEXT)

    def killed(figure, fname, **kwargs):
        with open(fname, "wb") as half:
            half.write(b"\x89PNG\r\n\x1a\n")  # its first bytes only
        raise _Killed

    monkeypatch.setattr(Figure, "savefig", killed)
    with pytest.raises(_Killed):
        demo._figures(*tiny_result, tmp_path)
    monkeypatch.undo()
    assert not (tmp_path / "quicklook.png").exists()
    demo._check_out(tmp_path)  # the rerun takes the folder


@pytest.mark.parametrize("table", ["metrics.csv", "semantic.csv"])
def test_a_table_of_the_users_own_under_a_demo_name_is_refused(tmp_path, capsys, table):
    """A run removes the earlier run's tables before it writes: a file of the user's of
    that name, in the demo's own folder, is refused first and kept."""
    from m3rcr_xr.demo import MARK

    (tmp_path / MARK).touch()
    (tmp_path / table).write_text("my own numbers")
    before = snapshot(tmp_path)
    assert main(["demo", "--out", str(tmp_path), "--size", "16"]) == 2
    assert f"{table}: is not a table m3rcr_xr wrote" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def _png(path, metadata=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(1, 1))
    figure.savefig(path, metadata=metadata)
    plt.close(figure)


@pytest.mark.parametrize("figure", ["quicklook.png", "metrics_by_class.png", "semantic.png"])
@pytest.mark.parametrize("kind", ["own figure", "link", "text"])
def test_a_figure_of_the_users_own_under_a_demo_name_is_refused(tmp_path, capsys, figure, kind):
    """A run removes the earlier run's figures before it writes: the user's own PNG of
    that name (or a link, or another file), in the demo's own folder, is refused first
    and kept."""
    from m3rcr_xr.demo import MARK, MARK_TEXT

    (tmp_path / MARK).write_text(MARK_TEXT)  # a folder of this version: figures stamped
    if kind == "own figure":
        _png(tmp_path / figure)  # drawn by matplotlib, not by the demo
    elif kind == "link":
        _png(tmp_path / "mine.png")
        (tmp_path / figure).symlink_to(tmp_path / "mine.png")
    else:
        (tmp_path / figure).write_text("my notes")
    before = snapshot(tmp_path)
    assert main(["demo", "--out", str(tmp_path), "--size", "16"]) == 2
    assert f"{tmp_path / figure} is not a figure the demo wrote" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    assert (tmp_path / figure).exists()


def test_the_demo_figures_carry_its_stamp(tmp_path, tiny_result):
    from m3rcr_xr.demo import _figures, _is_demo_figure

    paths = _figures(*tiny_result, tmp_path)
    assert all(_is_demo_figure(path) for path in paths.values())


def test_a_demo_folder_inside_a_store_is_refused_before_any_work(tmp_path, capsys):
    """``--out mine.zarr/demo``: refused before the cluster starts, and nothing (no
    marker file) is written into the user's store."""
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((16, 16)), tmp_path / "mine.zarr")
    before = snapshot(tmp_path)
    assert main(["demo", "--out", str(tmp_path / "mine.zarr" / "demo"), "--size", "16"]) == 2
    out, err = capsys.readouterr()
    assert "lies inside" in err and "mine.zarr" in err and "dashboard" not in out
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("mark", [None, ""])
def test_a_folder_of_an_earlier_demo_takes_its_unstamped_figures(tmp_path, mark):
    """The figures of an earlier version carry no stamp: in its folder (an empty mark, or
    no mark and the demo's outputs alone) any PNG under a figure's name is taken for
    one, as that version did, and a run marks the folder so that the next takes only
    stamped figures. Another file under a figure's name is still refused."""
    from m3rcr_xr import demo

    m3rcr_xr.to_zarr(
        m3rcr_xr.synthetic_scene((16, 16), seed=demo.DEMO_SEED), tmp_path / "scene.zarr"
    )
    if mark is not None:
        (tmp_path / demo.MARK).write_text(mark)
    for name in ("quicklook.png", "metrics_by_class.png"):
        _png(tmp_path / name)  # an earlier version's: no stamp
    demo._check_out(tmp_path)  # taken
    (tmp_path / "semantic.png").write_text("not a figure")
    with pytest.raises(UsageError, match="semantic.png is not a figure the demo wrote"):
        demo._check_out(tmp_path)
    (tmp_path / "semantic.png").unlink()
    (tmp_path / demo.MARK).write_text(demo.MARK_TEXT)  # what a run of this version writes
    with pytest.raises(UsageError, match="quicklook.png is not a figure the demo wrote"):
        demo._check_out(tmp_path)


def test_a_mark_that_is_a_link_is_refused_and_what_it_points_to_kept(tmp_path, capsys):
    """A run writes its mark file: through a link it would write into the user's file."""
    from m3rcr_xr.demo import MARK

    (tmp_path / "mine.txt").write_text("my notes")
    (tmp_path / MARK).symlink_to(tmp_path / "mine.txt")
    assert main(["demo", "--out", str(tmp_path), "--size", "16"]) == 2
    assert "is not the demo's mark file" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "my notes"
