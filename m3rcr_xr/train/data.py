"""Crops of Zarr stores as PyTorch datasets: :class:`CropDataset` and the run's sampler.

:class:`CropDataset` serves crops of a scene or collection store (or of an xarray
Dataset): random crops for training, the published centre crop for validation (rows and
columns ``(H - T) // 2 ..`` of each patch: 70..229 for a 160 crop of a 300x300 patch).
It reads only the chunks a crop touches, opens the store lazily in each process (so it
pickles and works with ``DataLoader(num_workers > 0)``) and returns the tensors the
networks take, normalised by :mod:`m3rcr_xr.normalize` exactly as decloud does.

Every random choice of the data is a pure function of the seed and the sample number
(epoch permutations of the patches, crop offsets), so the data of step ``n`` is known
without replaying steps ``1 .. n-1``: the sampler's state is one counter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..classify import no_data
from ..exceptions import SchemaError, UsageError, argument
from ..href import redacted
from ..identity import data_fingerprint, source_identities, sources
from ..landcover import IGNORE_INDEX, class_names, worldcover_labels
from ..normalize import model_inputs, normalize_optical
from ..schema import is_collection
from ..store import open_zarr

#: variables a crop reads; cloudmask is optional
CROP_VARS = ("cloudy", "cloudfree", "sar", "cloudmask")
#: what a crop for a classifier reads (``level`` set); cloudmask is optional
LABEL_VARS = ("cloudfree", "landcover", "cloudmask")

Source = str | os.PathLike[str] | xr.Dataset
#: how the fingerprint of an xarray Dataset (:meth:`CropDataset.identity`) begins;
#: checkpoints of earlier versions identified one by its sizes, variables and patch ids
DATASET_PREFIX = "dataset:"
#: how the fingerprint of a store path (:meth:`CropDataset.identity`) begins; checkpoints
#: of earlier versions kept its ``m3rcr_fingerprint`` attribute alone (no listing)
STORE_PREFIX = "store:"


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where crops can come from: ``n_patches`` patches of ``height x width`` (a scene
    counts as a grid of ``tile``-sized windows)."""

    collection: bool
    n_patches: int
    height: int
    width: int


def _synchronous() -> contextlib.AbstractContextManager:
    """Dask computes in the calling thread: a DataLoader worker forked from a process
    that used dask's threaded scheduler inherits its thread pool without the threads,
    and would wait on it for ever."""
    return dask.config.set(scheduler="synchronous")


@functools.lru_cache(maxsize=8)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, 0, epoch]).permutation(n)


class CropDataset(Dataset):
    """Crops of a scene or collection store as normalised tensors: a PyTorch ``Dataset``.

    The entry point for training any network on these stores (as xbatcher's loaders are
    for xarray): wrap it in a ``torch.utils.data.DataLoader``. Item ``i`` is a dict of
    float32 tensors, ``cloudy`` (4, T, T) and ``sar`` (2, T, T) as the networks take them
    (:func:`m3rcr_xr.normalize.model_inputs`), ``target`` (4, T, T) the cloud-free image
    in [0, 1], ``cloudmask`` (T, T) in {0, 1}, ``valid`` (T, T): 1 where the pixel has
    optical data, 0 on the data model's nodata (every band of ``cloudy`` 0, or a band of
    ``cloudfree`` 0 or not finite; the training losses leave those pixels out), and
    ``window``: (patch or -1 for a scene, first row, first column).

    With ``level`` set (crops for a land-cover classifier), item ``i`` holds ``target``
    (the cloud-free image, the classifier's input), ``landcover`` (T, T) the WorldCover
    codes (uint8), ``labels`` (T, T) their class indices at ``level``
    (:func:`m3rcr_xr.landcover.worldcover_labels`, 255 where ignored, and where the
    cloud-free input has no data; int64, as ``cross_entropy`` takes them),
    ``cloudmask``, ``valid`` and ``window``; the source then needs
    ``cloudfree`` and ``landcover`` only.

    Parameters
    ----------
    source
        A Zarr store written by :func:`m3rcr_xr.to_zarr` (path or fsspec URL), opened
        lazily in each process that reads it, or an xarray Dataset (lazy or in memory).
        It needs ``cloudy``, ``cloudfree`` and ``sar``; ``cloudmask`` is optional (zeros
        without it).
    tile
        Crop side in pixels.
    mode
        ``"random"``: item ``n`` is sample number ``n`` of an endless stream: epoch
        ``n // len(self)`` visits the patches in a seeded random order, each at a random
        offset (for a scene: anywhere in it); any ``n >= 0`` is valid. ``"center"``: item
        ``i`` is the centre crop of patch ``i`` (offset ``(H - tile) // 2``; for a scene,
        window ``i`` of a grid of ``tile``-sized windows).
    seed
        Seed of the random crops.
    level
        None: crops for a cloud-removal network. 1 or 2: crops for a land-cover
        classifier at that WorldCover level.

    Examples
    --------
    >>> import m3rcr_xr
    >>> from torch.utils.data import DataLoader
    >>> data = CropDataset(m3rcr_xr.synthetic_collection(2, 300), 160, mode="center")
    >>> data.window(0)
    (0, 70, 70)
    >>> sorted(data[0])
    ['cloudmask', 'cloudy', 'sar', 'target', 'valid', 'window']
    >>> batch = next(iter(DataLoader(data, batch_size=2)))
    >>> tuple(batch["cloudy"].shape), tuple(batch["sar"].shape)
    ((2, 4, 160, 160), (2, 2, 160, 160))

    A store path works the same way (each DataLoader worker opens it itself):

    >>> train = CropDataset("train.zarr", 128, seed=7)  # doctest: +SKIP

    Crops for a classifier:

    >>> labelled = CropDataset(m3rcr_xr.synthetic_collection(1, 64), 32, mode="center", level=1)
    >>> sorted(labelled[0]), labelled[0]["labels"].dtype
    (['cloudmask', 'labels', 'landcover', 'target', 'valid', 'window'], torch.int64)
    """

    def __init__(
        self,
        source: Source,
        tile: int,
        *,
        mode: str = "random",
        seed: int = 0,
        level: int | None = None,
    ) -> None:
        if mode == "centre":  # the British spelling of earlier releases
            warnings.warn("mode='centre' is deprecated; use 'center'", DeprecationWarning, 2)
            mode = "center"
        if mode not in ("random", "center"):
            raise UsageError(f"{argument('mode', mode)}: must be 'random' or 'center'")
        if int(tile) < 1 or int(seed) < 0:
            raise UsageError(f"need tile >= 1 and seed >= 0, got tile={tile}, seed={seed}")
        if level is not None:
            class_names(level)  # raises UsageError for a level other than 1 or 2
        self.tile, self.mode, self.seed, self.level = int(tile), mode, int(seed), level
        self._path = None if isinstance(source, xr.Dataset) else str(source)
        self._ds: xr.Dataset | None = source if isinstance(source, xr.Dataset) else None
        self._pid = os.getpid()
        self.layout = self._check(self._dataset())

    # ------------------------------------------------------------------ opening
    def _dataset(self) -> xr.Dataset:
        """The data, opened in this process on first use (never shared across a fork)."""
        if self._path is not None and (self._ds is None or self._pid != os.getpid()):
            with _synchronous():
                self._ds = open_zarr(self._path)
            self._pid = os.getpid()
        assert self._ds is not None
        return self._ds

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._path is not None:
            state["_ds"] = None  # each process opens the store itself
        return state

    def _check(self, ds: xr.Dataset) -> _Layout:
        needed = CROP_VARS[:3] if self.level is None else LABEL_VARS[:2]
        missing = [v for v in needed if v not in ds.data_vars]
        if missing:
            raise SchemaError(
                f"{self.label}: training {self._purpose} needs {', '.join(missing)} "
                f"(have {', '.join(map(str, ds.data_vars))})"
            )
        height, width = int(ds.sizes["y"]), int(ds.sizes["x"])
        if height < self.tile or width < self.tile:
            raise SchemaError(
                f"{self.label}: patches of {height}x{width} pixels are "
                f"smaller than the crop of {self.tile}"
            )
        if is_collection(ds):
            return _Layout(True, int(ds.sizes["patch"]), height, width)
        return _Layout(False, (height // self.tile) * (width // self.tile), height, width)

    @property
    def _purpose(self) -> str:
        return "a network" if self.level is None else "a classifier"

    @property
    def variables(self) -> tuple[str, ...]:
        """The variables a crop reads."""
        return CROP_VARS if self.level is None else LABEL_VARS

    @property
    def label(self) -> str:
        """The store's path, or "dataset" for an xarray Dataset (for messages)."""
        return self._path or "dataset"

    def identity(self) -> dict[str, Any]:
        """What identifies the data, for a checkpoint: ``source`` (:attr:`label`),
        ``fingerprint`` and ``unversioned``.

        For a store path, the ``fingerprint`` is :data:`STORE_PREFIX` and the store's
        identity of :func:`m3rcr_xr.identity.source_identities` (its ``m3rcr_fingerprint``,
        the data it was written from, and a digest of its listing: a chunk rewritten in
        place changes it; one listing, no chunk read). For an xarray Dataset, it is
        :data:`DATASET_PREFIX` and :func:`m3rcr_xr.identity.data_fingerprint` of it (the
        Dask tokens of its variables, a hash of their values for arrays in memory, and
        the identity of each source it was read from). ``unversioned`` lists the sources
        that report no version (an HTTP file without ``ETag`` nor ``Last-Modified``),
        whose replacement by a file of the same size cannot be seen: a run on such data
        cannot be resumed. Nothing is read but metadata and listings.

        Examples
        --------
        >>> import m3rcr_xr
        >>> data = CropDataset(m3rcr_xr.synthetic_collection(2, 64), 32, mode="center")
        >>> identity = data.identity()
        >>> identity["source"], identity["fingerprint"][:8], identity["unversioned"]
        ('dataset', 'dataset:', [])
        """
        if self._path is not None:
            identities = source_identities([self._path])
            fingerprint = STORE_PREFIX + identities[self._path][0]
        else:
            ds = self._dataset()
            identities = source_identities(sources(ds))
            fingerprint = DATASET_PREFIX + data_fingerprint(ds, identities=identities)
        unversioned = [redacted(src) for src, (_, versioned) in identities.items() if not versioned]
        return {"source": self.label, "fingerprint": fingerprint, "unversioned": unversioned}

    @property
    def has_cloudmask(self) -> bool:
        """Whether the data carries a cloud mask (else crops get an all-zero mask)."""
        return "cloudmask" in self._dataset().data_vars

    # ------------------------------------------------------------------ windows
    def __len__(self) -> int:
        """Patches (or scene windows): one epoch of random crops, or the centre crops."""
        return self.layout.n_patches

    def window(self, index: int) -> tuple[int | None, int, int]:
        """(patch or None for a scene, first row, first column) of item ``index``."""
        index = int(index)
        n, tile = self.layout.n_patches, self.tile
        if index < 0 or (self.mode == "center" and index >= n):
            raise IndexError(f"item {index} out of range for {self.mode} crops of {n}")
        if self.mode == "center":
            return self._centre_window(index)
        rng = np.random.default_rng([self.seed, 1, index])
        y0 = int(rng.integers(0, self.layout.height - tile + 1))
        x0 = int(rng.integers(0, self.layout.width - tile + 1))
        if not self.layout.collection:
            return None, y0, x0
        epoch, position = divmod(index, n)
        return int(_permutation(self.seed, epoch, n)[position]), y0, x0

    def _centre_window(self, index: int) -> tuple[int | None, int, int]:
        tile, layout = self.tile, self.layout
        if layout.collection:
            return index, (layout.height - tile) // 2, (layout.width - tile) // 2
        row, col = divmod(index, layout.width // tile)
        return None, row * tile, col * tile

    # ------------------------------------------------------------------ reading
    def read(self, index: int) -> xr.Dataset:
        """The crop of item ``index`` as an in-memory xarray Dataset (raw units)."""
        patch, y0, x0 = self.window(index)
        ds = self._dataset()
        names = [v for v in self.variables if v in ds.data_vars]
        where: dict[str, Any] = {"y": slice(y0, y0 + self.tile), "x": slice(x0, x0 + self.tile)}
        if patch is not None:
            where["patch"] = patch
        with _synchronous():
            return ds[names].isel(where).compute()

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        crop = self.read(index)
        target = normalize_optical(crop["cloudfree"].values.astype(np.float32))
        if "cloudmask" in crop:
            mask = crop["cloudmask"].values.astype(np.float32)
        else:
            mask = np.zeros((self.tile, self.tile), dtype=np.float32)
        patch, y0, x0 = self.window(index)
        valid = _valid(crop)
        item = {
            "target": torch.from_numpy(target),
            "cloudmask": torch.from_numpy(mask),
            "valid": torch.from_numpy(valid.astype(np.float32)),
            "window": torch.tensor([-1 if patch is None else patch, y0, x0]),
        }
        if self.level is not None:
            codes = crop["landcover"].values.astype(np.uint8)
            labels = worldcover_labels(codes, self.level).astype(np.int64)
            labels[~valid] = IGNORE_INDEX  # nothing to classify there
            return {
                **item,
                "landcover": torch.from_numpy(codes),
                "labels": torch.from_numpy(labels),
            }
        inputs = model_inputs(crop).values
        n_optical = crop.sizes["band"]
        return {
            "cloudy": torch.from_numpy(np.ascontiguousarray(inputs[:n_optical])),
            "sar": torch.from_numpy(np.ascontiguousarray(inputs[n_optical:])),
            **item,
        }


def _valid(crop: xr.Dataset) -> np.ndarray:
    """(y, x) True where a crop has optical data: not every band of ``cloudy`` 0 (when
    read), no band of ``cloudfree`` 0 or not finite (the data model's nodata)."""
    valid = ~no_data(crop["cloudfree"].values)
    if "cloudy" in crop:
        valid &= (crop["cloudy"].values != 0).any(axis=0)
    return valid


def step_tensors(
    batch: Mapping[str, Tensor], device: str = "cpu"
) -> tuple[tuple[Tensor, ...], Tensor, Tensor, Tensor]:
    """(the network's inputs, what its loss compares with, its optical input, the cloud
    mask) of a batch, on ``device``: ``(cloudy, sar)`` and ``target`` for cloud removal;
    ``(target,)`` (the cloud-free image) and ``labels`` for a classifier."""
    inputs: tuple[str, ...]
    if "labels" in batch:
        inputs, truth, optical = ("target",), "labels", "target"
    else:
        inputs, truth, optical = ("cloudy", "sar"), "target", "cloudy"

    def move(key: str) -> Tensor:
        return batch[key].to(device, non_blocking=True)

    return tuple(map(move, inputs)), move(truth), move(optical), move("cloudmask")


def balanced_class_weights(data: CropDataset) -> Tensor:
    """Class weights ``n / (n_classes * n_k)`` over the labelled pixels of all of
    ``data``'s source, as the loss sees them (none where the cloud-free input has no
    data), scikit-learn's ``class_weight="balanced"``; 1 for a class with no pixel (it
    adds nothing to the loss anyway). The labels are counted chunk by chunk."""
    if data.level is None:
        raise UsageError("class weights are for a classifier's crops (level set)")
    ds = data._dataset()
    labels = worldcover_labels(ds["landcover"].data, data.level)
    labels = np.where(no_data(ds["cloudfree"].data), np.uint8(IGNORE_INDEX), labels)
    with _synchronous():  # np.* dispatch to dask for a lazy source
        counts = np.asarray(np.bincount(np.ravel(labels), minlength=256))
    n_classes = len(class_names(data.level))
    counts = counts[:n_classes].astype(np.float64)
    weights = np.divide(counts.sum(), n_classes * counts, out=np.ones(n_classes), where=counts > 0)
    return torch.from_numpy(weights.astype(np.float32))


class CountingSampler(Sampler[int]):
    """Sample numbers ``start, start + 1, ...`` without end: the data order of a run,
    whose whole state is ``start``."""

    def __init__(self, start: int = 0) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        index = self.start
        while True:
            yield index
            index += 1


def loader(
    data: Dataset,
    batch_size: int,
    num_workers: int,
    sampler: Sampler | None = None,
    pin: bool = False,
) -> DataLoader:
    """A DataLoader of ``data`` in order (or in ``sampler``'s), ``batch_size`` at a time."""
    # an own generator: creating the loader never draws from the global torch RNG
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin,
        generator=torch.Generator(),
    )
