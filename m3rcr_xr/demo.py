"""The demo job: the whole pipeline on the embedded default data, no download.

Today: a synthetic scene written to Zarr, opened back and summarised, with a
quicklook picture. Decloud and metrics join it as they land.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from .store import open_zarr, to_zarr
from .summary import describe
from .synthetic import synthetic_scene

log = logging.getLogger(__name__)


def run_demo(out: Path, *, size: int = 2048, seed: int = 0) -> dict[str, Path]:
    """Run the demo into ``out``; return the paths it wrote.

    Examples
    --------
    >>> run_demo(Path("demo-output"), size=512)  # doctest: +SKIP
    """
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    scene_path = out / "scene.zarr"
    shutil.rmtree(scene_path, ignore_errors=True)
    to_zarr(synthetic_scene((size, size), seed=seed), scene_path)
    scene = open_zarr(scene_path)
    print(describe(scene, stats=True))
    from .plot import quicklook

    figure = quicklook(scene)
    quicklook_path = out / "quicklook.png"
    figure.savefig(quicklook_path, dpi=100, bbox_inches="tight")
    print(f"demo finished in {time.perf_counter() - start:.1f} s; outputs in {out}/")
    return {"scene": scene_path, "quicklook": quicklook_path}
