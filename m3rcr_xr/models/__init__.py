"""The three networks of the M3R-CR benchmark in pure PyTorch: DSen2-CR, GLF-CR, Align-CR.

Each is an ``nn.Module`` with ``forward(cloudy, sar)`` on normalised tensors (B, 4, H, W)
(blue, green, red, nir) and (B, 2, H, W) (VV, VH, on the optical grid), returning the
(B, 4, H, W) cloud-free estimate (the cloudy input plus a predicted residual). Beside
them, :class:`LandCoverUNet` (``"landcover_unet"``) classifies an optical image into
WorldCover classes, for the semantic evaluation. The default
configuration of each is the published one, with the published state-dict keys, so the
published checkpoints load with :func:`load`. No compiled extension is needed: the
deformable convolution and the dynamic filtering are written in PyTorch
(:mod:`m3rcr_xr.models.deform`).

Each model carries a :class:`ModelSpec` (``model.spec``; also ``model.tile_size``,
``model.tile_multiple``, ``model.optical_bands``, ``model.sar_polarizations``,
``model.normalization``): GLF-CR and Align-CR run only on tiles of their ``input_size``
(160 by default), DSen2-CR on any size.

>>> import torch
>>> from m3rcr_xr.models import build
>>> net = build("glf_cr", preset="small")
>>> with torch.inference_mode():
...     out = net(torch.rand(1, 4, 32, 32), torch.rand(1, 2, 32, 32))
>>> out.shape
torch.Size([1, 4, 32, 32])
"""

from __future__ import annotations

from .aligncr import AlignCR
from .checkpoint import extract_state_dict, load_state_dict_into, read_checkpoint
from .deform import DCNv2Pack, deform_conv2d, kernel2d_conv, torchvision_available
from .dsen2cr import DSen2CR
from .glfcr import GLFCR
from .interface import (
    OPTICAL_BANDS,
    SAR_POLARIZATIONS,
    TASKS,
    CloudRemovalNet,
    ModelSpec,
    check_task,
)
from .losses import CARLLoss, ECCharbonnierLoss, carl_loss, ec_charbonnier_loss, l1_loss
from .records import RECORDS, ModelRecord, model_record
from .registry import (
    MAX_PARAMETERS,
    MODELS,
    PRESETS,
    available,
    build,
    check_config,
    check_tile,
    load,
    model_spec,
    parameter_count,
    zero_residual_,
)
from .unet import LandCoverUNet

__all__ = [
    "GLFCR",
    "MAX_PARAMETERS",
    "MODELS",
    "OPTICAL_BANDS",
    "PRESETS",
    "RECORDS",
    "SAR_POLARIZATIONS",
    "TASKS",
    "AlignCR",
    "CARLLoss",
    "CloudRemovalNet",
    "DCNv2Pack",
    "DSen2CR",
    "ECCharbonnierLoss",
    "LandCoverUNet",
    "ModelRecord",
    "ModelSpec",
    "available",
    "build",
    "carl_loss",
    "check_config",
    "check_task",
    "check_tile",
    "deform_conv2d",
    "ec_charbonnier_loss",
    "extract_state_dict",
    "kernel2d_conv",
    "l1_loss",
    "load",
    "load_state_dict_into",
    "model_record",
    "model_spec",
    "parameter_count",
    "read_checkpoint",
    "torchvision_available",
    "zero_residual_",
]
