"""SAR-optical fusion of GLF-CR and Align-CR: per-pixel SAR filtering and two gated exchanges.

Attribute names are those of the published code (``fac_warp``, ``DF``...), because they
become the keys of the state dict that the published checkpoints carry.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .deform import kernel2d_conv

__all__ = ["DynamicFilterGenerator", "build_fusion_lists", "gated_fusion"]


class _ConvLeaky(nn.Sequential):
    """Conv2d + LeakyReLU(0.1): the published ``df_conv`` (keys ``0.weight``, ``0.bias``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.LeakyReLU(0.1, inplace=True),
        )


class _LeakyResBlock(nn.Module):
    """Conv-LeakyReLU-Conv with identity skip: the published ``df_ResnetBlock`` (``stem``)."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.stem(x) + x


class DynamicFilterGenerator(nn.Module):
    """Predict per-pixel SAR filters from both streams (published ``DFG``).

    ``fac_warp``: conv3x3 (2C -> C) + LeakyReLU, two residual blocks, conv1x1
    (C -> C * k * k) + LeakyReLU. The output is the kernel of :func:`kernel2d_conv`.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        half = channels // 2
        self.fac_warp = nn.Sequential(
            _ConvLeaky(channels, half, 3),
            _LeakyResBlock(half, 3),
            _LeakyResBlock(half, 3),
            _ConvLeaky(half, half * kernel_size**2, 1),
        )

    def forward(self, opt: Tensor, sar: Tensor) -> Tensor:
        return self.fac_warp(torch.cat((opt, sar), dim=1))


def gated_fusion(
    opt: Tensor,
    sar: Tensor,
    filter_generator: nn.Module,
    sar_gate: nn.Module,
    opt_gate: nn.Module,
    kernel_size: int,
) -> tuple[Tensor, Tensor]:
    """One fusion step of the published ``fuse``: filter SAR, then two gated exchanges.

    The SAR features are filtered per pixel by kernels predicted from both streams; the
    optical stream moves towards them by a gate ``sigmoid(sar_gate(sar' - opt))``, then
    the SAR stream towards the new optical one by ``sigmoid(opt_gate(opt' - sar'))``.

    Returns
    -------
    tuple of Tensor
        The updated (optical, SAR) features.
    """
    sar_filtered = kernel2d_conv(sar, filter_generator(opt, sar), kernel_size)
    diff = sar_filtered - opt
    new_opt = opt + diff * torch.sigmoid(sar_gate(diff))
    back = new_opt - sar_filtered
    new_sar = sar + back * torch.sigmoid(opt_gate(back))
    return new_opt, new_sar


def build_fusion_lists(
    n_blocks: int, channels: int, kernel_size: int
) -> tuple[nn.ModuleList, nn.ModuleList, nn.ModuleList]:
    """The ``DF``, ``sar_fuse_1x1conv`` and ``opt_distribute_1x1conv`` lists."""
    df = nn.ModuleList(DynamicFilterGenerator(channels * 2, kernel_size) for _ in range(n_blocks))
    sar = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(n_blocks))
    opt = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(n_blocks))
    return df, sar, opt
