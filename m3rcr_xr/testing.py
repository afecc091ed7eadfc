"""Helpers for testing code that uses m3rcr_xr (as ``xarray.testing``, ``xbatcher.testing``).

Our own test suite uses them too: a dask scheduler that counts (and can forbid)
computes, a small lazy scene, and small DSen2-CR checkpoints with seeded weights.

Examples
--------
>>> from m3rcr_xr.testing import raise_if_dask_computes, small_scene
>>> with raise_if_dask_computes():
...     scene = small_scene()
>>> scene.sizes["y"], scene.sizes["x"]
(300, 420)
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import xarray as xr

__all__ = [
    "TINY",
    "CountingScheduler",
    "classifier_checkpoint",
    "raise_if_dask_computes",
    "seeded_checkpoint",
    "serve_directory",
    "small_scene",
    "stac_item",
]

#: the smallest DSen2-CR worth running: for tests that only need a model to move data
TINY: Mapping[str, int] = {"n_resblocks": 1, "n_feats": 8}


class CountingScheduler:
    """A dask scheduler that counts computes, and raises past ``max_computes``.

    As xarray's test helper of the same name: ``total_computes`` says how many graphs
    were computed, which is how a test checks that work stays lazy or runs in one pass.
    """

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Mapping, keys: Any, **kwargs: Any) -> Any:
        import dask

        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"too many dask computations: {self.total_computes} > {self.max_computes}"
            )
        return dask.get(dsk, keys, **kwargs)


def raise_if_dask_computes(max_computes: int = 0) -> Any:
    """Context manager: raise if the block computes more than ``max_computes`` graphs."""
    import dask

    return dask.config.set(scheduler=CountingScheduler(max_computes))


def small_scene(seed: int = 3) -> xr.Dataset:
    """A lazy 300 x 420 synthetic scene in 128-pixel chunks: edges on no chunk boundary."""
    from .synthetic import synthetic_scene

    return synthetic_scene((300, 420), seed=seed, chunks=128)


def seeded_checkpoint(path: str | Path, **config: Any) -> Path:
    """Save a DSen2-CR of ``config`` with seeded random weights to ``path``; return it.

    The same ``config`` gives the same weights on every run, so that results compare.
    """
    import torch

    from . import models

    torch.manual_seed(0)
    path = Path(path)
    torch.save(models.build("dsen2_cr", **config).state_dict(), path)
    return path


def stac_item(item_id: str, assets: Mapping[str, str | Path], when: datetime | None = None) -> Any:
    """A STAC item for GeoTIFFs on one grid, with the ``proj`` extension filled from the
    first file's header (CRS, shape, transform) and its footprint in lon/lat.

    Examples
    --------
    >>> item = stac_item("p1", {"ortho_analytic_4b_sr": "cloudy.tif"})  # doctest: +SKIP
    >>> item.properties["proj:shape"]  # doctest: +SKIP
    [300, 300]
    """
    import pystac
    import rasterio
    from odc.geo.geobox import GeoBox
    from pystac.extensions.projection import ProjectionExtension

    with rasterio.open(next(iter(assets.values()))) as src:
        geobox = GeoBox(src.shape, src.transform, src.crs)
    footprint = geobox.extent.to_crs("EPSG:4326")
    item = pystac.Item(
        item_id,
        geometry=footprint.json,
        bbox=list(footprint.boundingbox),
        datetime=when or datetime(2020, 7, 1),
        properties={},
    )
    for name, path in assets.items():
        item.add_asset(name, pystac.Asset(str(path), media_type=pystac.MediaType.GEOTIFF))
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    projection.code = f"EPSG:{geobox.crs.epsg}" if geobox.crs is not None else None
    projection.shape = list(geobox.shape)
    projection.transform = list(geobox.transform)[:6]
    return item


@contextlib.contextmanager
def serve_directory(
    root: str | Path, query: str | None = None, *, refuse: int = 403, last_modified: bool = True
) -> Iterator[str]:
    """Serve the files under ``root`` over HTTP on loopback, with range requests (as
    GDAL's ``/vsicurl/`` needs); yields the base URL, ``http://127.0.0.1:PORT``.

    With ``query``, only requests whose query string is exactly ``query`` (as sent, not
    decoded) are answered, others refused with ``refuse``: 403, as S3 refuses a presigned
    URL whose signature does not match or has expired, or 401, as a server that wants
    credentials. Files are versioned by their ``Last-Modified`` header alone (no
    ``ETag``), and not at all without ``last_modified``: a server that tells nothing of a
    file's version.

    The server runs in a child process: GDAL holds the GIL while it reads, so a server
    thread in the reading process would never answer.

    Examples
    --------
    >>> with serve_directory(".") as url:  # doctest: +SKIP
    ...     m3rcr_xr.open_quartet(f"{url}/cloudy.tif")
    """
    server = Path(__file__).with_name("_range_server.py")  # run as a script: no package import
    child = subprocess.Popen(
        [
            sys.executable,
            str(server),
            str(root),
            *([f"--query={query}", f"--refuse={refuse}"] if query is not None else []),
            *([] if last_modified else ["--no-last-modified"]),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        child.terminate()
        child.wait()


def classifier_checkpoint(path: str | Path, seed: int = 2, **config: Any) -> Path:
    """Save a land-cover U-Net of ``config`` with seeded weights to ``path``; return it.

    An untrained network gives one class everywhere (reflectance varies little, the
    biases dominate); here the batch-norm statistics are drawn so that the small
    variations of reflectance are amplified, and a scene gets several classes: what a
    test of labels, confusion matrices and chunk independence needs.
    """
    import torch

    from . import models

    torch.manual_seed(seed)
    net = models.build("landcover_unet", **config)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                mean, var = module.running_mean, module.running_var
                if mean is None or var is None:
                    raise RuntimeError(f"{module}: tracks no running statistics")
                mean.normal_(0, 0.05)
                var.uniform_(0.001, 0.01)
    path = Path(path)
    torch.save(net.state_dict(), path)
    return path
