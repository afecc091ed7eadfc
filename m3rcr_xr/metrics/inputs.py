"""Input resolution and grid checks: names to DataArrays on one grid, with one chunking.

:func:`prepare_inputs` turns the ``pred``, ``target``, ``landcover`` and ``cloudmask``
arguments of :func:`~m3rcr_xr.metrics.evaluate` (variable names or DataArrays) into
DataArrays with dims in the engine's order, checked to lie on the target's grid (dims,
sizes, coordinates, CRS, bands) and on the same spatial chunks, and the prediction to
be made from the target's scene (:func:`check_paired`).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..exceptions import SchemaError, UsageError, argument
from ..href import redacted
from ..identity import INPUT_FINGERPRINT, own_sources, store_fingerprint
from .dispatch import is_lazy

#: the dims of a pixel grid
PIXEL_DIMS = ("y", "x")


def require_dims(array: xr.DataArray, dims: Sequence[str], role: str) -> None:
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
        raise UsageError(f"{role}: {item!r} is a variable name but no dataset was given")
    if item not in ds.data_vars:
        raise SchemaError(
            f"{argument(role, item)}: variable {item!r} is missing from the dataset "
            f"(have {sorted(map(str, ds.data_vars))}){hint}"
        )
    return ds[item]


def _crs(array: xr.DataArray) -> Any:
    try:
        return array.rio.crs
    except Exception:  # a malformed grid mapping is not ours to diagnose here
        return None


def _same_values(a: xr.DataArray, b: xr.DataArray) -> bool | None:
    """Whether two coordinates hold the same values; ``None`` when only computing tells.

    As xarray's ``lazy_array_equiv``, nothing computes: coordinates of other shapes
    differ, dask-backed ones (a non-index coordinate of a dataset chunked along its dim)
    with the same dask name are the same graph, hence equal; a dask-backed one against
    another graph or an in-memory array is unknown. Index coordinates (``patch``, and
    ``x``, ``y`` of a scene) are always in memory, so they are always compared.
    """
    if a.shape != b.shape:
        return False
    if is_lazy(a, b):
        return True if is_lazy(a) and is_lazy(b) and a.data.name == b.data.name else None
    return _equal(np.asarray(a.values), np.asarray(b.values))


def _equal(va: np.ndarray, vb: np.ndarray) -> bool:
    if np.issubdtype(va.dtype, np.number) and np.issubdtype(vb.dtype, np.number):
        return bool(np.allclose(va, vb, rtol=0, atol=1e-6, equal_nan=True))
    return bool(np.array_equal(va, vb))


#: a coordinate not compared while the graph is built: (name, the array's, the target's)
Unchecked = list[tuple[str, xr.DataArray, xr.DataArray]]


def _checked_when_computed(array: xr.DataArray, role: str, unchecked: Unchecked) -> xr.DataArray:
    """``array`` whose blocks, when computed, compare the ``unchecked`` coordinates (dask
    arrays: comparing them while the graph is built would compute) over their extent,
    and raise :class:`SchemaError` where they differ, in the same pass as the sums."""
    if not unchecked:
        return array
    letters = {dim: chr(ord("a") + i) for i, dim in enumerate(array.dims)}

    def index(item: xr.DataArray) -> str:
        return "".join(letters[dim] for dim in item.dims)

    args: list[Any] = [da.asarray(array.data), index(array)]
    for _, mine, theirs in unchecked:
        args += [da.asarray(mine.data), index(mine), da.asarray(theirs.data), index(theirs)]
    names = [name for name, _, _ in unchecked]
    check = functools.partial(_same_or_raise, role=role, names=names)
    data = da.blockwise(check, index(array), *args, dtype=array.dtype, align_arrays=True)
    return array.copy(data=data)


def _same_or_raise(block: np.ndarray, *coordinates: np.ndarray, role: str, names: list[str]):
    for name, mine, theirs in zip(names, coordinates[::2], coordinates[1::2], strict=True):
        if not _equal(np.asarray(mine), np.asarray(theirs)):
            raise SchemaError(
                f"{role}: grid does not match the target: coordinate {name!r} differs"
            )
    return block


def check_grid(
    array: xr.DataArray, role: str, ref: xr.DataArray, allowed: set[str]
) -> xr.DataArray:
    """``array`` must lie on the grid of ``ref``: dims, sizes, coordinates and CRS. The
    coordinates that are dask arrays are compared when the result is computed
    (:func:`_checked_when_computed`): ``array`` is returned with that check in it."""
    grid = [d for d in ref.dims if d in ("patch", *PIXEL_DIMS)]
    require_dims(array, grid, role)
    extra = [d for d in array.dims if d not in allowed | set(grid)]
    if extra:
        raise SchemaError(f"{role}: unexpected dims {extra} (dims {array.dims})")
    for dim in grid:
        if array.sizes[dim] != ref.sizes[dim]:
            raise SchemaError(
                f"{role}: grid does not match the target: {dim} has "
                f"{array.sizes[dim]} pixels, the target {ref.sizes[dim]}"
            )
    unchecked: Unchecked = []
    for name in sorted(set(array.coords) & set(ref.coords), key=str):
        dims = set(array[name].dims)
        if not dims or not dims <= set(grid):
            continue
        same = _same_values(array[name], ref[name])
        if same is False:
            raise SchemaError(
                f"{role}: grid does not match the target: coordinate {name!r} differs"
            )
        if same is None:  # comparing now would compute: building a graph must not
            unchecked.append((str(name), array[name], ref[name]))
    crs, ref_crs = _crs(array), _crs(ref)
    if crs is not None and ref_crs is not None and crs != ref_crs:
        raise SchemaError(f"{role}: CRS {crs} does not match the target's CRS {ref_crs}")
    return _checked_when_computed(array, role, unchecked)


def check_paired(pred: xr.DataArray, target: xr.DataArray, name: Any) -> None:
    """Refuse a prediction made from another input than its target: stores merged on
    their grid alone (``m3rcr evaluate sceneB.zarr decloudA.zarr``) pair whatever scenes
    they hold.

    The prediction's :data:`~m3rcr_xr.identity.INPUT_FINGERPRINT` (the fingerprint of
    the store :func:`m3rcr_xr.decloud` read) is compared with the target's own (a
    prediction as target), else with the fingerprint of the one store of this library
    the target variable comes from (:func:`~m3rcr_xr.identity.store_fingerprint`: its
    root ``zarr.json`` read, nothing else). No check where either is unknown: a
    prediction without the attribute (of files, of several stores, of a copy that
    other software wrote), a target of memory, files or several stores; nor where both
    come from the one store (written together, paired by whoever wrote them). A scene
    re-ingested from the same files keeps its fingerprint, so its prediction passes.

    Raises
    ------
    SchemaError
        Naming the prediction ``name`` and the target's store.
    """
    made_from = pred.attrs.get(INPUT_FINGERPRINT)
    store = own_sources(target)
    if not made_from or store == own_sources(pred):
        return
    expected = target.attrs.get(INPUT_FINGERPRINT) or store_fingerprint(store)
    if expected is not None and expected != made_from:
        where = ", ".join(map(redacted, store)) or "memory"
        raise SchemaError(
            f"{argument('pred', name)}: the prediction was made from another input than "
            f"the target {target.name!r} of {where} (its {INPUT_FINGERPRINT} differs): "
            "evaluate it against the target of the scene it was made from"
        )


def _match_bands(pred: xr.DataArray, target: xr.DataArray, role: str = "pred") -> xr.DataArray:
    """``pred`` (the input named ``role``) with its bands in the target's order."""
    if pred.sizes["band"] != target.sizes["band"]:
        raise SchemaError(
            f"{role}: {pred.sizes['band']} bands, the target has {target.sizes['band']}"
        )
    if "band" in pred.coords and "band" in target.coords:
        labels, wanted = list(pred["band"].values), list(target["band"].values)
        if sorted(map(str, labels)) != sorted(map(str, wanted)):
            raise SchemaError(f"{role}: bands {labels} do not match the target's {wanted}")
        if labels != wanted:
            pred = pred.sel(band=target["band"].values)
    return pred


def _unify_chunks(arrays: dict[str, xr.DataArray | None]) -> dict[str, xr.DataArray | None]:
    """All inputs on the spatial chunks of the first dask one, ``band`` in one chunk."""
    lazy = [a for a in arrays.values() if a is not None and is_lazy(a)]
    if not lazy:
        return arrays
    chunks = {d: lazy[0].chunksizes[d] for d in lazy[0].dims if d != "band"}
    out: dict[str, xr.DataArray | None] = {}
    for key, array in arrays.items():
        if array is not None:
            spec: dict[Hashable, Any] = {d: chunks[d] for d in array.dims if d in chunks}
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
    if isinstance(item, str) and not needed:
        if ds is None and item == role:  # the default name, with no dataset: none given
            return None
        if ds is not None and item not in ds.data_vars:
            return None
    return _resolve(ds, item, role, hint)


def _optical(array: xr.DataArray, role: str, target: xr.DataArray) -> xr.DataArray:
    """``array`` (the optical input named ``role``) checked on the target's grid and bands,
    with its dims and bands in the target's order."""
    require_dims(array, ("band",), role)
    array = check_grid(array, role, target, {"band"})
    return _match_bands(array.transpose(*target.dims), target, role)


def prepare_inputs(
    ds: xr.Dataset | None,
    pred: Any,
    target: Any,
    landcover: Any,
    cloudmask: Any,
    *,
    need_cloudmask: bool,
    per_patch: bool,
    cloudy: Any = None,
    landcover_required: bool = False,
) -> dict[str, xr.DataArray | None]:
    """Resolve names to DataArrays, check their grids, order dims and unify chunks.

    ``cloudy``, optional (the semantic evaluation classifies it too), is checked as
    ``pred`` is; a name missing from ``ds`` leaves it out. A missing ``landcover``, or a
    missing ``cloudmask`` that is needed, is refused with a hint on going without it,
    naming the argument as the caller gives it (:func:`~m3rcr_xr.exceptions.argument`);
    none for the land cover where it is ``landcover_required`` (the semantic
    evaluation). Grids are checked before the chunks are unified, on the coordinates as
    given: chunking turns a non-index coordinate into a dask array, which is compared
    when the result is computed (a :class:`SchemaError` then), never while the graph is
    built.

    Raises
    ------
    SchemaError
        A missing variable (the cloud mask too, given as None, where ``need_cloudmask``),
        a prediction made from another input than the target (:func:`check_paired`),
        mismatched grids (dims, sizes, coordinates, CRS, bands), or a per-patch protocol
        without a ``patch`` dim.
    """
    target_da = _resolve(ds, target, "target")
    pred_da = _resolve(ds, pred, "pred")
    require_dims(target_da, ("band", *PIXEL_DIMS), "target")
    check_paired(pred_da, target_da, pred if isinstance(pred, str) else pred_da.name)
    if per_patch and "patch" not in target_da.dims:
        raise SchemaError("protocol 'per_patch' needs a collection (a 'patch' dim)")
    order = [d for d in ("patch", "band", *PIXEL_DIMS) if d in target_da.dims]
    target_da = target_da.transpose(*order)
    layers: dict[str, xr.DataArray | None] = {
        "pred": _optical(pred_da, "pred", target_da),
        "target": target_da,
    }
    without_classes = f" (pass {argument('landcover', None)} to evaluate without classes)"
    hints = {
        "landcover": "" if landcover_required else without_classes,
        "cloudmask": f" (pass {argument('strata', ('all',))} to evaluate without a cloud mask)",
    }
    for role, item, needed in (
        ("landcover", landcover, True),
        ("cloudmask", cloudmask, need_cloudmask),
    ):
        layer = _optional_layer(ds, item, role, needed, hints[role])
        if layer is not None:
            layer = check_grid(layer, role, target_da, set())
            layer = layer.transpose(*[d for d in order if d != "band"])
        layers[role] = layer
    if need_cloudmask and layers["cloudmask"] is None:  # cloudmask=None given
        raise SchemaError(
            f"cloudmask: the strata other than 'all' need a cloud mask{hints['cloudmask']}"
        )
    cloudy_da = _optional_layer(ds, cloudy, "cloudy", False, "")
    layers["cloudy"] = None if cloudy_da is None else _optical(cloudy_da, "cloudy", target_da)
    return _unify_chunks(layers)
