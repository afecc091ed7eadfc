"""Labelled group sums: the engine's bare arrays as DataArrays with named groups.

:func:`group_labels` gives each pixel its group, :func:`grouped_sums` runs the engine
(:mod:`.engine`) and names the result's axes (:func:`named_sums`), :func:`checked` adds
the checks of the prediction to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .dispatch import is_lazy, map_blocks
from .engine import DEFAULT_ENGINE, check_sums, group_sums
from .kernels import GROUP_CODES, QUANTITIES, labels_block


def group_labels(
    landcover: xr.DataArray | None, cloudmask: xr.DataArray | None, like: xr.DataArray
) -> xr.DataArray:
    """Integer group label per pixel, on the grid and chunks of ``like`` (dims ([patch,] y, x)).

    ``label = position of the code in GROUP_CODES (0..10 WorldCover, 11 nodata, 12 codes
    outside WorldCover) + 13 * cloudmask``; a missing land cover or cloud mask counts as
    land-cover nodata / clear.
    """
    template = like.isel(band=0, drop=True) if "band" in like.dims else like
    layers = []
    for layer, fill in ((landcover, 0), (cloudmask, False)):
        if layer is None:
            layer = xr.zeros_like(template, dtype=type(fill))
        layer = layer.transpose(*template.dims)
        if is_lazy(template):
            layer = layer.chunk(template.chunksizes)
        layers.append(layer.data)
    labels = map_blocks(labels_block, *layers, dtype=np.int16, token="m3rcr-metric-labels")
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
    sums = group_sums(arrays[0], arrays[1], arrays[2], engine=engine)
    return named_sums(sums if per_patch else sums.sum(axis=1))


def named_sums(sums: Any) -> xr.DataArray:
    """The engine's bare ``(quantity, [patch,] label)`` sums (NumPy or dask) as a
    DataArray over ``(quantity, [patch,] cloud, code)``, the layout of :func:`grouped_sums`.

    Examples
    --------
    >>> from m3rcr_xr.metrics.kernels import N_LABELS
    >>> named_sums(np.zeros((len(QUANTITIES), 3, N_LABELS))).dims
    ('quantity', 'patch', 'cloud', 'code')
    """
    kept = ["patch"] if sums.ndim == 3 else []
    shape = (*sums.shape[:-1], 2, len(GROUP_CODES))
    coords = {"quantity": list(QUANTITIES), "cloud": [False, True], "code": list(GROUP_CODES)}
    return xr.DataArray(
        sums.reshape(shape), dims=("quantity", *kept, "cloud", "code"), coords=coords
    )


def checked(
    sums: xr.DataArray, pred_name: str = "pred", target_name: str = "target"
) -> xr.DataArray:
    """``sums`` with the NaN / inf checks of the prediction in its graph (raised when
    computed)."""
    return sums.copy(data=check_sums(sums.data, pred_name, target_name))
