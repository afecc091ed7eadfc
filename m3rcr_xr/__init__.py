"""m3rcr_xr: cloud removal for high-resolution satellite imagery at scale.

The M3R-CR benchmark (PlanetScope + Sentinel-1 + WorldCover + cloud masks) as xarray
objects on Dask and Zarr. Data flows one way: readers (:mod:`m3rcr_xr.io`), then
stores (:mod:`m3rcr_xr.store`), then inference (:mod:`m3rcr_xr.inference`, on the tiling
engine of :mod:`m3rcr_xr.engine`: the tile grid of :mod:`m3rcr_xr.tiling`, run by
:mod:`m3rcr_xr.runner`) or metrics. The data model is in :mod:`m3rcr_xr.schema`.
"""

from __future__ import annotations

from . import accessor  # noqa: F401 - registers ds.m3rcr
from .classify import classify
from .cloudmask import estimate_cloudmask, open_udm2, udm2_cloudmask, udm2_nodata
from .cluster import local_cluster, pbs_cluster, slurm_cluster
from .cog import to_cog
from .exceptions import (
    AccessDeniedError,
    AlignmentError,
    CheckpointError,
    InputFileError,
    M3RCRError,
    M3RCRWarning,
    MissingFileError,
    ModelConfigError,
    OptionError,
    SchemaError,
    StoreError,
    UnknownModelError,
    UnsafePathError,
    UsageError,
)
from .inference import decloud
from .io import open_m3rcr, open_quartet
from .metrics import evaluate, evaluate_semantic
from .options import get_options, set_options
from .schema import BANDS, POLARIZATIONS, is_collection, validate
from .stac import open_stac
from .store import is_complete, open_zarr, to_zarr
from .synthetic import synthetic_collection, synthetic_scene

__version__ = "0.1.0"

__all__ = [
    "BANDS",
    "POLARIZATIONS",
    "AccessDeniedError",
    "AlignmentError",
    "CheckpointError",
    "InputFileError",
    "M3RCRError",
    "M3RCRWarning",
    "MissingFileError",
    "ModelConfigError",
    "OptionError",
    "SchemaError",
    "StoreError",
    "UnknownModelError",
    "UnsafePathError",
    "UsageError",
    "__version__",
    "classify",
    "decloud",
    "estimate_cloudmask",
    "evaluate",
    "evaluate_semantic",
    "get_options",
    "is_collection",
    "is_complete",
    "local_cluster",
    "open_m3rcr",
    "open_quartet",
    "open_stac",
    "open_udm2",
    "open_zarr",
    "pbs_cluster",
    "set_options",
    "slurm_cluster",
    "synthetic_collection",
    "synthetic_scene",
    "to_cog",
    "to_zarr",
    "udm2_cloudmask",
    "udm2_nodata",
    "validate",
]


def __getattr__(name: str):
    """``m3rcr_xr.plot`` and ``m3rcr_xr.cli`` on first use: matplotlib is imported only
    by those who draw, argparse's command line by those who ask for it."""
    if name in ("plot", "cli"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
