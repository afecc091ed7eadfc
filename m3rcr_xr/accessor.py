"""The ``.m3rcr`` accessor: thin methods over the library's pure functions.

Examples
--------
>>> import m3rcr_xr
>>> scene = m3rcr_xr.synthetic_scene((128, 128))
>>> scene.m3rcr.validate() is scene
True
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from . import inference, schema, store


@xr.register_dataset_accessor("m3rcr")
class M3RCRAccessor:
    """Scene and collection methods; each one calls a function of the same name."""

    def __init__(self, obj: xr.Dataset) -> None:
        self._obj = obj

    @property
    def is_collection(self) -> bool:
        """True for a collection (a ``patch`` dim), False for a scene."""
        return schema.is_collection(self._obj)

    def validate(self) -> xr.Dataset:
        """See :func:`m3rcr_xr.validate`."""
        return schema.validate(self._obj)

    def to_zarr(self, store_path: Any, **kwargs: Any) -> None:
        """See :func:`m3rcr_xr.to_zarr`."""
        store.to_zarr(self._obj, store_path, **kwargs)

    def decloud(
        self, model: str = "dsen2_cr", checkpoint: Any = None, **kwargs: Any
    ) -> xr.DataArray:
        """See :func:`m3rcr_xr.decloud`."""
        return inference.decloud(self._obj, model, checkpoint, **kwargs)

    def evaluate(self, pred: Any = "decloud", target: Any = "cloudfree", **kwargs: Any) -> Any:
        """See :func:`m3rcr_xr.metrics.evaluate`."""
        from . import metrics

        return metrics.evaluate(self._obj, pred, target, **kwargs)
