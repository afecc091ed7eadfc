"""Train the M3R-CR networks on Zarr stores, with the published recipe, resumably; and
the land-cover classifier (``task="landcover"``: ``cloudfree`` to the WorldCover classes
of ``landcover``) with the same machinery.

One idea per module:

- :mod:`.data`: :class:`CropDataset`, crops of a store as a PyTorch ``Dataset`` (also
  the entry point for training a network of one's own), and the run's sampler;
- :mod:`.recipe`: the published recipe (losses, Adam, StepLR, autocast dtype);
- :mod:`.settings`: :class:`TrainSettings` as given, :class:`ResolvedSettings` with every
  default filled in;
- :mod:`.state`: random states and checkpoints (written, read, exported);
- :mod:`.validation`: the benchmark's metrics on centre crops, from the metric engine's
  sums;
- :mod:`.loop`: one optimiser step, the loop, :func:`train`.

Examples
--------
>>> import m3rcr_xr
>>> from m3rcr_xr.train import TrainSettings, train
>>> result = train("train.zarr", "run.pth", TrainSettings("dsen2_cr", steps=20000),
...                val="val.zarr")  # doctest: +SKIP
>>> result = train("train.zarr", "unet.pth", TrainSettings("landcover_unet", steps=2000),
...                task="landcover", level=1)  # doctest: +SKIP
"""

from .data import CropDataset
from .loop import TrainResult, train, train_step
from .recipe import PUBLISHED, autocast_dtype, loss_function, make_optimizer, make_scheduler
from .settings import ResolvedSettings, TrainSettings
from .state import (
    CHECKPOINT_KEYS,
    check_checkpoint_destination,
    check_export_destination,
    check_outside_data,
    export_weights,
    read_training_checkpoint,
)
from .validation import validate_model

__all__ = [
    "CHECKPOINT_KEYS",
    "PUBLISHED",
    "CropDataset",
    "ResolvedSettings",
    "TrainResult",
    "TrainSettings",
    "autocast_dtype",
    "check_checkpoint_destination",
    "check_export_destination",
    "check_outside_data",
    "export_weights",
    "loss_function",
    "make_optimizer",
    "make_scheduler",
    "read_training_checkpoint",
    "train",
    "train_step",
    "validate_model",
]
