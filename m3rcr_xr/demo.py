"""The demo job: the whole pipeline on the embedded default data, no download.

A synthetic scene is written to Zarr, decloud-ed with the shipped demo weights on a
local Dask cluster under test-time augmentation (the 4 flips of each tile, averaged, with
their spread as the per-pixel uncertainty ``decloud_std``), evaluated by WorldCover class,
and drawn. Outputs in ``out``: ``scene.zarr``, ``decloud.zarr`` (``decloud`` and
``decloud_std``), ``quicklook.png``, ``metrics.csv`` and ``metrics_by_class.png``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import xarray as xr

from .exceptions import UsageError, argument, check_integer
from .inference import decloud
from .metrics import evaluate, write_table
from .store import open_zarr, to_zarr
from .synthetic import synthetic_scene

log = logging.getLogger(__name__)
#: the demo scene's seed: the demo weights never saw it in training
DEMO_SEED = 2026
#: the registered weights the demo runs (small, trained on synthetic scenes only)
DEMO_WEIGHTS = "dsen2_cr-demo"
#: the demo's test-time augmentation: 4 passes a tile, and an uncertainty layer
DEMO_TTA = "flips"
#: the largest demo scene edge: 16384 px is already ~7 GB of scene and hours of CPU work;
#: real data goes through ``m3rcr ingest`` and ``m3rcr decloud``
MAX_SIZE = 16384


def _figures(scene: xr.Dataset, result: xr.Dataset, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    from .plot import metrics_by_class, quicklook

    paths = {"quicklook": out / "quicklook.png", "metrics_by_class": out / "metrics_by_class.png"}
    quicklook(scene).savefig(paths["quicklook"], dpi=100, bbox_inches="tight")
    metrics_by_class(result, ["PSNR", "SSIM", "SAM", "MAE"]).savefig(
        paths["metrics_by_class"], dpi=100, bbox_inches="tight"
    )
    return paths


def run_demo(
    out: str | Path, *, size: int = 2048, seed: int = DEMO_SEED, tta: str | None = DEMO_TTA
) -> dict[str, Path]:
    """Run the demo into ``out``; return the paths it wrote.

    ``tta`` (see :func:`m3rcr_xr.decloud`): with one, ``decloud.zarr`` holds
    ``decloud_std`` too and the quick-look shows it; None runs each tile once.

    Raises
    ------
    UsageError
        Before any work: ``size`` not an integer from 1 to :data:`MAX_SIZE`, or ``out``
        an existing file.

    Examples
    --------
    >>> run_demo(Path("demo-output"), size=512)  # doctest: +SKIP
    """
    from .cluster import local_cluster
    from .inference import check_tta

    check_integer("size", size, maximum=MAX_SIZE)
    check_tta(tta)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{argument('out', str(out))}: {out} is a file, not a folder")
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "scene": out / "scene.zarr",
        "decloud": out / "decloud.zarr",
        "metrics": out / "metrics.csv",
    }
    with local_cluster() as cluster, cluster.get_client() as client:
        print(f"Dask dashboard: {client.dashboard_link}")
        to_zarr(synthetic_scene((size, size), seed=seed), paths["scene"], overwrite=True)
        scene = open_zarr(paths["scene"])
        estimate = decloud(  # registered weights: model and config come with them
            scene, checkpoint=DEMO_WEIGHTS, tta=tta, uncertainty=bool(tta)
        )
        if isinstance(estimate, xr.DataArray):
            estimate = estimate.to_dataset()
        to_zarr(estimate, paths["decloud"], overwrite=True)
        scene = scene.merge(open_zarr(paths["decloud"]))
        result = evaluate(scene, "decloud", "cloudfree", level=1)
        baseline = evaluate(scene, "cloudy", "cloudfree", level=1, strata=("all",))
    write_table(result, paths["metrics"])
    paths.update(_figures(scene, result, out))
    _print_summary(result, baseline)
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
