"""The demo job: the whole pipeline on the embedded default data, no download.

A synthetic scene is written to Zarr, decloud-ed with the shipped demo weights on a
local Dask cluster under test-time augmentation (the 4 flips of each tile, averaged, with
their spread as the per-pixel uncertainty ``decloud_std``), evaluated by WorldCover class
and by the land cover it keeps (the shipped demo classifier classifies the target, the
result and the cloudy input, in the same pass), and drawn. Outputs in ``out``:
``scene.zarr``, ``decloud.zarr`` (``decloud`` and ``decloud_std``), ``quicklook.png``,
``metrics.csv``, ``metrics_by_class.png``, ``semantic.csv`` and ``semantic.png``
(confusion matrix of the result's classes and IoU per class).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import xarray as xr

from .exceptions import StoreError, UsageError, argument, check_integer
from .inference import decloud
from .locks import try_lock  # the OS lock of an open file: flock (Windows: a byte range)
from .metrics import check_table_replaceable, evaluate, split_semantic, write_table
from .store import (
    check_destination,
    folder_obstacle,
    is_complete,
    open_zarr,
    remove_store,
    store_state,
    to_zarr,
)
from .synthetic import SYNTHETIC_TITLE, synthetic_scene

log = logging.getLogger(__name__)
#: the demo scene's seed: the demo weights never saw it in training
DEMO_SEED = 2026
#: the registered weights the demo runs (small, trained on synthetic scenes only)
DEMO_WEIGHTS = "dsen2_cr-demo"
#: the demo's test-time augmentation: 4 passes a tile, and an uncertainty layer
DEMO_TTA = "flips"
#: the registered land-cover classifier of the semantic evaluation (synthetic data only)
DEMO_CLASSIFIER = "landcover_unet-demo"
#: the largest demo scene edge: 16384 px is already ~7 GB of scene and hours of CPU work;
#: real data goes through ``m3rcr ingest`` and ``m3rcr decloud``
MAX_SIZE = 16384


def _figures(scene: xr.Dataset, result: xr.Dataset, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    from .plot import metrics_by_class, quicklook, save_and_close

    # each figure is closed once written: a notebook that reruns the demo keeps none
    figures = {
        "quicklook": lambda: quicklook(scene),
        "metrics_by_class": lambda: metrics_by_class(result, ["PSNR", "SSIM", "SAM", "MAE"]),
        "semantic_figure": lambda: _semantic_figure(result),
    }
    return {
        key: save_and_close(
            draw(), out / OUTPUTS[key], dpi=100, bbox_inches="tight", metadata=FIGURE_STAMP
        )
        for key, draw in figures.items()
    }


def _semantic_figure(result: xr.Dataset):
    """The result's confusion matrix (its classes against WorldCover) beside the IoU of
    each class for the target, the result and the cloudy input."""
    import matplotlib.pyplot as plt

    from .plot import closed_on_error, confusion_matrix, iou_bars

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    with closed_on_error(figure):
        confusion_matrix(result, "pred", ax=left)
        iou_bars(result, ax=right)
    return figure


#: the file that marks a folder as the demo's: its outputs there are replaced by the next run
MARK = ".m3rcr-demo"
#: what the demo writes into its folder, by the keys of the paths it returns
OUTPUTS = {
    "scene": "scene.zarr",
    "decloud": "decloud.zarr",
    "metrics": "metrics.csv",
    "semantic": "semantic.csv",
    "quicklook": "quicklook.png",
    "metrics_by_class": "metrics_by_class.png",
    "semantic_figure": "semantic.png",
}
#: the outputs that are files: the tables and figures
FILES = ("metrics", "semantic", "quicklook", "metrics_by_class", "semantic_figure")
#: the PNG text the demo writes into its figures: only figures holding it are replaced
FIGURE_STAMP = {"Source": "m3rcr_xr demo"}
#: what the demo writes into its :data:`MARK`: its figures there carry the stamp (a mark
#: of an earlier version is empty, and its figures carry none)
MARK_TEXT = "m3rcr_xr demo: figures stamped\n"


#: the root attribute of the stores the demo writes: only those it replaces
STAMP = "m3rcr_demo"


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a folder of files the demo did not write.

    The demo replaces its outputs in its own folder (marked by :data:`MARK`; a folder of
    an earlier version holds the demo's outputs only). Its stores there are replaced only
    when the demo wrote them (:func:`_written_by_demo`): a store of the user's own named
    ``scene.zarr`` is refused, marked folder or not, and so are a table or a figure of
    the user's under a demo name (tables :func:`write_table` did not write, figures
    without :data:`FIGURE_STAMP`). A new or empty folder is taken.
    """
    flag = argument("out", str(out))
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag}: {out} is a file, not a folder")
    obstacle = folder_obstacle(out)
    if obstacle is not None:
        raise UsageError(f"{flag}: {obstacle}")
    mark = out / MARK
    if mark.is_symlink() or (mark.exists() and not mark.is_file()):  # a run writes it
        raise UsageError(f"{flag}: {mark} is not the demo's mark file; choose another folder")
    for key in ("scene", "decloud"):  # not inside a store, say, before a folder is made
        try:
            check_destination(out / OUTPUTS[key], overwrite=True)
        except StoreError as err:
            raise UsageError(f"{flag}: {err}") from err
    if not out.is_dir():
        return
    for key in ("scene", "decloud"):
        store = out / OUTPUTS[key]
        if store.exists() and not _written_by_demo(store, key):
            raise UsageError(
                f"{flag}: {store} is not a store the demo wrote; choose a new or empty folder"
            )
    names = {entry.name for entry in out.iterdir()}
    earlier = names <= set(OUTPUTS.values()) and is_complete(out / OUTPUTS["scene"])
    if names and not (earlier or (out / MARK).is_file()):
        raise UsageError(
            f"{flag}: {out} holds files the demo did not write; choose a new or empty folder"
        )
    _check_files(out, flag)


def _check_files(out: Path, flag: str) -> None:
    """Refuse a table or a figure in the demo's folder ``out`` that the demo did not
    write: they are removed before a run (:func:`_remove_earlier`). A folder of an
    earlier version (no :data:`MARK_TEXT` in its mark) holds figures without the stamp:
    any PNG there is taken for one, as that version did."""
    for key in ("metrics", "semantic"):
        try:
            check_table_replaceable(out / OUTPUTS[key])
        except StoreError as err:
            raise UsageError(f"{flag}: {err}") from err
    mark = out / MARK
    stamped = mark.is_file() and mark.read_text(errors="replace") == MARK_TEXT
    for key in ("quicklook", "metrics_by_class", "semantic_figure"):
        figure = out / OUTPUTS[key]
        if (figure.exists() or figure.is_symlink()) and not _is_demo_figure(figure, stamped):
            raise UsageError(
                f"{flag}: {figure} is not a figure the demo wrote; remove it yourself "
                "or choose a new or empty folder"
            )


def _written_by_demo(store: Path, key: str) -> bool:
    """Whether the demo wrote ``store`` (its output ``key``): this version stamps its
    stores (:data:`STAMP`); an earlier one's scene is the synthetic scene of
    :data:`DEMO_SEED`, its decloud that of :data:`DEMO_WEIGHTS`."""
    import zarr

    if store_state(store) == "empty":
        return True  # emptied by a run that replaced it, then was cut off
    try:
        group = zarr.open_group(str(store), mode="r")
        if group.attrs.get(STAMP):
            return True
        if key == "scene":
            attrs = group.attrs
            return attrs.get("title") == SYNTHETIC_TITLE and attrs.get("seed") == DEMO_SEED
        return group["decloud"].attrs.get("checkpoint") == DEMO_WEIGHTS
    except (OSError, KeyError, ValueError, TypeError, zarr.errors.BaseZarrError):
        return False  # no Zarr store, or not one of ours


def _is_demo_figure(path: Path, stamped: bool = True) -> bool:
    """Whether ``path`` is a PNG file (not a link) holding :data:`FIGURE_STAMP`; any PNG
    file where the figures are not ``stamped`` (a folder of an earlier version)."""
    from PIL import Image

    if path.is_symlink() or not path.is_file():
        return False
    try:
        with Image.open(path) as image:
            text = image.info  # the PNG's text chunks before its pixels
            if not stamped:
                return image.format == "PNG"
            return all(text.get(key) == value for key, value in FIGURE_STAMP.items())
    except (OSError, ValueError, SyntaxError):  # no image, or a broken one
        return False


def _remove_earlier(out: Path) -> None:
    """Remove an earlier run's decloud store and files (:data:`FILES`, by their exact
    names) from the demo's own folder ``out``, accepted by :func:`_check_out`, before a
    run writes its scene (which replaces the earlier one): a run cut off leaves no
    output of another run beside its own. The store goes as a replacement would remove
    it, its own arrays only."""
    remove_store(out / OUTPUTS["decloud"])
    for key in FILES:
        (out / OUTPUTS[key]).unlink(missing_ok=True)


@contextlib.contextmanager
def _this_runs_folder(out: Path) -> Iterator[None]:
    """Make ``out`` this run's folder until the block ends: checked (:func:`_check_out`),
    marked (:data:`MARK_TEXT`), the earlier run's outputs removed
    (:func:`_remove_earlier`), and its mark locked (:func:`_lock_mark`), so that a second
    demo in the folder is refused at its start instead of mixing its outputs with this
    run's. The OS drops the lock when the process ends, a kill included.

    A mark already there is locked before the folder is checked: a folder another demo
    is writing is refused as such, not for its unfinished outputs. A new mark is made
    only once the folder passed, as before.

    Raises
    ------
    UsageError
        ``out`` refused (:func:`_check_out`), held by another demo, or not writable.
    """
    held = _lock_earlier_mark(out)
    try:
        _check_out(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            if held is None:
                held = _lock_mark(out, os.open(out / MARK, _MARK_FLAGS | os.O_CREAT, 0o644))
            os.ftruncate(held, 0)
            os.write(held, MARK_TEXT.encode())
            _remove_earlier(out)
        except OSError as err:  # a folder that cannot be written: read-only, /proc...
            raise UsageError(
                f"{argument('out', str(out))}: cannot write there ({err.strerror})"
            ) from err
        yield
    finally:
        if held is not None:
            os.close(held)  # unlocks it


#: how the demo opens its mark: to write it, never through a link someone put there
_MARK_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0)


def _lock_earlier_mark(out: Path) -> int | None:
    """The :data:`MARK` already in ``out``, locked (:func:`_lock_mark`); None where no
    mark file can be opened (:func:`_check_out` judges what is there)."""
    try:
        fd = os.open(out / MARK, _MARK_FLAGS)
    except OSError:
        return None
    return _lock_mark(out, fd)


def _lock_mark(out: Path, fd: int) -> int:
    """Lock the mark of ``out`` open as ``fd``: ``fd``, whose closing unlocks it.

    Raises
    ------
    UsageError
        Another process (a demo) holds the lock; ``fd`` is closed.
    """
    if not try_lock(fd):
        os.close(fd)
        raise UsageError(
            f"{argument('out', str(out))}: another demo is writing this folder; wait for it "
            "to end or choose another folder"
        )
    return fd


def run_demo(
    out: str | Path, *, size: int = 2048, seed: int = DEMO_SEED, tta: str | None = DEMO_TTA
) -> dict[str, Path]:
    """Run the demo into ``out``; return the paths it wrote.

    ``tta`` (see :func:`m3rcr_xr.decloud`): with one, ``decloud.zarr`` holds
    ``decloud_std`` too and the quick-look shows it; None runs each tile once.

    The outputs of an earlier run in ``out`` are removed before any is written, so that
    a run cut off (Ctrl-C) leaves only its own: never its new scene beside the earlier
    tables and figures. A run holds the folder until it ends: a second demo there is
    refused meanwhile, never mixing its outputs with this run's.

    Raises
    ------
    UsageError
        Before any work: ``size`` not an integer from 1 to :data:`MAX_SIZE`, or ``out``
        an existing file, a folder of files the demo did not write, one another demo is
        writing, or a place where no folder can be made or written.

    Examples
    --------
    >>> run_demo(Path("demo-output"), size=512)  # doctest: +SKIP
    """
    from .cluster import local_cluster
    from .tta import check_tta

    check_integer("size", size, maximum=MAX_SIZE)
    tta = check_tta(tta)
    out = Path(out)
    start = time.perf_counter()
    with _this_runs_folder(out):
        paths = {key: out / OUTPUTS[key] for key in ("scene", "decloud", "metrics", "semantic")}
        with local_cluster() as cluster, cluster.get_client() as client:
            print(f"Dask dashboard: {client.dashboard_link}")
            scene = synthetic_scene((size, size), seed=seed).assign_attrs({STAMP: 1})
            to_zarr(scene, paths["scene"], overwrite=True)
            scene = open_zarr(paths["scene"])
            estimate = decloud(  # registered weights: model and config come with them
                scene, checkpoint=DEMO_WEIGHTS, tta=tta, uncertainty=bool(tta)
            )
            if isinstance(estimate, xr.DataArray):
                estimate = estimate.to_dataset()
            to_zarr(estimate.assign_attrs({STAMP: 1}), paths["decloud"], overwrite=True)
            scene = scene.assign(open_zarr(paths["decloud"]).data_vars)
            result = evaluate(
                scene, "decloud", "cloudfree", level=1, semantic=True, classifier=DEMO_CLASSIFIER
            )
            baseline = evaluate(scene, "cloudy", "cloudfree", level=1, strata=("all",))
        metrics, semantic = split_semantic(result)
        write_table(metrics, paths["metrics"])
        write_table(semantic, paths["semantic"])
        paths.update(_figures(scene, result, out))
        _print_summary(metrics, baseline)
        _print_semantic(semantic)
        print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs in {out}/")
    return paths


def _print_summary(result: xr.Dataset, baseline: xr.Dataset) -> None:
    table = result[["PSNR", "SSIM", "SAM", "MAE", "n_pixels"]].to_dataframe()
    print("\nmetrics of the demo weights by stratum and land-cover class (level 1):")
    print(table.round(4).to_string())
    before = baseline.sel(stratum="all", landcover_class="all")
    after = result.sel(stratum="all", landcover_class="all")
    print(
        f"\nwhole scene: PSNR {float(before.PSNR):.2f} dB (cloudy input) -> "
        f"{float(after.PSNR):.2f} dB (decloud); SAM {float(before.SAM):.2f} -> "
        f"{float(after.SAM):.2f} degrees"
    )


def _print_semantic(semantic: xr.Dataset) -> None:
    iou = semantic.IoU.sel(source=["target", "pred", "cloudy"], stratum="all")
    print("\nIoU of the demo classifier's land cover (level 1) by class, all pixels")
    print("(the target, the decloud result and the cloudy input, each classified):")
    print(iou.drop_sel(landcover_class="all").to_pandas().T.round(3).to_string())
    scores = semantic.sel(landcover_class="all")
    for stratum in ("all", "cloudy"):
        cells = ", ".join(
            f"{source} {float(scores.mIoU.sel(source=source, stratum=stratum)):.3f}"
            for source in ("target", "pred", "cloudy")
        )
        print(f"mIoU, {stratum} pixels: {cells}")
