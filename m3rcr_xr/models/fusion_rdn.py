"""The network GLF-CR and Align-CR share: a residual dense network on two fused streams.

:class:`FusionRDN` runs the common forward pass: both inputs pixel-unshuffled by 2 and
embedded, then per stage a block and the SAR-optical fusion, global feature fusion plus
the first optical embedding, ``UPNet`` back to full resolution, plus the cloudy input.
Subclasses build their layers and fill in the two hooks where the networks differ:
:meth:`FusionRDN.embed` (the shallow feature extractors) and :meth:`FusionRDN.block`
(what a stage does before the fusion).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from ..exceptions import ModelConfigError
from .fusion import build_fusion_lists, gated_fusion
from .interface import CloudRemovalNet
from .layers import pixel_reshuffle

__all__ = ["FusionConfig", "FusionRDN", "build_gff", "build_upnet", "check_fusion_config"]


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """The constructor arguments GLF-CR and Align-CR share, with the published values.

    Each network's own config dataclass adds its arguments after these (in the order of
    its published signature); the network's constructor takes them as keywords (or in
    that order), and its signature is the dataclass's.
    """

    input_size: int = 160
    n_feats: int = 96
    n_blocks: int = 6
    n_layers: int = 5
    growth_rate: int = 48
    num_heads: int = 8
    window_size: int = 8
    mlp_ratio: float = 2.0
    dynamic_kernel_size: int = 5


def build_gff(n_blocks: int, channels: int) -> nn.Sequential:
    """Global feature fusion: conv1x1 over the concatenated block outputs, then conv3x3."""
    return nn.Sequential(
        nn.Conv2d(n_blocks * channels, channels, 1),
        nn.Conv2d(channels, channels, 3, padding=1),
    )


def build_upnet(channels: int, up_feats: int, out_channels: int = 4) -> nn.Sequential:
    """Back to full resolution: conv3x3 -> PixelShuffle(2) -> conv3x3 to the bands."""
    if up_feats % 4:
        raise ModelConfigError(f"up_feats must be a multiple of 4, got {up_feats}")
    return nn.Sequential(
        nn.Conv2d(channels, up_feats, 3, padding=1),
        nn.PixelShuffle(2),
        nn.Conv2d(up_feats // 4, out_channels, 3, padding=1),
    )


def check_fusion_config(name: str, config: dict[str, Any]) -> int:
    """Validate the knobs GLF-CR and Align-CR share; return the feature resolution.

    Raises
    ------
    ModelConfigError
        When a knob is out of range, or ``input_size / 2`` does not tile into windows.
    """
    input_size = config["input_size"]
    positive = ("input_size", "n_feats", "n_blocks", "num_heads", "window_size", "up_feats")
    bad = [k for k in positive if not isinstance(config[k], int) or config[k] < 1]
    if bad:
        raise ModelConfigError(f"{name}: {', '.join(bad)} must be positive integers")
    if config["n_layers"] < 0 or config["growth_rate"] < 1:
        raise ModelConfigError(f"{name}: need n_layers >= 0 and growth_rate >= 1")
    if input_size % 2:
        raise ModelConfigError(f"{name}: input_size must be even, got {input_size}")
    k = config["dynamic_kernel_size"]
    if k < 1 or k % 2 == 0:
        raise ModelConfigError(f"{name}: dynamic_kernel_size must be odd, got {k}")
    if not math.isfinite(config["mlp_ratio"]) or config["mlp_ratio"] <= 0:
        raise ModelConfigError(f"{name}: mlp_ratio must be positive")
    resolution = input_size // 2
    window = config["window_size"]
    if resolution > window and resolution % window:
        raise ModelConfigError(
            f"{name}: input_size / 2 = {resolution} must be a multiple of window_size "
            f"{window} (or at most window_size)"
        )
    return resolution


class FusionRDN(CloudRemovalNet):
    """What GLF-CR and Align-CR share: the forward pass, per-block SAR-optical fusion,
    global feature fusion and the pixel-shuffle head (attribute names as published).

    Subclasses create their embedding layers and ``RDBs`` (one residual dense block per
    stage), call :meth:`add_fusion_and_head` last, and implement :meth:`embed`; they
    override :meth:`block` when a stage does more than its dense block.
    """

    RDBs: nn.ModuleList
    n_blocks: int
    kernel_size_2d: int

    def add_fusion_and_head(
        self, n_blocks: int, n_feats: int, dynamic_kernel_size: int, up_feats: int
    ) -> None:
        """Create ``DF``, ``sar_fuse_1x1conv``, ``opt_distribute_1x1conv``, ``GFF`` and
        ``UPNet``, in the published order (it is the state-dict order)."""
        self.n_blocks = n_blocks
        self.kernel_size_2d = dynamic_kernel_size
        self.DF, self.sar_fuse_1x1conv, self.opt_distribute_1x1conv = build_fusion_lists(
            n_blocks, n_feats, dynamic_kernel_size
        )
        self.GFF = build_gff(n_blocks, n_feats)
        self.UPNet = build_upnet(n_feats, up_feats, self.spec.optical_channels)

    def output_conv(self) -> nn.Conv2d:
        return self.UPNet[-1]  # type: ignore[return-value]

    def embed(self, cloudy: Tensor, sar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Shallow features of the pixel-unshuffled inputs.

        Returns
        -------
        tuple of Tensor
            The first optical embedding (added back after the global feature fusion),
            and the optical and SAR features that enter the first stage.
        """
        raise NotImplementedError

    def block(self, index: int, x: Tensor, x_sar: Tensor) -> tuple[Tensor, Tensor]:
        """Stage ``index`` before its fusion: the residual dense block ``RDBs[index]``."""
        return self.RDBs[index](x, x_sar)

    def forward(self, cloudy: Tensor, sar: Tensor) -> Tensor:
        """Predict the cloud-free image of ``input_size`` tiles; see
        :meth:`CloudRemovalNet.forward`."""
        self.check_inputs(cloudy, sar)
        first, x, x_sar = self.embed(pixel_reshuffle(cloudy, 2), pixel_reshuffle(sar, 2))
        outs = []
        for i in range(self.n_blocks):
            x, x_sar = self.block(i, x, x_sar)
            x, x_sar = gated_fusion(
                x,
                x_sar,
                self.DF[i],
                self.sar_fuse_1x1conv[i],
                self.opt_distribute_1x1conv[i],
                self.kernel_size_2d,
            )
            outs.append(x)
        x = self.GFF(torch.cat(outs, dim=1)) + first
        return self.UPNet(x) + cloudy
