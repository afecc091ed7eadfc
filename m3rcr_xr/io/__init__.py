"""Readers: M3R-CR quartets (and whole scenes) from GeoTIFF and ``.npy`` into xarray.

:func:`open_quartet` returns a *scene* and :func:`open_m3rcr` a *collection* (see
:mod:`m3rcr_xr.schema`). Everything stays lazy (Dask-backed): a scene tens of thousands
of pixels a side is never read whole; only headers are read at open time, plus one
block of each raster to catch truncated files early.

Each GeoTIFF is opened by :func:`m3rcr_xr.rasters.open_raster`, which bounds what an
open reads and takes bands by name where the file's band descriptions name them (see
:mod:`m3rcr_xr.rasters`). Values are checked as they are read (lazily, chunk by chunk),
never wrapped around:

- optical layers become uint16 exactly (NaN and the declared nodata become 0), or
  raise :class:`~m3rcr_xr.exceptions.InputFileError` naming the file and the values found
  (:func:`m3rcr_xr.rasters.as_uint16`);
- SAR: NaN, +-inf and the declared nodata are holes, filled as the published loader
  fills NaN (:func:`m3rcr_xr.align.fill_nan_with_mean`; with ``align="shape"`` after
  resampling, as that loader); a chunk that plainly holds linear power, not dB, raises
  :class:`~m3rcr_xr.exceptions.InputFileError` (:func:`~m3rcr_xr.io.layers.check_sar_unit`);
- a scale/offset in a file's header (value = raw x scale + offset) is applied to SAR;
  optical files may declare only reflectance x10000 as stored (scale 1 or 0.0001,
  offset 0), the other layers none: anything else is refused naming the file;
- land cover: codes outside ESA WorldCover become nodata 0, with an
  :class:`~m3rcr_xr.exceptions.M3RCRWarning` (:func:`m3rcr_xr.landcover.to_worldcover`).

Its modules: :mod:`~m3rcr_xr.io.layers` reads the optical, SAR and land-cover layers,
:mod:`~m3rcr_xr.io.cloudmasks` the cloud mask, :mod:`~m3rcr_xr.io.grids` checks them
against the optical grid, :mod:`~m3rcr_xr.io.scenes` opens a quartet as a scene
(:func:`open_quartet`); :mod:`~m3rcr_xr.io.quartets` finds a split's quartets (a file
list, :func:`read_filelist`, or the layout, :func:`discover`) and
:mod:`~m3rcr_xr.io.datasets` opens them as a collection (:func:`open_m3rcr`).
"""

from __future__ import annotations

from ..href import PathType
from .cloudmasks import ESTIMATE, read_cloudmask
from .datasets import open_m3rcr, stack_scenes
from .grids import check_same_grid, rechunk_like
from .layers import (
    LINEAR_POWER_MAX,
    SAR_UNIT_MIN_VALUES,
    check_sar_unit,
    describe_optical,
    landcover_attrs,
    sar_attrs,
)
from .quartets import FILELIST_COLUMNS, LAYOUT_PREFIX, Quartet, discover, read_filelist
from .scenes import assemble_layers, open_quartet

__all__ = [
    "ESTIMATE",
    "FILELIST_COLUMNS",
    "LAYOUT_PREFIX",
    "LINEAR_POWER_MAX",
    "SAR_UNIT_MIN_VALUES",
    "PathType",
    "Quartet",
    "assemble_layers",
    "check_same_grid",
    "check_sar_unit",
    "describe_optical",
    "discover",
    "landcover_attrs",
    "open_m3rcr",
    "open_quartet",
    "read_cloudmask",
    "read_filelist",
    "rechunk_like",
    "sar_attrs",
    "stack_scenes",
]
