"""Small layers of the networks: space-to-depth, weight-normalised conv, stochastic depth, MLP.

Parameter names are those of the published code, because they become the keys of the
state dict that the published checkpoints carry.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from torch import Tensor, nn

__all__ = ["DropPath", "Mlp", "WNConv2d", "pixel_reshuffle"]


def pixel_reshuffle(x: Tensor, factor: int) -> Tensor:
    """Space-to-depth: (B, C, H, W) -> (B, C*r*r, H/r, W/r), channel ``c*r*r + i*r + j``.

    The published ``pixel_reshuffle``; identical to :func:`torch.nn.functional.pixel_unshuffle`.
    """
    return F.pixel_unshuffle(x, factor)


class WNConv2d(nn.Conv2d):
    """``nn.Conv2d`` with weight normalisation under the legacy parameter names.

    ``weight = weight_g * weight_v / ||weight_v||`` (norm over all but the output
    dimension), with parameters ``weight_g`` (C_out, 1, 1, 1) and ``weight_v``, as
    ``torch.nn.utils.weight_norm`` (deprecated) creates them and as the published Align-CR
    checkpoints store them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        weight = self.weight.detach()
        del self.weight  # replaced by the (g, v) pair; the state dict must not hold it
        self.weight_g = nn.Parameter(_norm_except_dim0(weight))
        # Registered after the bias, as the published state dicts list them.
        self.weight_v = nn.Parameter(weight.clone())

    def normalized_weight(self) -> Tensor:
        """The effective convolution weight."""
        v = self.weight_v
        return v * (self.weight_g / _norm_except_dim0(v))

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)


def _norm_except_dim0(v: Tensor) -> Tensor:
    return torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True)


class DropPath(nn.Module):
    """Stochastic depth per sample (active in training only); no parameters."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Two-layer perceptron with GELU (``fc1``, ``fc2``), the transformer feed-forward."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))
