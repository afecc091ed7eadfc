"""m3rcr_xr: cloud removal for high-resolution satellite imagery at scale.

The M3R-CR benchmark (PlanetScope + Sentinel-1 + WorldCover + cloud masks) as xarray
objects on Dask and Zarr. Data flows one way: readers (:mod:`m3rcr_xr.io`), then
stores (:mod:`m3rcr_xr.store`), then inference or metrics. The data model is in
:mod:`m3rcr_xr.schema`.
"""

from __future__ import annotations

from . import accessor  # noqa: F401 - registers ds.m3rcr
from .cluster import local_cluster, pbs_cluster, slurm_cluster
from .cog import to_cog
from .exceptions import (
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
from .metrics import evaluate
from .options import get_options, set_options
from .schema import BANDS, POLARIZATIONS, is_collection, validate
from .store import is_complete, open_zarr, to_zarr
from .synthetic import synthetic_collection, synthetic_scene

__version__ = "0.1.0"

__all__ = [
    "BANDS",
    "POLARIZATIONS",
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
    "decloud",
    "evaluate",
    "get_options",
    "is_collection",
    "is_complete",
    "local_cluster",
    "open_m3rcr",
    "open_quartet",
    "open_zarr",
    "pbs_cluster",
    "set_options",
    "slurm_cluster",
    "synthetic_collection",
    "synthetic_scene",
    "to_cog",
    "to_zarr",
    "validate",
]
