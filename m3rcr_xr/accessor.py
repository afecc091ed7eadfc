"""The ``.m3rcr`` accessor: thin methods over the library's public functions.

One class, registered on :class:`xarray.Dataset` and :class:`xarray.DataArray` (as
odc-geo's ``.odc``). Each method is the function of the same name with the object as its
first argument: same parameters, same defaults, same docstring, taken from the function
itself so that the two cannot drift apart. Methods that need a scene or a collection
(every one but :attr:`M3RCRAccessor.is_collection`, :meth:`M3RCRAccessor.to_cog`, which
writes either, and ``classify``, which classifies the optical bands of a DataArray)
refuse a DataArray, and ``classify`` a Dataset.

Examples
--------
>>> import m3rcr_xr
>>> scene = m3rcr_xr.synthetic_scene((128, 128))
>>> scene.m3rcr.validate() is scene
True
>>> scene["cloudy"].m3rcr.is_collection
False
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import xarray as xr

from . import classify, cog, inference, metrics, schema, store
from .exceptions import UsageError

P = ParamSpec("P")
R = TypeVar("R")


def _dataset_method(
    func: Callable[Concatenate[xr.Dataset, P], R],
) -> Callable[Concatenate[M3RCRAccessor, P], R]:
    """``func`` as a method that passes the accessor's Dataset as the first argument.

    ``functools.wraps`` keeps the docstring and, through ``__wrapped__``, the signature:
    ``help(ds.m3rcr.decloud)`` shows the parameters of :func:`m3rcr_xr.decloud`.
    """

    @functools.wraps(func)
    def method(self: M3RCRAccessor, *args: P.args, **kwargs: P.kwargs) -> R:
        return func(self._dataset(func.__name__), *args, **kwargs)

    return method


def _dataarray_method(
    func: Callable[Concatenate[xr.DataArray, P], R],
) -> Callable[Concatenate[M3RCRAccessor, P], R]:
    """``func`` as a method that passes the accessor's DataArray as the first argument."""

    @functools.wraps(func)
    def method(self: M3RCRAccessor, *args: P.args, **kwargs: P.kwargs) -> R:
        if not isinstance(self._obj, xr.DataArray):
            raise UsageError(
                f".m3rcr.{func.__name__}() needs a DataArray (optical bands), "
                f"not a {type(self._obj).__name__}: try ds['cloudfree'].m3rcr.{func.__name__}()"
            )
        return func(self._obj, *args, **kwargs)

    return method


def _method(
    func: Callable[Concatenate[xr.Dataset | xr.DataArray, P], R],
) -> Callable[Concatenate[M3RCRAccessor, P], R]:
    """``func`` as a method that passes the accessor's object, Dataset or DataArray."""

    @functools.wraps(func)
    def method(self: M3RCRAccessor, *args: P.args, **kwargs: P.kwargs) -> R:
        return func(self._obj, *args, **kwargs)

    return method


@xr.register_dataarray_accessor("m3rcr")
@xr.register_dataset_accessor("m3rcr")
class M3RCRAccessor:
    """Scene and collection methods; each one calls the public function of its name."""

    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj

    def _dataset(self, method: str) -> xr.Dataset:
        if not isinstance(self._obj, xr.Dataset):
            raise UsageError(
                f".m3rcr.{method}() needs a Dataset (a scene or a collection), "
                f"not a {type(self._obj).__name__}"
            )
        return self._obj

    @property
    def is_collection(self) -> bool:
        """True for a collection (a ``patch`` dim), False for a scene."""
        return schema.is_collection(self._obj)

    validate = _dataset_method(schema.validate)
    to_zarr = _dataset_method(store.to_zarr)
    decloud = _dataset_method(inference.decloud)
    evaluate = _dataset_method(metrics.evaluate)
    evaluate_semantic = _dataset_method(metrics.evaluate_semantic)
    classify = _dataarray_method(classify.classify)
    to_cog = _method(cog.to_cog)
