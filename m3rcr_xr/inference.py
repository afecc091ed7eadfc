"""Decloud whole scenes and collections, tile by tile, on any Dask scheduler.

:func:`decloud` checks its arguments, describes the work of every tile task in one
:class:`~m3rcr_xr.blending.TileJob` and builds its output on the tiling engine, whose
parts are modules of their own:

- :mod:`m3rcr_xr.tiling`: the tile grid over the scene (a stride apart, mirrored past
  the edges, blended with weights that sum to one);
- :mod:`m3rcr_xr.runner`: the network wherever the task lands (model references, a
  model cache per process, one tile task at a time per GPU);
- :mod:`m3rcr_xr.tta`: the test-time transforms;
- :mod:`m3rcr_xr.ensembles`: the checkpoints of an ensemble, one model family and
  configuration, distinct networks;
- :mod:`m3rcr_xr.blending`: what a tile task computes: the mean (and spread) of each
  tile over the members and transforms, blended into output blocks;
- :mod:`m3rcr_xr.engine`: the Dask graph of a scene or a collection, in two stages so
  that no tile is computed twice, and the checks of the arguments that
  :func:`m3rcr_xr.classify` shares.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .blending import TileJob
from .cloudmask import warn_if_estimated
from .engine import (
    DEFAULT_TILE,
    check_task,
    check_tile_arguments,
    plan_tiles,
    tile_collection,
    tile_scene,
)
from .ensembles import Checkpoint, check_spread, ensemble_checkpoints, ensemble_spec
from .exceptions import SchemaError, check_flag
from .identity import INPUT_FINGERPRINT, sources, store_fingerprint
from .io import rechunk_like
from .normalize import model_inputs
from .resources import resource_items
from .runner import DEFAULT_PRECISION, ModelRef
from .schema import OPTICAL_NODATA, is_collection, validate
from .tta import TTA, check_tta

#: decloud and the values its arguments take; the names decloud's own code imports from
#: the engine's modules (check_tta, TileJob, plan_tiles, tile_scene...) are found here
#: too, without a warning
__all__ = ["DEFAULT_TILE", "TTA", "Checkpoint", "decloud"]

#: public names that moved out of this module (to the module named), still found here
#: with a DeprecationWarning
_MOVED = {
    **dict.fromkeys(
        [
            "CONCURRENT_DEVICE_TYPES",
            "PRECISIONS",
            "autocast_dtype",
            "check_precision",
            "clear_model_cache",
            "device_lock",
            "tile_counts",
        ],
        "runner",
    ),
    **dict.fromkeys(["GROUP_PIXELS", "mirror_index"], "tiling"),
    "resolve_device": "devices",
    "file_sha256": "weights.download",
    **dict.fromkeys(["invert_transform", "transform_tiles"], "tta"),
    **dict.fromkeys(
        [
            "CLOUD_FREE",
            "OPTICAL_CHANNELS",
            "BlockOutput",
            "accumulate",
            "finish",
            "predict_tiles",
        ],
        "blending",
    ),
    "TILE_BYTES_PER_PIXEL": "engine",
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = f"{__package__}.{_MOVED[name]}"
    warnings.warn(
        f"m3rcr_xr.inference.{name} is now {home}.{name}; import it from there",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(home), name)


def _check_inputs(ds: xr.Dataset, composite: bool) -> None:
    validate(ds)
    needed = ["cloudy", "sar"] + (["cloudmask"] if composite else [])
    missing = [name for name in needed if name not in ds.data_vars]
    if missing:
        raise SchemaError(
            f"{', '.join(missing)}: decloud needs this variable (have {list(ds.data_vars)})"
        )


def decloud(
    ds: xr.Dataset,
    model: str | None = None,
    checkpoint: Checkpoint | Sequence[Checkpoint] = None,
    *,
    config: Mapping[str, Any] | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    composite: bool = False,
    resources: Mapping[str, float] | None = None,
    precision: str = DEFAULT_PRECISION,
    tta: str | None = None,
    uncertainty: bool = False,
) -> xr.DataArray | xr.Dataset:
    """Remove clouds from a scene or a collection with one of the M3R-CR networks, lazily.

    Parameters
    ----------
    ds
        A scene or a collection with ``cloudy`` and ``sar``.
    model
        ``"dsen2_cr"``, ``"glf_cr"`` or ``"align_cr"``; None: the model of the registered
        weights, else ``"dsen2_cr"``.
    checkpoint
        The weights (published layout, bare state dict or safetensors), as a registered
        name (``"dsen2_cr-demo"``; see :func:`m3rcr_xr.weights.available`), a path, or a
        URL (``https://``, ``s3://``, ``file://``...; append ``#sha256=HEX`` to have the
        download checked), fetched into the cache and checked by SHA-256 (see
        :func:`m3rcr_xr.weights.fetch`); ``"untrained"`` for random weights. None: the
        model's default registered weights; no model has any today, so None raises
        :class:`CheckpointError` saying how to get weights. A list of them is an
        ensemble of one model family and configuration: every member runs every tile
        and their predictions are averaged.
    config
        Architecture arguments (e.g. ``{"preset": "small"}`` or ``{"n_feats": 64}``); must
        match the checkpoint. Registered weights bring their own: leave it out.
    tile
        Tile side; default the model's own (160 for GLF-CR and Align-CR), else 256.
    overlap
        Pixels shared by neighbouring tiles; default ``tile // 8``.
    batch_size
        Tiles per forward pass.
    device
        ``"auto"`` (each worker's GPU if it has one, else the CPU), ``"cpu"``, ``"cuda"``...
    composite
        Keep the cloudy input where ``cloudmask`` is False, the network's output elsewhere.
    resources
        Dask worker resources the tile tasks need, e.g. ``{"GPU": 1}`` so that they run
        only on workers that advertise a GPU. :func:`m3rcr_xr.to_zarr` keeps them; graph
        optimisation drops them (dask#7036), so compute otherwise with
        ``client.compute(out.data, optimize_graph=False)``. Not needed for safety: a
        worker runs one tile task at a time per GPU whatever its threads.
    precision
        How the forward passes run on a CUDA GPU: ``"fp32"`` (default), ``"bf16"`` or
        ``"fp16"`` (autocast), ``"auto"`` (bf16 where the GPU computes it natively, else
        fp32). float32 by default, so that the result is the CPU's up to float rounding
        (and cuDNN's TF32 convolutions where torch allows them) on any card; bf16 (8
        significant bits to float32's 24) runs on the tensor cores, for speed
        (``benchmarks/gpu_check.py`` measures both). A CPU always runs float32: a
        reduced precision with ``device="cpu"`` is refused, and CPU workers run float32
        under ``device="auto"``.
    tta
        Test-time augmentation: ``"flips"`` runs each tile also mirrored left-right,
        up-down and both, ``"d4"`` under all 8 quarter turns and mirrors (inputs
        transformed alike, outputs transformed back), and averages; None (or
        ``"none"``): once. Costs 4 or 8 forward passes a tile (per member).
    uncertainty
        Also return ``decloud_std``: the standard deviation of the predictions of each
        pixel over the members and transforms, in the units of ``cloudy``, blended across
        tile overlaps with the same weights as the mean (so as seamless and
        independent of the chunking as ``decloud``). Needs several checkpoints or a
        ``tta``. With ``composite``, 0 where the cloudy input is kept.

    Returns
    -------
    xr.DataArray or xr.Dataset
        ``decloud`` (band, y, x) (``patch`` first for a collection), float32 reflectance
        x10000, with the input's coordinates and CRS; NaN where ``cloudy`` has no data
        (all bands 0: a dark band may be 0, a footprint's edge zeroes them all), the
        nodata declared the rioxarray way (``encoding["_FillValue"]``); with
        ``uncertainty=True`` a Dataset
        of ``decloud`` and ``decloud_std`` (same dims, units and dtype). Lazy for a
        Dask-backed input (nothing is computed yet); in memory for an in-memory input.
        Attributes: the model, its configuration, checkpoints and tiling; and where
        ``ds``'s data come from one store of this library alone (:func:`m3rcr_xr.open_zarr`),
        ``input_fingerprint``: the fingerprint that store keeps, by which
        :func:`m3rcr_xr.evaluate` refuses the prediction against the target of another
        scene.

    Raises
    ------
    UsageError
        Before any work starts: ``tile`` or ``batch_size`` not an integer >= 1,
        ``overlap`` not one >= 0, ``device`` not a device, or one this process does not
        have (with a ``distributed`` client active, the workers check it instead: an
        HPC job may build the graph on a CPU-only login node for GPU workers); an
        unknown ``tta``; ``uncertainty`` with one checkpoint and no ``tta``; an empty
        list of checkpoints or one checkpoint twice.
    SchemaError, ModelConfigError, CheckpointError
        Before any work starts: missing variables, a configuration the model cannot be
        built with (naming the key) or that is not the registered weights' own, a tile
        size the model cannot take, no checkpoint and no default weights, weights that
        cannot be fetched, fail their SHA-256 or do not fit the model, an unknown
        precision (or a reduced one on the CPU), ensemble members of different model
        families or configurations.

    Examples
    --------
    >>> import m3rcr_xr
    >>> scene = m3rcr_xr.synthetic_scene((128, 128))
    >>> out = m3rcr_xr.decloud(scene, checkpoint="dsen2_cr-demo")
    >>> out.dims, out.attrs["checkpoint"]
    (('band', 'y', 'x'), 'dsen2_cr-demo')
    >>> small = m3rcr_xr.synthetic_scene((64, 64))
    >>> both = m3rcr_xr.decloud(small, checkpoint="dsen2_cr-demo", tta="flips",
    ...                         uncertainty=True)
    >>> list(both.data_vars)
    ['decloud', 'decloud_std']
    """
    tile, overlap, batch_size, device = check_tile_arguments(tile, overlap, batch_size, device)
    tta = check_tta(tta)
    items = resource_items(resources)
    composite = check_flag("composite", composite)
    uncertainty = check_flag("uncertainty", uncertainty)
    checkpoints = ensemble_checkpoints(checkpoint)
    check_spread(uncertainty, len(checkpoints), tta)
    _check_inputs(ds, composite)
    members = tuple(ModelRef.create(model, c, config, device, precision) for c in checkpoints)
    spec = ensemble_spec(members)
    check_task(spec, "cloud_removal", "decloud")
    if composite:
        warn_if_estimated(ds["cloudmask"], "decloud(composite=True)")
    job = TileJob(
        plan=plan_tiles(spec, tile, overlap, ds.sizes["y"], ds.sizes["x"]),
        members=members,
        batch_size=batch_size,
        tta=tta,
        spread=uncertainty,
        resources=items,
    )
    eager = ds["cloudy"].chunks is None
    inputs, cloudy = model_inputs(ds).chunk(), ds["cloudy"].chunk()  # no-op when lazy
    decloud_array = tile_collection if is_collection(ds) else tile_scene
    data = decloud_array(inputs.data, cloudy.data, job)
    made_from = store_fingerprint(sources(ds))
    result: xr.DataArray | xr.Dataset
    result = _variable(ds, data[..., : job.channels, :, :], job, "decloud", composite, made_from)
    if uncertainty:
        spread = data[..., job.channels :, :, :]
        std = _variable(ds, spread, job, "decloud_std", composite, made_from)
        result = xr.Dataset({"decloud": result, "decloud_std": std})
    return result.compute() if eager else result  # in memory in, in memory out


_LONG_NAMES = {
    "decloud": "cloud-free estimate",
    "decloud_std": "standard deviation of the estimate over ensemble members and TTA transforms",
}


def _variable(
    ds: xr.Dataset,
    data: da.Array,
    job: TileJob,
    name: str,
    composite: bool,
    made_from: str | None,
) -> xr.DataArray:
    """``data`` as the variable ``name`` on the grid of ``cloudy``, with its attributes:
    ``made_from``, the fingerprint of the store ``ds`` came from (None: not one store
    of this library), as :data:`~m3rcr_xr.identity.INPUT_FINGERPRINT`.

    With ``composite``, where the cloudy input is kept the estimate is that input and
    its spread 0.
    """
    template = ds["cloudy"]
    result = xr.DataArray(data, dims=template.dims, coords=template.coords, name=name)
    # the masks on the output's blocks (the tile groups): on the input's chunks, the
    # where would cut each block at every chunk edge into slivers
    if composite:
        kept: xr.DataArray | np.float32 = np.float32(0)
        if name == "decloud":
            kept = rechunk_like(template, result).astype(np.float32)
        result = result.where(rechunk_like(ds["cloudmask"], result), kept)
    # optical nodata in (all bands 0) is NaN out; the network saw it filled, as ever
    result = result.where(rechunk_like((template != OPTICAL_NODATA).any("band"), result))
    member = job.members[0]
    result.attrs = {
        "long_name": _LONG_NAMES[name],
        "units": "reflectance x10000",
        "model": member.name,
        "config": repr(dict(member.config)),
        "tile": job.plan.tile,
        "overlap": job.plan.overlap,
        "composite": int(composite),
        "members": len(job.members),
        "tta": job.tta or "none",
        "checkpoint": ", ".join(ref.weights for ref in job.members),
        "checkpoint_sha256": ", ".join(ref.sha256 or "" for ref in job.members),
    }
    if made_from is not None:  # evaluate refuses it against the target of another scene
        result.attrs[INPUT_FINGERPRINT] = made_from
    result = result.rio.write_nodata(np.nan, encoded=True)  # _FillValue in encoding
    result.encoding["source"] = sources(ds)  # to_zarr never writes over its own input
    return result
