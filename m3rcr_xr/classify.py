"""Land-cover classification of optical images, tile by tile, on any Dask scheduler.

:func:`classify` runs a land-cover classifier (:class:`~m3rcr_xr.models.LandCoverUNet`,
``"landcover_unet"``) over a scene or a collection through the tiling engine of
:func:`m3rcr_xr.decloud` (:mod:`m3rcr_xr.engine`): the same tile grid, mirrored
edges, two-stage group assembly and per-worker model cache. Each tile's logits become
class probabilities (softmax) that are blended across the overlaps with the same
``sin^2`` window; the label of a pixel is the class of highest blended probability, so
the labels do not depend on the chunking (and a pixel near a tile seam is judged by all
the tiles that see it, not by the one that happened to come last).

Examples
--------
>>> import m3rcr_xr
>>> scene = m3rcr_xr.synthetic_scene((64, 64))
>>> labels = classify(scene["cloudfree"], checkpoint="landcover_unet-demo", tile=32)
>>> labels.dims, labels.dtype.name, labels.attrs["level"]
(('y', 'x'), 'uint8', 1)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .blending import BlockOutput, TileJob
from .engine import check_task, check_tile_arguments, plan_tiles, tile_collection, tile_scene
from .exceptions import ModelConfigError, SchemaError, UsageError, argument
from .identity import sources
from .landcover import IGNORE_INDEX, label_attrs
from .normalize import normalize_optical
from .resources import resource_items
from .runner import DEFAULT_PRECISION, ModelRef

__all__ = ["DEFAULT_CLASSIFIER", "classify", "no_data"]

#: the registry name of the land-cover classifier
DEFAULT_CLASSIFIER = "landcover_unet"


def no_data(optical: np.ndarray) -> np.ndarray:
    """Pixels of a (..., band, y, x) block without optical data: a non-finite band, or,
    for integer reflectance, a band at 0 (the data model's nodata)."""
    missing = ~np.isfinite(optical)
    if np.issubdtype(optical.dtype, np.integer):
        missing |= optical == 0
    return missing.any(axis=-3)


def _labels(canvas: np.ndarray, optical: np.ndarray, spread: bool = False) -> np.ndarray:
    """A block's blended probabilities (then the weight sum) to (1, y, x) uint8 labels,
    :data:`~m3rcr_xr.landcover.IGNORE_INDEX` where the input has no data (``spread``:
    a classifier runs without one)."""
    labels = canvas[:-1].argmax(axis=0).astype(np.uint8)  # dividing by the weights: same order
    labels[no_data(optical)] = IGNORE_INDEX
    return labels[None]


#: the engine's output for a classifier: labels, one channel
LABELS = BlockOutput(_labels, 1, np.uint8)


def _optical(array: xr.DataArray, bands: tuple[str, ...]) -> xr.DataArray:
    """``array`` as (…, band, y, x) in the classifier's band order, checked."""
    if not isinstance(array, xr.DataArray):
        raise UsageError(f"classify: expected an optical DataArray, got {type(array).__name__}")
    name = array.name or "optical"
    missing = [d for d in ("band", "y", "x") if d not in array.dims]
    extra = [d for d in array.dims if d not in ("patch", "band", "y", "x")]
    if missing or extra:
        raise SchemaError(f"{name}: dims {array.dims} must be ([patch,] band, y, x)")
    if array.sizes["band"] != len(bands):
        raise SchemaError(f"{name}: {array.sizes['band']} bands; the classifier takes {bands}")
    if "band" in array.coords:
        have = [str(b) for b in array["band"].values]
        if sorted(have) != sorted(bands):
            raise SchemaError(f"{name}: bands {have}; the classifier takes {list(bands)}")
        array = array.sel(band=list(bands))
    order = [d for d in ("patch", "band", "y", "x") if d in array.dims]
    return array.transpose(*order)


def check_level(spec: Any, level: int | None) -> None:
    """Raise :class:`ModelConfigError` unless the classifier of ``spec`` has ``level``'s classes."""
    if level is not None and spec.config.get("level") != level:
        raise ModelConfigError(
            f"{spec.name}: built for WorldCover level {spec.config.get('level')} "
            f"({len(spec.classes)} classes), not {argument('level', level)}; build it with "
            f"{argument('config', {'level': level})} (and weights trained for it)"
        )


def classifier_ref(
    classifier: str,
    checkpoint: str | os.PathLike | None,
    config: Mapping[str, Any] | None,
    device: str,
    precision: str,
    level: int | None,
) -> tuple[ModelRef, Any]:
    """The :class:`~m3rcr_xr.runner.ModelRef` of a classifier and its spec, checked
    (a cloud-removal model, a level it was not built for, weights that do not fit)."""
    ref = ModelRef.create(classifier, checkpoint, config, device, precision)
    spec = ref.spec()
    check_task(spec, "landcover", "classify")
    check_level(spec, level)
    return ref, spec


def classify_lazy(
    optical: xr.DataArray,
    ref: ModelRef,
    spec: Any,
    *,
    tile: int | None,
    overlap: int | None,
    batch_size: int,
    resources: Mapping[str, float] | None = None,
) -> xr.DataArray:
    """:func:`classify` with a checked classifier, always lazy (for one-pass evaluation)."""
    optical = _optical(optical, spec.optical_bands)
    plan = plan_tiles(spec, tile, overlap, optical.sizes["y"], optical.sizes["x"])
    raw = optical.chunk().data  # no-op when lazy
    values = raw.astype(np.float32)
    # a pixel without data (NaN, as in a decloud result) enters the network as 0: a NaN
    # would spread through its receptive field and relabel its neighbours
    inputs = normalize_optical(da.where(da.isfinite(values), values, 0))
    run = tile_collection if "patch" in optical.dims else tile_scene
    job = TileJob(
        plan=plan,
        members=(ref,),
        batch_size=batch_size,
        resources=resource_items(resources),
        output=LABELS,
    )
    data = run(inputs, raw, job)[..., 0, :, :]
    template = optical.isel(band=0, drop=True)
    attrs = {
        **label_attrs(spec.config["level"]),
        "model": ref.name,
        "config": repr(dict(ref.config)),
        "tile": plan.tile,
        "overlap": plan.overlap,
    }
    result = xr.DataArray(data, dims=template.dims, coords=template.coords, attrs=attrs)
    return result.rename(f"{optical.name or 'optical'}_class")


def classify(
    optical: xr.DataArray,
    classifier: str = DEFAULT_CLASSIFIER,
    checkpoint: str | os.PathLike | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    level: int | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    resources: Mapping[str, float] | None = None,
    precision: str = DEFAULT_PRECISION,
) -> xr.DataArray:
    """Classify the land cover of an optical image, pixel by pixel, lazily.

    Parameters
    ----------
    optical
        Reflectance x10000, dims ``([patch,] band, y, x)`` with the 4 optical bands
        (``cloudy``, ``cloudfree`` or a ``decloud`` result), any dtype.
    classifier
        Registry name of a land-cover classifier (``"landcover_unet"``).
    checkpoint
        Its weights, as for :func:`m3rcr_xr.decloud`: a registered name
        (``"landcover_unet-demo"``), a path or a URL; ``"untrained"`` for random weights
        (the labels then mean nothing). None: the classifier's default registered
        weights; none has any today, so None raises :class:`CheckpointError` saying how
        to get weights.
    config
        Architecture arguments (``{"preset": "small"}``, ``{"level": 2}``); must match
        the checkpoint.
    level
        The WorldCover level the result must have (1 or 2); None: the classifier's.
    tile, overlap, batch_size, device, resources, precision
        As for :func:`m3rcr_xr.decloud`: tiles of ``tile`` (default 256; a multiple of
        the classifier's ``2 ** depth``) overlapping by ``overlap`` (default
        ``tile // 8``).

    Returns
    -------
    xr.DataArray
        Class indices, uint8, dims ``([patch,] y, x)`` with the input's coordinates;
        :data:`~m3rcr_xr.landcover.IGNORE_INDEX` (255) where the input has no data (a
        non-finite band, or a band at 0 in integer reflectance). The class names are in
        ``attrs["flag_meanings"]`` (CF) and ``attrs["classes"]``; ``attrs["nodata"]``
        is 255, so a GeoTIFF of it masks the pixels without a label. Lazy for a
        Dask-backed input, in memory for an in-memory one.

    Raises
    ------
    ModelConfigError, CheckpointError, UsageError, SchemaError
        Before any work: a cloud-removal model given as the classifier, a classifier of
        another ``level``, weights for another number of classes, bad tiling arguments,
        an input that is not 4 optical bands on ``(y, x)``.
    """
    tile, overlap, batch_size, device = check_tile_arguments(tile, overlap, batch_size, device)
    ref, spec = classifier_ref(classifier, checkpoint, config, device, precision, level)
    result = classify_lazy(
        optical, ref, spec, tile=tile, overlap=overlap, batch_size=batch_size, resources=resources
    )
    result.encoding["source"] = sources(optical.to_dataset(name="optical"))
    return result if optical.chunks is not None else result.compute()
