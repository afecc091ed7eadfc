"""The reference networks of ``../shared/reference/``: parameter fill and golden files.

The golden outputs of ``../shared/reference/golden/`` were made by the published code
with its parameters filled by the recipe of ``../shared/reference/README.md``;
:func:`fill_reference_parameters_` is that recipe, so that this package's networks can be
compared with them (``tests/test_models.py`` on the CPU, :mod:`benchmarks.gpu_check` on a
GPU).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import torch

#: the networks with golden outputs, in the order the checks report them
NAMES = ("dsen2_cr", "glf_cr", "align_cr")


def fill_reference_parameters_(model: torch.nn.Module) -> torch.nn.Module:
    """The parameter-fill recipe of ``../shared/reference/README.md`` (buffers untouched)."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            r = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            parts = name.split(".")
            if name.endswith("relative_position_bias_table"):
                v = 0.02 * r
            elif p.ndim >= 2:
                v = 0.5 * r / math.sqrt(math.prod(p.shape[1:]))
            elif len(parts) >= 2 and parts[-2].startswith("norm") and name.endswith("weight"):
                v = 1 + 0.01 * r
            else:
                v = 0.01 * r
            if "conv_offset" in name:
                v = 2.0 * r / math.sqrt(math.prod(p.shape[1:])) if p.ndim >= 2 else 0.5 * r
            p.copy_(v.to(p.dtype))
    return model


def golden_inputs(folder: Path) -> np.ndarray:
    """The golden inputs as one (1, 6, 160, 160) float32 array: cloudy, then SAR."""
    cloudy = np.load(folder / "input_cloudy.npy")
    sar = np.load(folder / "input_sar.npy")
    return np.concatenate([cloudy, sar], axis=1).astype(np.float32)


def golden_output(folder: Path, name: str) -> np.ndarray:
    """The published network's (1, 4, 160, 160) output on the golden inputs."""
    return np.load(folder / f"output_{name}.npy")
