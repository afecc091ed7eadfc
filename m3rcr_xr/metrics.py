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
``n_nodata_pixels``) when any band of the target is 0, NaN or infinite, or any band of
an integer-typed prediction is 0 (optical nodata). Excluded pixels enter the SSIM
windows of their neighbours as zeros, as the image edge does. A float prediction may be
NaN or infinite (the two alike) only where the target has no data.

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

from __future__ import annotations

import warnings
from collections.abc import Sequence
from math import exp
from typing import Any

import dask.array as da
import flox
import numpy as np
import xarray as xr
from dask import delayed
from scipy import ndimage

from .exceptions import M3RCRWarning, SchemaError
from .landcover import NODATA_CODE, WORLDCOVER_CODES, class_codes, class_names, code_to_index
from .normalize import normalize_optical
from .options import get_options

STRATA: tuple[str, ...] = ("all", "cloudy", "clear")
PROTOCOLS: tuple[str, ...] = ("pooled", "per_patch")
#: file suffixes :func:`write_table` writes
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".json")
METRICS: tuple[str, ...] = ("PSNR", "SSIM", "SAM", "MAE", "RMSE")
ALL_CLASSES = "all"

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: halo of a chunk for the SSIM windows: half the window
HALO = SSIM_WINDOW // 2
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
#: squared norms are clipped below at this value in SAM (the reference's choice)
SAM_EPS = float(np.finfo(np.float16).eps)
#: PSNR reported when the MSE is exactly 0 (the reference's convention)
PSNR_IF_PERFECT = 100.0

#: per-pixel quantities that are summed per group, in this order; ``nan_pred`` flags a
#: prediction that is NaN or infinite in any band, ``nan_in_valid`` those of valid pixels
QUANTITIES: tuple[str, ...] = (
    "n_valid",
    "n_nodata",
    "abs_error",
    "sq_error",
    "sam",
    "ssim",
    "nan_in_valid",
    "nan_pred",
)
_Q = {name: i for i, name in enumerate(QUANTITIES)}
#: land-cover code of each group: the WorldCover codes, nodata (0), then -1 for codes
#: that are not WorldCover's; a pixel's group label is the position of its code here,
#: plus ``len(GROUP_CODES)`` under the cloud mask
GROUP_CODES: tuple[int, ...] = (*WORLDCOVER_CODES, NODATA_CODE, -1)
N_CODES = len(WORLDCOVER_CODES)
NODATA_LABEL = N_CODES
UNKNOWN_LABEL = N_CODES + 1
N_LABELS = 2 * len(GROUP_CODES)
#: flox's per-chunk algorithm; "numpy" (numpy_groupies' bincount) measured faster than
#: "flox" (sort + reduceat) in benchmarks/bench_metrics.py
DEFAULT_ENGINE = "numpy"

_PIXEL_DIMS = ("y", "x")


# --------------------------------------------------------------------------- building blocks
def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The reference's 1-D SSIM window: float32, centred at ``size / 2``, normalised.

    The reference evaluates ``exp(-(i - size/2)**2 / (2 sigma**2))`` for ``i = 0..size-1``,
    so for size 11 the centre is 5.5, not 5 (taps 5 and 6 are equal); the 2-D window is
    the outer product of this vector with itself.
    """
    taps = np.array(
        [exp(-((i - size / 2) ** 2) / (2 * sigma**2)) for i in range(size)], dtype=np.float32
    )
    return taps / taps.sum()


_WINDOW = gaussian_window().astype(np.float64)


def _blur(image: np.ndarray) -> np.ndarray:
    """Correlate the last two axes with the SSIM window, zero padding at the edge."""
    rows = ndimage.correlate1d(image, _WINDOW, axis=-2, mode="constant", output=np.float32)
    return ndimage.correlate1d(rows, _WINDOW, axis=-1, mode="constant", output=np.float32)


def _ssim_same(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """SSIM map of normalised float32 images (..., y, x), same shape, zero padded."""
    mu1, mu2 = _blur(pred), _blur(target)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    var1 = _blur(pred * pred) - mu1_sq
    var2 = _blur(target * target) - mu2_sq
    cov = _blur(pred * target) - mu12
    c1, c2 = np.float32(SSIM_C1), np.float32(SSIM_C2)
    return ((2 * mu12 + c1) * (2 * cov + c2)) / ((mu1_sq + mu2_sq + c1) * (var1 + var2 + c2))


def _spectral_angle(dot: np.ndarray, norm1: np.ndarray, norm2: np.ndarray) -> np.ndarray:
    """Angle in degrees from a dot product and squared norms (float32, clipped)."""
    eps = np.float32(SAM_EPS)
    cosine = dot / np.sqrt(np.maximum(norm1, eps) * np.maximum(norm2, eps))
    return np.arccos(np.clip(cosine, -1, 1)) / np.float32(np.pi) * np.float32(180)


def _map_yx(func: Any, pred: xr.DataArray, target: xr.DataArray, halo: int) -> xr.DataArray:
    """Apply a (..., y, x) -> same-shape numpy function, with a halo under dask."""
    target = target.transpose(*pred.dims)
    if not isinstance(pred.data, da.Array) and not isinstance(target.data, da.Array):
        return pred.copy(data=func(np.asarray(pred.data), np.asarray(target.data)))
    p = da.asarray(pred.data)
    t = da.asarray(target.data).rechunk(p.chunks)
    depth = {i: (halo if d in _PIXEL_DIMS else 0) for i, d in enumerate(pred.dims)}
    boundary = {i: (0 if d in _PIXEL_DIMS else "none") for i, d in enumerate(pred.dims)}
    out = da.map_overlap(func, p, t, depth=depth, boundary=boundary, dtype=np.float32)
    return pred.copy(data=out)


def ssim_map(pred: xr.DataArray, target: xr.DataArray) -> xr.DataArray:
    """Per-band SSIM map of two images normalised to [0, 1].

    Zero padding at the image edge; under dask each chunk gets a 5-pixel halo from its
    neighbours (:func:`dask.array.map_overlap`), so no value depends on the chunking.

    Parameters
    ----------
    pred, target
        Normalised images with dims ``y`` and ``x`` (and any others, e.g. ``band``).

    Returns
    -------
    xarray.DataArray
        float32 SSIM per pixel and band, dims of ``pred``.
    """
    _require_dims(pred, _PIXEL_DIMS, "pred")
    p = pred.astype(np.float32).transpose(..., *_PIXEL_DIMS)
    t = target.astype(np.float32)
    return _map_yx(_ssim_same, p, t, HALO).transpose(*pred.dims).rename("SSIM")


def sam_map(pred: xr.DataArray, target: xr.DataArray, dim: str = "band") -> xr.DataArray:
    """Spectral angle in degrees per pixel between ``pred`` and ``target`` along ``dim``.

    Computed in float32 as the reference does (squared norms clipped below at float16
    eps, cosine clipped to [-1, 1]).
    """
    _require_dims(pred, (dim,), "pred")
    p, t = pred.astype(np.float32), target.astype(np.float32)
    angle = _spectral_angle((p * t).sum(dim), (p * p).sum(dim), (t * t).sum(dim))
    return angle.rename("SAM").assign_attrs(units="degree")


def psnr(mse: Any) -> Any:
    """PSNR in dB of images in [0, 1] from their MSE: ``20 log10(1 / sqrt(MSE))``.

    An MSE of exactly 0 gives 100 (the reference's convention), a NaN MSE gives NaN.
    """
    mse = xr.DataArray(mse) if not isinstance(mse, xr.DataArray) else mse
    positive = mse.where(mse > 0)
    value = 20 * np.log10(1 / np.sqrt(positive))
    return xr.where(mse == 0, PSNR_IF_PERFECT, value)


# ------------------------------------------------------------------- per-pixel quantities
def _excluded(pred_raw: np.ndarray, target_raw: np.ndarray) -> np.ndarray:
    """Pixels excluded as nodata: target 0 / NaN / +-inf in any band, integer prediction 0.

    Tested on the raw values: the normalisation clips +-inf to 0 and 1.
    """
    excluded = ((target_raw == 0) | ~np.isfinite(target_raw)).any(axis=-3)
    if np.issubdtype(pred_raw.dtype, np.integer):
        excluded |= (pred_raw == 0).any(axis=-3)
    return excluded


def _band_sum(values: np.ndarray) -> np.ndarray:
    return values.sum(axis=-3, dtype=np.float64)


def _quantities_block(pred_raw: np.ndarray, target_raw: np.ndarray, halo: int) -> np.ndarray:
    """Per-pixel quantities of one block (..., band, y, x) that carries a ``halo``.

    Returns float64 (..., quantity, y - 2 halo, x - 2 halo), quantities as in
    :data:`QUANTITIES`; the sums are zero on excluded pixels.
    """
    p = normalize_optical(pred_raw.astype(np.float32, copy=False))
    t = normalize_optical(target_raw.astype(np.float32, copy=False))
    excluded = _excluded(pred_raw, target_raw)
    nan_pred = ~np.isfinite(pred_raw).any(axis=-3)
    keep = ~excluded[..., None, :, :]
    p, t = np.where(keep, p, np.float32(0)), np.where(keep, t, np.float32(0))
    ssim = np.stack(
        [_ssim_same(p[..., b, :, :], t[..., b, :, :]) for b in range(p.shape[-3])], axis=-3
    )
    rows, cols = slice(halo, p.shape[-2] - halo), slice(halo, p.shape[-1] - halo)
    p, t, ssim = p[..., rows, cols], t[..., rows, cols], ssim[..., rows, cols]
    valid, nan_pred = ~excluded[..., rows, cols], nan_pred[..., rows, cols]
    error = p - t
    angle = _spectral_angle((p * t).sum(axis=-3), (p * p).sum(axis=-3), (t * t).sum(axis=-3))
    sums = np.stack(
        [
            _band_sum(np.abs(error)),
            _band_sum(error * error),
            angle.astype(np.float64),
            _band_sum(ssim),
        ],
        axis=-3,
    )
    sums = np.where(valid[..., None, :, :], sums, 0.0)
    flags = [valid, ~valid, nan_pred & valid, nan_pred]
    flags = [f.astype(np.float64)[..., None, :, :] for f in flags]
    return np.concatenate([flags[0], flags[1], sums, flags[2], flags[3]], axis=-3)


def _quantities_numpy(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    pad = [(0, 0)] * (pred.ndim - 2) + [(HALO, HALO), (HALO, HALO)]
    return _quantities_block(np.pad(pred, pad), np.pad(target, pad), HALO)


def _quantities_dask(pred: da.Array, target: da.Array) -> da.Array:
    ndim = pred.ndim
    depth = {i: (HALO if i >= ndim - 2 else 0) for i in range(ndim)}
    boundary = {i: (0 if i >= ndim - 2 else "none") for i in range(ndim)}
    pred_h = da.overlap.overlap(pred, depth=depth, boundary=boundary)
    target_h = da.overlap.overlap(target.rechunk(pred.chunks), depth=depth, boundary=boundary)
    trimmed = tuple(tuple(c - 2 * HALO for c in chunks) for chunks in pred_h.chunks[-2:])
    chunks = (*pred_h.chunks[:-3], (len(QUANTITIES),), *trimmed)
    return da.map_blocks(
        _quantities_block,
        pred_h,
        target_h,
        HALO,
        dtype=np.float64,
        chunks=chunks,
        name="m3rcr-metric-quantities",
    )


def pixel_quantities(pred: xr.DataArray, target: xr.DataArray) -> xr.DataArray:
    """The per-pixel quantities whose grouped sums give every metric.

    Parameters
    ----------
    pred, target
        Optical images in reflectance x10000, dims ``([patch,] band, y, x)``, on the same
        grid and with the same chunks (``band`` in one chunk).

    Returns
    -------
    xarray.DataArray
        float64, dims ``(quantity, [patch,] y, x)``, quantities :data:`QUANTITIES`; lazy
        when the inputs are dask arrays.
    """
    if isinstance(pred.data, da.Array):
        data = _quantities_dask(pred.data, da.asarray(target.data))
    else:
        data = _quantities_numpy(np.asarray(pred.data), np.asarray(target.data))
    dims = [d for d in pred.dims if d != "band"]
    data = da.moveaxis(data, -3, 0) if isinstance(data, da.Array) else np.moveaxis(data, -3, 0)
    return xr.DataArray(data, dims=("quantity", *dims), coords={"quantity": list(QUANTITIES)})


# ------------------------------------------------- streaming: one task per chunk, then seams
#: chunks are made at least this wide, so that a chunk's edge strips never overlap
MIN_CHUNK = 2 * HALO
#: width of the edge strips that a chunk hands on to the seams between chunks
FRAME = 2 * HALO


def _group_sum(quantities: np.ndarray, labels: np.ndarray, engine: str) -> np.ndarray:
    """Sums of (patch, quantity, y, x) by (patch, y, x) labels: (quantity, patch, group)."""
    sums, _ = flox.groupby_reduce(
        np.moveaxis(quantities, -3, 0),
        labels,
        func="sum",
        expected_groups=np.arange(N_LABELS),
        axis=(-2, -1),
        fill_value=0.0,
        dtype=np.float64,
        engine=engine,
    )
    return np.asarray(sums)


def _clear(
    quantities: np.ndarray, top: bool, bottom: bool, left: bool = False, right: bool = False
) -> np.ndarray:
    """Zero the quantities within ``HALO`` of the named sides (they are counted elsewhere)."""
    for flag, index in (
        (top, np.s_[..., :HALO, :]),
        (bottom, np.s_[..., -HALO:, :]),
        (left, np.s_[..., :HALO]),
        (right, np.s_[..., -HALO:]),
    ):
        if flag:
            quantities[index] = 0
    return quantities


def _strip(arrays: Sequence[np.ndarray], index: Any) -> tuple[np.ndarray, ...]:
    return tuple(np.array(a[index], copy=True) for a in arrays)  # copies free the chunk


def chunk_pass(
    pred: np.ndarray,
    target: np.ndarray,
    labels: np.ndarray,
    internal: tuple[bool, bool, bool, bool] = (False,) * 4,
    engine: str = DEFAULT_ENGINE,
) -> dict[str, Any]:
    """Everything one chunk gives, read once: its grouped sums and its edge strips.

    Parameters
    ----------
    pred, target
        (patch, band, y, x) reflectance x10000; ``labels`` (patch, y, x).
    internal
        Whether the top, bottom, left and right sides are chunk borders inside the
        image (rather than its edge, where zero padding is right).

    Returns
    -------
    dict
        ``sums`` (quantity, patch, group) over the pixels that need no other chunk (all
        but those within ``HALO`` of an internal side), and the ``FRAME``-wide strips
        ``top``, ``bottom``, ``left``, ``right`` as (pred, target, labels) for the seams.
    """
    pad = [(0, 0)] * (pred.ndim - 2) + [(HALO, HALO), (HALO, HALO)]
    quantities = _quantities_block(np.pad(pred, pad), np.pad(target, pad), HALO)
    _clear(quantities, *internal)
    arrays = (pred, target, labels)
    return {
        "sums": _group_sum(quantities, labels, engine),
        "top": _strip(arrays, np.s_[..., :FRAME, :]),
        "bottom": _strip(arrays, np.s_[..., -FRAME:, :]),
        "left": _strip(arrays, np.s_[..., :FRAME]),
        "right": _strip(arrays, np.s_[..., -FRAME:]),
    }


def _beside(
    side: dict[str, Any] | None, like: np.ndarray, cols: slice, key: str, part: int
) -> np.ndarray:
    """``HALO`` columns of a neighbour's strip, or zeros past the image edge."""
    if side is None:
        return np.zeros((*like.shape[:-1], HALO), dtype=like.dtype)
    return side[key][part][..., cols]


def row_seam(
    above: Sequence[dict[str, Any] | None],
    below: Sequence[dict[str, Any] | None],
    engine: str = DEFAULT_ENGINE,
) -> np.ndarray:
    """Grouped sums of the ``2 HALO`` rows around a border between two chunk rows.

    ``above`` and ``below``: :func:`chunk_pass` results of the chunks left of, at and
    right of the seam's column, in the rows above and below (None past the image edge).
    """
    context = []
    for part in (0, 1):  # pred, target: (patch, band, 2 FRAME, HALO + x + HALO)
        centre = np.concatenate([above[1]["bottom"][part], below[1]["top"][part]], axis=-2)
        left = [
            _beside(s, c[1][k][part], np.s_[-HALO:], k, part)
            for s, c, k in ((above[0], above, "bottom"), (below[0], below, "top"))
        ]
        right = [
            _beside(s, c[1][k][part], np.s_[:HALO], k, part)
            for s, c, k in ((above[2], above, "bottom"), (below[2], below, "top"))
        ]
        context.append(
            np.concatenate(
                [np.concatenate(left, axis=-2), centre, np.concatenate(right, axis=-2)], axis=-1
            )
        )
    quantities = _quantities_block(context[0], context[1], HALO)
    labels = np.concatenate(
        [above[1]["bottom"][2][..., -HALO:, :], below[1]["top"][2][..., :HALO, :]], axis=-2
    )
    return _group_sum(quantities, labels, engine)


def column_seam(
    left: dict[str, Any],
    right: dict[str, Any],
    top: bool,
    bottom: bool,
    engine: str = DEFAULT_ENGINE,
) -> np.ndarray:
    """Grouped sums of the ``2 HALO`` columns around a border between two chunks.

    Rows within ``HALO`` of an internal ``top`` / ``bottom`` border are left to the row
    seams (which cover the crossings).
    """
    pad = [(0, 0)] * (left["right"][0].ndim - 2) + [(HALO, HALO), (0, 0)]
    context = [
        np.pad(np.concatenate([left["right"][part], right["left"][part]], axis=-1), pad)
        for part in (0, 1)
    ]
    quantities = _clear(_quantities_block(context[0], context[1], HALO), top, bottom)
    labels = np.concatenate([left["right"][2][..., -HALO:], right["left"][2][..., :HALO]], axis=-1)
    return _group_sum(quantities, labels, engine)


def _add(*parts: Any) -> Any:
    total = parts[0]["sums"] if isinstance(parts[0], dict) else parts[0]
    for part in parts[1:]:
        total = total + (part["sums"] if isinstance(part, dict) else part)
    return total


def _tree_sum(parts: list[Any], fan_in: int = 8) -> Any:
    add = delayed(_add, pure=True)
    while len(parts) > 1:
        parts = [add(*parts[i : i + fan_in]) for i in range(0, len(parts), fan_in)]
    return add(parts[0])


def _patch_chunk_sums(pred: np.ndarray, target: np.ndarray, labels: np.ndarray, engine: str) -> Any:
    """Delayed (quantity, patch, group) sums of one chunk of patches: chunks, then seams."""
    ny, nx = labels.shape
    step = delayed(chunk_pass, pure=True)
    grid = [
        [
            step(
                pred[i, j],
                target[i, j],
                labels[i, j],
                (i > 0, i < ny - 1, j > 0, j < nx - 1),
                engine,
            )
            for j in range(nx)
        ]
        for i in range(ny)
    ]

    def at(i: int, j: int) -> Any:
        return grid[i][j] if 0 <= j < nx else None

    parts: list[Any] = [cell for row in grid for cell in row]
    parts += [
        delayed(row_seam, pure=True)(
            [at(i, j - 1), at(i, j), at(i, j + 1)],
            [at(i + 1, j - 1), at(i + 1, j), at(i + 1, j + 1)],
            engine,
        )
        for i in range(ny - 1)
        for j in range(nx)
    ]
    parts += [
        delayed(column_seam, pure=True)(grid[i][j], grid[i][j + 1], i > 0, i < ny - 1, engine)
        for i in range(ny)
        for j in range(nx - 1)
    ]
    return _tree_sum(parts)


def streamed_sums(
    pred: da.Array, target: da.Array, labels: da.Array, engine: str = DEFAULT_ENGINE
) -> da.Array:
    """(quantity, patch, group) sums of (patch, band, y, x) images, each chunk read once.

    One task per chunk computes the per-pixel quantities of all its pixels that need no
    other chunk, sums them per group (flox) and hands on its edge strips (``FRAME``
    pixels wide); small seam tasks then do the pixels within ``HALO`` of the borders
    between chunks from those strips. No task but a chunk's own holds the chunk, so
    memory is bounded by the chunk size however large the scene (a halo exchange keeps
    a row of chunks waiting for their neighbours). Each pixel is computed from the same
    neighbourhood as in one piece, so no value depends on the chunking.
    """
    spatial = {axis: _at_least_min_chunk(labels.chunks[axis]) for axis in (-2, -1)}
    arrays = [
        a.rechunk({a.ndim + axis: c for axis, c in spatial.items()}) for a in (pred, target, labels)
    ]
    blocks = [a.to_delayed(optimize_graph=False) for a in arrays]
    per_chunk = [
        _patch_chunk_sums(blocks[0][k, 0], blocks[1][k, 0], blocks[2][k], engine)
        for k in range(labels.numblocks[0])
    ]  # one per chunk of patches
    total = delayed(np.concatenate, pure=True)(per_chunk, axis=1)
    shape = (len(QUANTITIES), labels.shape[0], N_LABELS)
    return da.from_delayed(total, shape=shape, dtype=np.float64)


# ------------------------------------------------------------------------------ grouping
_CODE_INDEX = code_to_index(2).astype(np.int16)  # WorldCover code -> position 0..10, or -1


def _labels_block(landcover: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Group label per pixel: position of the code in :data:`GROUP_CODES`, + 13 if cloudy."""
    codes = np.asarray(landcover)
    missing = codes == NODATA_CODE
    if codes.dtype == np.uint8:
        index = _CODE_INDEX[codes]
    else:
        known = np.isfinite(codes) & (codes >= 0) & (codes <= 255)
        index = _CODE_INDEX[np.where(known, codes, 0).astype(np.intp)]
        index = np.where(known & (codes == np.round(codes)), index, -1)
        missing |= np.isnan(codes) if codes.dtype.kind == "f" else False
    index = np.where(index < 0, UNKNOWN_LABEL, index)
    index = np.where(missing, NODATA_LABEL, index).astype(np.int16)
    return index + np.int16(len(GROUP_CODES)) * (np.asarray(cloud) != 0).astype(np.int16)


def group_labels(
    landcover: xr.DataArray | None, cloudmask: xr.DataArray | None, like: xr.DataArray
) -> xr.DataArray:
    """Integer group label per pixel, on the grid and chunks of ``like`` (dims ([patch,] y, x)).

    ``label = position of the code in GROUP_CODES (0..10 WorldCover, 11 nodata, 12 codes
    outside WorldCover) + 13 * cloudmask``; a missing land cover or cloud mask counts as
    land-cover nodata / clear.
    """
    template = like.isel(band=0, drop=True) if "band" in like.dims else like
    layers = [landcover, cloudmask]
    fills = [0, False]
    data = []
    for layer, fill in zip(layers, fills, strict=True):
        if layer is None:
            layer = xr.zeros_like(template, dtype=type(fill))
        layer = layer.transpose(*template.dims)
        if isinstance(template.data, da.Array):
            data.append(da.asarray(layer.data).rechunk(template.data.chunks))
        else:
            data.append(np.asarray(layer.data))
    if isinstance(template.data, da.Array):
        labels = da.map_blocks(_labels_block, *data, dtype=np.int16, name="m3rcr-metric-labels")
    else:
        labels = _labels_block(*data)
    return xr.DataArray(labels, dims=template.dims)


def grouped_sums(
    pred: xr.DataArray,
    target: xr.DataArray,
    labels: xr.DataArray,
    *,
    per_patch: bool = False,
    engine: str = DEFAULT_ENGINE,
) -> xr.DataArray:
    """Sums of the per-pixel quantities per group label (flox inside each chunk).

    Parameters
    ----------
    pred, target
        Optical images in reflectance x10000, dims ``([patch,] band, y, x)``, same grid
        and chunks, ``band`` in one chunk (see :func:`prepare_inputs`).
    labels
        From :func:`group_labels`, dims ``([patch,] y, x)``, chunked like ``target``.
    per_patch
        Keep the ``patch`` dim (sum over ``y`` and ``x`` only).
    engine
        flox's per-chunk algorithm, "numpy" or "flox".

    Returns
    -------
    xarray.DataArray
        float64, dims ``(quantity, [patch,] cloud, code)``; ``code`` holds
        :data:`GROUP_CODES`: the WorldCover codes, 0 for land-cover nodata and -1 for
        codes outside WorldCover. Lazy (one chunk) for dask inputs.
    """
    arrays = [a.data for a in (pred, target, labels)]
    if "patch" not in labels.dims:
        arrays = [a[None] for a in arrays]
    if isinstance(arrays[0], da.Array):
        sums = streamed_sums(*(da.asarray(a) for a in arrays), engine=engine)
    else:
        sums = chunk_pass(*(np.asarray(a) for a in arrays), engine=engine)["sums"]
    if not per_patch:
        sums = sums.sum(axis=1)
    kept = ["patch"] if per_patch else []
    shape = (*sums.shape[:-1], 2, len(GROUP_CODES))
    coords = {"quantity": list(QUANTITIES), "cloud": [False, True], "code": list(GROUP_CODES)}
    return xr.DataArray(
        sums.reshape(shape), dims=("quantity", *kept, "cloud", "code"), coords=coords
    )


# ------------------------------------------------------------------------ checking sums
def _check_sums_block(sums: np.ndarray, pred_name: str, target_name: str) -> np.ndarray:
    """Raise :class:`SchemaError` on NaN or infinite predictions (alike); return ``sums``."""
    totals = sums.reshape(len(QUANTITIES), -1).sum(axis=1)
    n_pixels = totals[_Q["n_valid"]] + totals[_Q["n_nodata"]]
    if n_pixels > 0 and totals[_Q["nan_pred"]] == n_pixels:
        raise SchemaError(f"prediction {pred_name!r} is all NaN or infinite")
    if totals[_Q["nan_in_valid"]] > 0:
        raise SchemaError(
            f"prediction {pred_name!r} is NaN or infinite at "
            f"{int(totals[_Q['nan_in_valid']])} pixel(s) where the target {target_name!r} "
            "has data"
        )
    return sums


def checked(
    sums: xr.DataArray, pred_name: str = "pred", target_name: str = "target"
) -> xr.DataArray:
    """``sums`` with the NaN / inf checks of the prediction in its graph (raised when
    computed)."""
    if not isinstance(sums.data, da.Array):
        return sums.copy(data=_check_sums_block(sums.data, pred_name, target_name))
    data = sums.data.rechunk(-1).map_blocks(
        _check_sums_block,
        pred_name,
        target_name,
        dtype=sums.dtype,
        name="m3rcr-metric-check",
    )
    return sums.copy(data=data)


# --------------------------------------------------------------------------- from sums
def _strata_matrix(strata: Sequence[str]) -> xr.DataArray:
    rows = {"all": [1.0, 1.0], "cloudy": [0.0, 1.0], "clear": [1.0, 0.0]}
    return xr.DataArray(
        [rows[s] for s in strata],
        dims=("stratum", "cloud"),
        coords={"stratum": list(strata), "cloud": [False, True]},
    )


def _class_matrix(level: int | None) -> xr.DataArray:
    codes = list(GROUP_CODES)
    groups = list(zip(class_names(level), class_codes(level), strict=True)) if level else []
    rows = [[1.0 if c in members else 0.0 for c in codes] for _, members in groups]
    rows.append([1.0] * len(codes))
    names = [name for name, _ in groups] + [ALL_CLASSES]
    return xr.DataArray(
        rows, dims=("landcover_class", "code"), coords={"landcover_class": names, "code": codes}
    )


def cell_sums(
    sums: xr.DataArray, level: int | None = 1, strata: Sequence[str] = STRATA
) -> xr.DataArray:
    """Group sums added up into (stratum, landcover_class) cells.

    ``level`` None keeps only the class ``"all"``.
    """
    by_stratum = xr.dot(sums, _strata_matrix(strata), dim="cloud")
    cells = xr.dot(by_stratum, _class_matrix(level), dim="code")
    order = [
        "quantity",
        *(["patch"] if "patch" in cells.dims else []),
        "stratum",
        "landcover_class",
    ]
    return cells.transpose(*order)


_ATTRS: dict[str, dict[str, str]] = {
    "PSNR": {"units": "dB", "long_name": "peak signal-to-noise ratio (peak 1)"},
    "SSIM": {"units": "1", "long_name": "structural similarity (11x11 Gaussian, sigma 1.5)"},
    "SAM": {"units": "degree", "long_name": "spectral angle"},
    "MAE": {"units": "1", "long_name": "mean absolute error of reflectance in [0, 1]"},
    "RMSE": {"units": "1", "long_name": "root mean squared error of reflectance in [0, 1]"},
    "n_pixels": {"units": "pixel", "long_name": "valid pixels in the cell"},
    "n_nodata": {"units": "pixel", "long_name": "nodata pixels excluded from the cell"},
}


def metrics_from_sums(cells: xr.DataArray, n_bands: int) -> xr.Dataset:
    """PSNR, SSIM, SAM, MAE, RMSE, n_pixels and n_nodata from :func:`cell_sums`.

    Cells without valid pixels get NaN metrics.
    """
    q = {name: cells.sel(quantity=name, drop=True) for name in QUANTITIES}
    n = q["n_valid"]
    samples = (n * n_bands).where(n > 0)
    mse = q["sq_error"] / samples
    result = xr.Dataset(
        {
            "PSNR": psnr(mse),
            "SSIM": q["ssim"] / samples,
            "SAM": q["sam"] / n.where(n > 0),
            "MAE": q["abs_error"] / samples,
            "RMSE": np.sqrt(mse),
            "n_pixels": n.round().astype(np.int64),
            "n_nodata": q["n_nodata"].round().astype(np.int64),
        }
    )
    for name, attrs in _ATTRS.items():
        result[name].attrs.update(attrs)
    return result


def mean_over_patches(per_patch: xr.Dataset) -> xr.Dataset:
    """The per-patch protocol's summary: each metric's mean over the patches that have it.

    ``n_pixels`` and ``n_nodata`` are summed; ``n_patches`` counts the patches averaged.
    """
    summary = xr.Dataset()
    for name in METRICS:
        values = per_patch[name]
        count = values.count("patch")
        summary[name] = values.sum("patch", skipna=True) / count.where(count > 0)
        summary[name].attrs.update(_ATTRS[name])
    for name in ("n_pixels", "n_nodata"):
        summary[name] = per_patch[name].sum("patch")
        summary[name].attrs.update(_ATTRS[name])
    summary["n_patches"] = per_patch["PSNR"].count("patch").astype(np.int64)
    return summary


# ------------------------------------------------------------------------------ inputs
def _require_dims(array: xr.DataArray, dims: Sequence[str], role: str) -> None:
    missing = [d for d in dims if d not in array.dims]
    if missing:
        raise SchemaError(f"{role}: dims {array.dims} lack {missing}")


def _resolve(ds: xr.Dataset | None, item: Any, role: str, hint: str = "") -> xr.DataArray:
    if isinstance(item, xr.DataArray):
        return item
    if not isinstance(item, str):
        raise SchemaError(
            f"{role}: expected a variable name or a DataArray, got {type(item).__name__}"
        )
    if ds is None:
        raise SchemaError(f"{role}: {item!r} is a variable name but no dataset was given")
    if item not in ds.data_vars:
        raise SchemaError(
            f"{role}: variable {item!r} is missing from the dataset "
            f"(have {sorted(map(str, ds.data_vars))}){hint}"
        )
    return ds[item]


def _crs(array: xr.DataArray) -> Any:
    try:
        return array.rio.crs
    except Exception:  # a malformed grid mapping is not ours to diagnose here
        return None


def _same_values(a: xr.DataArray, b: xr.DataArray) -> bool:
    va, vb = np.asarray(a.values), np.asarray(b.values)
    if va.shape != vb.shape:
        return False
    if np.issubdtype(va.dtype, np.number) and np.issubdtype(vb.dtype, np.number):
        return bool(np.allclose(va, vb, rtol=0, atol=1e-6, equal_nan=True))
    return bool(np.array_equal(va, vb))


def _check_grid(array: xr.DataArray, role: str, ref: xr.DataArray, allowed: set[str]) -> None:
    """``array`` must lie on the grid of ``ref``: dims, sizes, coordinates and CRS."""
    grid = [d for d in ref.dims if d in ("patch", *_PIXEL_DIMS)]
    _require_dims(array, grid, role)
    extra = [d for d in array.dims if d not in allowed | set(grid)]
    if extra:
        raise SchemaError(f"{role}: unexpected dims {extra} (dims {array.dims})")
    for dim in grid:
        if array.sizes[dim] != ref.sizes[dim]:
            raise SchemaError(
                f"{role}: grid does not match the target: {dim} has "
                f"{array.sizes[dim]} pixels, the target {ref.sizes[dim]}"
            )
    for name in set(array.coords) & set(ref.coords):
        dims = set(array[name].dims)
        if dims and dims <= set(grid) and not _same_values(array[name], ref[name]):
            raise SchemaError(
                f"{role}: grid does not match the target: coordinate {name!r} differs"
            )
    crs, ref_crs = _crs(array), _crs(ref)
    if crs is not None and ref_crs is not None and crs != ref_crs:
        raise SchemaError(f"{role}: CRS {crs} does not match the target's CRS {ref_crs}")


def _match_bands(pred: xr.DataArray, target: xr.DataArray) -> xr.DataArray:
    if pred.sizes["band"] != target.sizes["band"]:
        raise SchemaError(
            f"pred: {pred.sizes['band']} bands, the target has {target.sizes['band']}"
        )
    if "band" in pred.coords and "band" in target.coords:
        labels, wanted = list(pred["band"].values), list(target["band"].values)
        if sorted(map(str, labels)) != sorted(map(str, wanted)):
            raise SchemaError(f"pred: bands {labels} do not match the target's {wanted}")
        if labels != wanted:
            pred = pred.sel(band=target["band"].values)
    return pred


def _at_least_min_chunk(chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of at least :data:`MIN_CHUNK` pixels (one chunk if the axis is shorter)."""
    if min(chunks) >= MIN_CHUNK or len(chunks) == 1:
        return chunks
    if sum(chunks) < 2 * MIN_CHUNK:
        return (sum(chunks),)
    return tuple(da.overlap.ensure_minimum_chunksize(MIN_CHUNK, chunks))


def _unify_chunks(arrays: dict[str, xr.DataArray | None]) -> dict[str, xr.DataArray | None]:
    """All inputs on the spatial chunks of the first dask one, ``band`` in one chunk."""
    lazy = [a for a in arrays.values() if a is not None and isinstance(a.data, da.Array)]
    if not lazy:
        return arrays
    chunks = {d: lazy[0].chunksizes[d] for d in lazy[0].dims if d != "band"}
    out: dict[str, xr.DataArray | None] = {}
    for key, array in arrays.items():
        if array is not None:
            spec: dict[str, Any] = {d: chunks[d] for d in array.dims if d in chunks}
            if "band" in array.dims:
                spec["band"] = -1
            array = array.chunk(spec)
        out[key] = array
    return out


def _optional_layer(
    ds: xr.Dataset | None, item: Any, role: str, needed: bool, hint: str
) -> xr.DataArray | None:
    if item is None:
        return None
    if isinstance(item, str) and ds is not None and item not in ds.data_vars and not needed:
        return None
    return _resolve(ds, item, role, hint)


def prepare_inputs(
    ds: xr.Dataset | None,
    pred: Any,
    target: Any,
    landcover: Any,
    cloudmask: Any,
    *,
    need_cloudmask: bool,
    per_patch: bool,
) -> dict[str, xr.DataArray | None]:
    """Resolve names to DataArrays, check their grids, order dims and unify chunks.

    Raises
    ------
    SchemaError
        A missing variable, mismatched grids (dims, sizes, coordinates, CRS, bands), or a
        per-patch protocol without a ``patch`` dim.
    """
    target_da = _resolve(ds, target, "target")
    pred_da = _resolve(ds, pred, "pred")
    _require_dims(target_da, ("band", *_PIXEL_DIMS), "target")
    if per_patch and "patch" not in target_da.dims:
        raise SchemaError("protocol 'per_patch' needs a collection (a 'patch' dim)")
    order = [d for d in ("patch", "band", *_PIXEL_DIMS) if d in target_da.dims]
    target_da = target_da.transpose(*order)
    _check_grid(pred_da, "pred", target_da, {"band"})
    pred_da = _match_bands(pred_da.transpose(*order), target_da)
    layers: dict[str, xr.DataArray | None] = {"pred": pred_da, "target": target_da}
    hints = {
        "landcover": " (pass landcover=None to evaluate without classes)",
        "cloudmask": " (pass strata=('all',) to evaluate without a cloud mask)",
    }
    for role, item, needed in (
        ("landcover", landcover, True),
        ("cloudmask", cloudmask, need_cloudmask),
    ):
        layer = _optional_layer(ds, item, role, needed, hints[role])
        if layer is not None:
            _check_grid(layer, role, target_da, set())
            layer = layer.transpose(*[d for d in order if d != "band"])
        layers[role] = layer
    return _unify_chunks(layers)


# ------------------------------------------------------------------------------ evaluate
NODATA_RULE = (
    "pixels where any target band is 0, NaN or infinite, or any band of an integer "
    "prediction is 0, are excluded from every metric"
)
LANDCOVER_RULE = (
    "valid pixels whose land cover is nodata (0) or not an ESA WorldCover code are in "
    "class 'all' only"
)


def _check_arguments(
    level: int | None, strata: Sequence[str], protocol: str, return_per_patch: bool
) -> tuple[str, ...]:
    strata = (strata,) if isinstance(strata, str) else tuple(strata)
    unknown = [s for s in strata if s not in STRATA]
    if not strata or unknown or len(set(strata)) != len(strata):
        raise SchemaError(f"strata must be distinct values of {STRATA}, got {strata}")
    if protocol not in PROTOCOLS:
        raise SchemaError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if return_per_patch and protocol != "per_patch":
        raise SchemaError("return_per_patch=True needs protocol='per_patch'")
    if level is not None:
        class_names(level)  # raises SchemaError for a level other than 1 or 2
    return strata


def _name(item: Any, default: str) -> str:
    if isinstance(item, str):
        return item
    return str(getattr(item, "name", None) or default)


def _compute_sums(sums: xr.DataArray) -> xr.DataArray:
    if not isinstance(sums.data, da.Array):
        return sums
    from .progress import compute_with_progress

    (data,) = compute_with_progress(sums.data, show=bool(get_options()["progress"]))
    return sums.copy(data=data)


def _patch_coords(target: xr.DataArray) -> dict[str, xr.DataArray]:
    return {name: coord for name, coord in target.coords.items() if coord.dims == ("patch",)}


def _landcover_counts(sums: xr.DataArray, landcover_name: str) -> dict[str, int]:
    """Valid pixels in no land-cover class (nodata, unknown codes); warns on unknown codes."""
    valid = sums.sel(quantity="n_valid").sum(
        [d for d in sums.dims if d not in ("quantity", "code")]
    )
    counts = {
        "n_landcover_nodata_pixels": round(float(valid.sel(code=NODATA_CODE))),
        "n_landcover_unknown_pixels": round(float(valid.sel(code=-1))),
    }
    if counts["n_landcover_unknown_pixels"]:
        warnings.warn(
            f"{landcover_name}: {counts['n_landcover_unknown_pixels']} valid pixel(s) have "
            "codes that are not ESA WorldCover classes; they count in class 'all' only "
            "(attribute n_landcover_unknown_pixels)",
            M3RCRWarning,
            stacklevel=4,  # the caller of evaluate
        )
    return counts


def _attrs(sums: xr.DataArray, landcover_name: str | None, **kwargs: Any) -> dict[str, Any]:
    attrs = {key: value for key, value in kwargs.items() if value is not None}
    attrs.update(
        nodata_rule=NODATA_RULE,
        normalization="clip to [0, 10000], divide by 10000",
        psnr_if_mse_is_zero=PSNR_IF_PERFECT,
    )
    if landcover_name is not None:
        attrs.update(landcover_rule=LANDCOVER_RULE)
    if not isinstance(sums.data, da.Array):
        totals = sums.sum([d for d in sums.dims if d != "quantity"])
        n_valid = round(float(totals.sel(quantity="n_valid")))
        n_nodata = round(float(totals.sel(quantity="n_nodata")))
        attrs.update(
            n_valid_pixels=n_valid, n_nodata_pixels=n_nodata, n_pixels_total=n_valid + n_nodata
        )
        if landcover_name is not None:
            attrs.update(_landcover_counts(sums, landcover_name))
    return attrs


def evaluate(
    ds: xr.Dataset | None = None,
    pred: str | xr.DataArray = "decloud",
    target: str | xr.DataArray = "cloudfree",
    *,
    level: int | None = 1,
    strata: Sequence[str] = STRATA,
    protocol: str = "pooled",
    landcover: str | xr.DataArray | None = "landcover",
    cloudmask: str | xr.DataArray | None = "cloudmask",
    return_per_patch: bool = False,
    compute: bool = True,
    engine: str = DEFAULT_ENGINE,
) -> xr.Dataset | tuple[xr.Dataset, xr.Dataset]:
    """PSNR, SSIM, SAM, MAE and RMSE of a prediction per stratum and land-cover class.

    All sums of every metric, class and stratum come from one pass over the data: with
    dask inputs, one ``dask.compute`` whose memory is bounded by the chunk size.

    Parameters
    ----------
    ds
        A scene or a collection; None when every input is given as a DataArray.
    pred, target
        Variable names in ``ds`` or DataArrays, dims ``([patch,] band, y, x)``, reflectance
        x10000 (normalised here to [0, 1] as the reference does).
    level
        WorldCover class level: 1 (seven groups) or 2 (eleven classes); None: only "all".
    strata
        Subset of ``("all", "cloudy", "clear")``: all valid pixels, those under the cloud
        mask, those outside it.
    protocol
        ``"pooled"``: each metric over all pixels of the cell (PSNR from the pooled MSE).
        ``"per_patch"`` (collections): each metric per patch, then the mean over the
        patches where the cell has pixels, as the published test script reports.
    landcover, cloudmask
        Variable names or DataArrays (y, x); None to go without (class "all" only /
        stratum "all" only). The cloud mask is needed only for "cloudy" and "clear".
    return_per_patch
        With ``protocol="per_patch"``, also return the per-patch table.
    compute
        False returns the result lazily (no attributes with pixel counts then); the
        NaN / inf checks run when it is computed.
    engine
        flox's per-chunk algorithm, "numpy" (default, measured faster) or "flox".

    Returns
    -------
    xarray.Dataset or (xarray.Dataset, xarray.Dataset)
        Variables PSNR, SSIM, SAM, MAE, RMSE, n_pixels, n_nodata over dims ``stratum`` and
        ``landcover_class`` (class names at ``level``, then ``"all"``); attributes include
        ``n_nodata_pixels`` and ``n_valid_pixels`` and, with a land cover,
        ``n_landcover_nodata_pixels`` and ``n_landcover_unknown_pixels`` (valid pixels
        in class ``"all"`` only). With ``return_per_patch``, also the per-patch Dataset
        (dims ``patch``, ``stratum``, ``landcover_class``).

    Raises
    ------
    SchemaError
        Missing variables, mismatched grids or CRS, bad arguments; a prediction that is
        all NaN / inf, or NaN / inf where the target has data (at compute time when lazy).

    Warns
    -----
    M3RCRWarning
        Valid pixels have land-cover codes outside ESA WorldCover (counted in the
        attribute ``n_landcover_unknown_pixels``).
    """
    strata = _check_arguments(level, strata, protocol, return_per_patch)
    per_patch = protocol == "per_patch"
    need_cloudmask = any(s != "all" for s in strata)
    if landcover is None:
        level = None
    inputs = prepare_inputs(
        ds, pred, target, landcover, cloudmask, need_cloudmask=need_cloudmask, per_patch=per_patch
    )
    if need_cloudmask and inputs["cloudmask"] is None:
        raise SchemaError(
            f"cloudmask: strata {strata} need a cloud mask; "
            "pass strata=('all',) to evaluate without one"
        )
    target_da = inputs["target"]
    assert target_da is not None and inputs["pred"] is not None
    labels = group_labels(inputs["landcover"], inputs["cloudmask"], like=target_da)
    sums = grouped_sums(inputs["pred"], target_da, labels, per_patch=per_patch, engine=engine)
    sums = checked(sums, _name(pred, "pred"), _name(target, "target"))
    if compute:
        sums = _compute_sums(sums)
    table = metrics_from_sums(cell_sums(sums, level, strata), target_da.sizes["band"])
    attrs = _attrs(
        sums,
        None if inputs["landcover"] is None else _name(landcover, "landcover"),
        protocol=protocol,
        level=level,
        pred=_name(pred, "pred"),
        target=_name(target, "target"),
        strata=", ".join(strata),
    )
    if not per_patch:
        return table.assign_attrs(attrs)
    table = table.assign_coords(_patch_coords(target_da)).assign_attrs(attrs)
    summary = mean_over_patches(table).assign_attrs(attrs)
    return (summary, table) if return_per_patch else summary


# ---------------------------------------------------------------------------- output
def write_table(result: xr.Dataset, path: str | Any) -> None:
    """Write an :func:`evaluate` result as CSV (``.csv``) or JSON (``.json``).

    The JSON holds ``{"attrs": ..., "rows": [one object per (stratum, class)]}`` with
    NaN as null; the CSV has one row per (stratum, class).
    """
    import json
    from pathlib import Path

    path = Path(path)
    table = result.to_dataframe().reset_index()
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table.to_csv(path, index=False)
    elif suffix == ".json":
        rows = json.loads(table.to_json(orient="records", double_precision=15))
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in result.attrs.items()}
        path.write_text(json.dumps({"attrs": attrs, "rows": rows}, indent=1))
    else:
        raise SchemaError(
            f"{path}: write {' or '.join(TABLE_SUFFIXES)}, not {suffix or 'no suffix'!r}"
        )
