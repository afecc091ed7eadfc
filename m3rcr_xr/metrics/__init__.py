"""Cloud-removal metrics of the M3R-CR benchmark, per land-cover class, as one lazy reduction.

The published evaluation loops over patches and classes in Python. Here every metric of
every (stratum, land-cover class) cell comes from a handful of per-pixel quantities and
their grouped sums, computed in one pass over the data (one ``dask.compute``):

1. one task per chunk reads the chunk once and computes the per-pixel quantities (valid
   and nodata flags, sums over bands of the absolute and squared error and of the SSIM
   map, the spectral angle, non-finite flags) of every pixel that needs no other chunk,
   sums them per group label (11 WorldCover codes, land-cover nodata, unknown codes;
   times cloud / clear) with :func:`flox.groupby_reduce` (``expected_groups`` given),
   and hands on its 10-pixel edge strips;
2. small seam tasks do the pixels within 5 pixels of a border between chunks (the reach
   of the 11x11 SSIM window) from those strips, so every pixel is computed from the
   same neighbourhood as in one piece (zero padding only at the image edge) and no
   value depends on the chunking;
3. a tree sum of the small (quantity, patch, group) arrays; then strata and land-cover
   classes by adding groups, and PSNR, SSIM, SAM, MAE and RMSE from the sums.

Why flox runs inside the chunk task rather than on dask arrays: with the labels a dask
array flox refuses ``method="cohorts"``, ``"blockwise"`` gives per-block (wrong) totals
here, and ``"map-reduce"`` works but needs the per-pixel quantities as a dask array from
a halo exchange (``map_overlap``), whose chunks wait for their neighbours: about three
rows of chunks stay in memory, so memory grows with the scene's width. Measured on 2
cores, 1024-pixel chunks, peak memory above baseline: 1.3 GB at 8192 x 8192 and 3.4 GB
at 20000 x 20000 that way, 0.6-0.7 GB and 0.8 GB here; and it took 1.8 times as long at
20000 x 20000. See ``benchmarks/bench_metrics.py``.

Layout
------
One idea per module, each layer on the one below:

- :mod:`.kernels`: pure per-chunk NumPy kernels (the per-pixel quantities, group labels);
- :mod:`.dispatch`: the one place that tells NumPy from dask;
- :mod:`.engine`: the streamed chunk / seam / tree-sum engine on bare arrays;
- :mod:`.aggregations`: each metric declared once, as data (:class:`Aggregation`);
- :mod:`.cells`: group sums added into (stratum, land-cover class) cells;
- :mod:`.inputs`: input resolution and grid checks;
- :mod:`.sums`: the engine's sums as labelled DataArrays;
- :mod:`.core`: the thin xarray layer, :func:`evaluate` and :func:`evaluate_per_patch`;
- :mod:`.tables`: :func:`write_table`, :func:`write_tables`,
  :func:`check_table_replaceable`, :func:`semantic_table_path`,
  :func:`is_semantic_table`;
- :mod:`.semantic`: land-cover accuracy of a result through a classifier
  (:func:`evaluate_semantic`, :func:`semantic_metrics`), confusion counts per chunk;
- :mod:`.maps`: the public per-pixel API (:func:`ssim_map`, :func:`sam_map`,
  :func:`pixel_quantities`), a halo exchange that ``evaluate`` does not use.

Definitions (the reference ``Align-CR/metrics.py``; see ``../shared/reference/README.md``)
-----------------------------------------------------------------------------------
Images are normalised to [0, 1] (:func:`m3rcr_xr.normalize.normalize_optical`), in
float32 like the reference; sums are accumulated in float64. With ``n`` valid pixels and
``C`` bands in a cell:

- ``MSE = sum(err**2) / (n C)``, ``PSNR = 20 log10(1 / sqrt(MSE))`` (100 when MSE is 0,
  as in the reference), ``RMSE = sqrt(MSE)``, ``MAE = sum(|err|) / (n C)``;
- SSIM: per band, the reference's 11x11 Gaussian window (sigma 1.5, centred at 5.5 as
  the reference builds it), zero padding at the image edge, ``C1 = 0.01**2``,
  ``C2 = 0.03**2``; the mean of the map over the cell's pixels and the bands;
- SAM: per pixel, the angle in degrees between prediction and target band vectors,
  squared norms clipped below at float16 eps and the cosine to [-1, 1]; the mean over
  the cell's pixels.

Nodata
------
A pixel is excluded from every metric (and counted in ``n_nodata`` and the attribute
``n_nodata_pixels``) when any band of the target is 0, NaN or infinite, any band of
an integer-typed prediction is 0 (optical nodata), or every band of a float prediction
is NaN (decloud's nodata, where ``cloudy`` had none); the attribute
``n_pred_nodata_pixels`` counts the pixels where the prediction has no data. Excluded
pixels enter the SSIM windows of their neighbours as zeros, as the image edge does.
Elsewhere a float prediction may not be NaN or infinite where the target has data.

A valid pixel whose land cover is nodata (0) or not an ESA WorldCover code belongs to
class ``"all"`` only; it never vanishes uncounted: the attributes
``n_landcover_nodata_pixels`` and ``n_landcover_unknown_pixels`` count them, and
unknown codes give an :class:`~m3rcr_xr.exceptions.M3RCRWarning`.

Examples
--------
>>> import numpy as np, xarray as xr
>>> rng = np.random.default_rng(0)
>>> target = xr.DataArray(rng.integers(1, 5000, (4, 32, 32), dtype="uint16"),
...                       dims=("band", "y", "x"))
>>> result = evaluate(None, target.astype("float32") * 1.01, target, landcover=None,
...                   cloudmask=None, strata=("all",))
>>> float(result.SSIM.sel(stratum="all", landcover_class="all")) > 0.99
True
"""

from .aggregations import (
    AGGREGATIONS,
    METRICS,
    PSNR_IF_PERFECT,
    Aggregation,
    mean_over_patches,
    metrics_from_sums,
    psnr,
)
from .cells import ALL_CLASSES, STRATA, cell_sums
from .core import LANDCOVER_RULE, NODATA_RULE, PROTOCOLS, evaluate, evaluate_per_patch
from .engine import (
    DEFAULT_ENGINE,
    FRAME,
    MIN_CHUNK,
    chunk_pass,
    column_seam,
    row_seam,
    streamed_sums,
)
from .inputs import prepare_inputs
from .kernels import (
    GROUP_CODES,
    HALO,
    N_CODES,
    N_LABELS,
    NODATA_LABEL,
    QUANTITIES,
    SAM_EPS,
    SSIM_C1,
    SSIM_C2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    UNKNOWN_LABEL,
    gaussian_window,
)
from .maps import pixel_quantities, sam_map, ssim_map
from .semantic import (
    SEMANTIC_RULE,
    SOURCES,
    confusion_scores,
    evaluate_semantic,
    semantic_metrics,
)
from .sums import checked, group_labels, grouped_sums
from .tables import (
    SEMANTIC_SCORES,
    TABLE_SUFFIXES,
    check_table_replaceable,
    is_semantic_table,
    semantic_table_path,
    split_semantic,
    write_table,
    write_tables,
)

__all__ = [
    "AGGREGATIONS",
    "ALL_CLASSES",
    "DEFAULT_ENGINE",
    "FRAME",
    "GROUP_CODES",
    "HALO",
    "LANDCOVER_RULE",
    "METRICS",
    "MIN_CHUNK",
    "NODATA_LABEL",
    "NODATA_RULE",
    "N_CODES",
    "N_LABELS",
    "PROTOCOLS",
    "PSNR_IF_PERFECT",
    "QUANTITIES",
    "SAM_EPS",
    "SEMANTIC_RULE",
    "SEMANTIC_SCORES",
    "SOURCES",
    "SSIM_C1",
    "SSIM_C2",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "STRATA",
    "TABLE_SUFFIXES",
    "UNKNOWN_LABEL",
    "Aggregation",
    "cell_sums",
    "check_table_replaceable",
    "checked",
    "chunk_pass",
    "column_seam",
    "confusion_scores",
    "evaluate",
    "evaluate_per_patch",
    "evaluate_semantic",
    "gaussian_window",
    "group_labels",
    "grouped_sums",
    "is_semantic_table",
    "mean_over_patches",
    "metrics_from_sums",
    "pixel_quantities",
    "prepare_inputs",
    "psnr",
    "row_seam",
    "sam_map",
    "semantic_metrics",
    "semantic_table_path",
    "split_semantic",
    "ssim_map",
    "streamed_sums",
    "write_table",
    "write_tables",
]
