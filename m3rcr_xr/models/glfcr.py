"""GLF-CR: global-local fusion of SAR and optical features (M3R-CR baseline).

Published code: ``baselines/GLF-CR/net_CR_RDN.py`` (class ``RDN_residual_CR``) and
``baselines/GLF-CR/submodules.py`` of ``zhu-xlab/M3R-CR``.

Structure (published default in brackets):

- both inputs are pixel-unshuffled by 2 and embedded (``SFENet1``: conv5x5, ``SFENet2``:
  conv3x3) into ``n_feats`` [96] channels, one stream per modality;
- ``n_blocks`` [6] residual dense blocks (``RDBs``); each dense layer (``convs.{c}``) is a
  conv3x3 + ReLU of ``growth_rate`` [48] channels followed by a cross-modal (shifted-)
  window transformer layer (``num_heads`` [8], ``window_size`` [8], ``mlp_ratio`` [2];
  shifted on odd layers); ``n_layers`` [5] layers per block, then ``LFF``/``LFF_SAR``;
- after each block, the SAR features are filtered per pixel by predicted kernels of size
  ``dynamic_kernel_size`` [5] (``DF``) and the two streams exchange information through two
  gates (``sar_fuse_1x1conv``, ``opt_distribute_1x1conv``);
- global feature fusion (``GFF``) plus the first embedding, ``UPNet`` back to full
  resolution, and the result is added to the cloudy input.

The windowed attention is built for one feature size (``input_size / 2``), so the
network runs on ``input_size`` x ``input_size`` tiles only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from ..exceptions import ModelConfigError
from .attention import CrossModalWindowAttention, ShiftedWindowMixin, resolve_window
from .fusion_rdn import FusionConfig, FusionRDN, check_fusion_config
from .interface import ModelSpec
from .layers import DropPath, Mlp

__all__ = ["GLFCR", "GLFRDB", "GLFDenseLayer"]


class GLFDenseLayer(ShiftedWindowMixin):
    """One dense layer of a GLF-CR block (published ``RDB_Conv`` of GLF-CR).

    conv3x3 + ReLU per stream, then a cross-modal window transformer layer on the new
    ``growth`` channels (attention with a residual, then LayerNorm + MLP with a residual;
    no norm before the attention, as published); the result is concatenated to the input.
    """

    def __init__(
        self,
        in_channels: int,
        growth: int,
        resolution: int,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self._init_windows(resolution, window, shift)
        self.conv = nn.Sequential(nn.Conv2d(in_channels, growth, 3, padding=1), nn.ReLU())
        self.conv_SAR = nn.Sequential(nn.Conv2d(in_channels, growth, 3, padding=1), nn.ReLU())
        self.attn = CrossModalWindowAttention(growth, self.window, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(growth)
        self.norm2_SAR = nn.LayerNorm(growth)
        hidden = int(growth * mlp_ratio)
        self.mlp = Mlp(growth, hidden)
        self.mlp_SAR = Mlp(growth, hidden)

    def forward(self, x: Tensor, x_sar: Tensor) -> tuple[Tensor, Tensor]:
        # Tokens as (B, H, W, C): a free view for channels_last inputs.
        t = self.conv(x).permute(0, 2, 3, 1)
        t_sar = self.conv_SAR(x_sar).permute(0, 2, 3, 1)
        a, a_sar = self.window_attention(t, t_sar)
        t = t + self.drop_path(a)
        t = t + self.drop_path(self.mlp(self.norm2(t)))
        t_sar = t_sar + self.drop_path(a_sar)
        t_sar = t_sar + self.drop_path(self.mlp_SAR(self.norm2_SAR(t_sar)))
        return (
            torch.cat((x, t.permute(0, 3, 1, 2)), dim=1),
            torch.cat((x_sar, t_sar.permute(0, 3, 1, 2)), dim=1),
        )


class GLFRDB(nn.Module):
    """Residual dense block of GLF-CR (published ``RDB``): dense layers, then local fusion."""

    def __init__(self, config: FusionConfig, resolution: int, drop_paths: list[float]) -> None:
        super().__init__()
        channels, growth, n_layers = config.n_feats, config.growth_rate, config.n_layers
        num_heads, window, mlp_ratio = config.num_heads, config.window_size, config.mlp_ratio
        self.convs = nn.Sequential(
            *(
                GLFDenseLayer(
                    channels + c * growth,
                    growth,
                    resolution,
                    num_heads,
                    window,
                    0 if c % 2 == 0 else window // 2,
                    mlp_ratio,
                    drop_paths[c],
                )
                for c in range(n_layers)
            )
        )
        self.LFF = nn.Conv2d(channels + n_layers * growth, channels, 3, padding=1)
        self.LFF_SAR = nn.Conv2d(channels + n_layers * growth, channels, 3, padding=1)

    def forward(self, x: Tensor, x_sar: Tensor) -> tuple[Tensor, Tensor]:
        y, y_sar = x, x_sar
        for layer in self.convs:
            y, y_sar = layer(y, y_sar)
        return self.LFF(y) + x, self.LFF_SAR(y_sar) + x_sar


@dataclasses.dataclass(frozen=True)
class GLFCRConfig(FusionConfig):
    """The constructor arguments of :class:`GLFCR` (see there), published values."""

    up_feats: int = 256
    drop_path_rate: float = 0.2


class GLFCR(FusionRDN):
    """GLF-CR (published ``RDN_residual_CR`` of ``baselines/GLF-CR``).

    Parameters
    ----------
    input_size
        Tile size the network is built for (published: 160); it must be even, and half of
        it a multiple of ``window_size`` (or at most ``window_size``).
    n_feats
        Feature channels ``G0`` (published: 96).
    n_blocks
        Residual dense blocks ``D`` (published: 6).
    n_layers
        Dense layers per block ``C`` (published: 5).
    growth_rate
        Channels added per dense layer ``G`` (published: 48); a multiple of ``num_heads``.
    num_heads
        Attention heads (published: 8).
    window_size
        Attention window (published: 8).
    mlp_ratio
        Hidden size of the transformer MLP relative to ``growth_rate`` (published: 2).
    dynamic_kernel_size
        Size of the per-pixel SAR filters (published: 5; odd).
    up_feats
        Channels before the pixel shuffle of ``UPNet`` (published: 256; multiple of 4).
    drop_path_rate
        Largest stochastic-depth rate, reached linearly over all dense layers (published:
        0.2; ``0 <= drop_path_rate < 1``). Active in training only.

    Notes
    -----
    Valid small configurations (all run on CPU in well under a second): for instance
    ``input_size=32, n_feats=16, n_blocks=2, n_layers=2, growth_rate=8, num_heads=2,
    window_size=4, up_feats=16`` (tiles of 32x32 only).
    """

    name = "glf_cr"
    config_class = GLFCRConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        c = GLFCRConfig(*args, **kwargs)
        config = dataclasses.asdict(c)
        resolution = check_fusion_config(self.name, config)
        if c.growth_rate % c.num_heads:
            raise ModelConfigError(
                f"glf_cr: growth_rate {c.growth_rate} must be a multiple of num_heads {c.num_heads}"
            )
        if not 0 <= c.drop_path_rate < 1:  # 1 drops every path: 0/0, a network of NaN
            raise ModelConfigError(
                f"glf_cr: drop_path_rate={c.drop_path_rate!r} must be in [0, 1) (a probability "
                "below 1; published: 0.2)"
            )
        window, _ = resolve_window(resolution, c.window_size, c.window_size // 2)
        self.spec = ModelSpec(
            name=self.name,
            tile_size=c.input_size,
            tile_multiple=2 * window,
            config=config,
        )
        opt_in = 4 * self.spec.optical_channels  # after pixel unshuffle by 2
        sar_in = 4 * self.spec.sar_channels
        self.SFENet1 = nn.Conv2d(opt_in, c.n_feats, 5, padding=2)
        self.SFENet2 = nn.Conv2d(c.n_feats, c.n_feats, 3, padding=1)
        self.SFENet1_SAR = nn.Conv2d(sar_in, c.n_feats, 5, padding=2)
        self.SFENet2_SAR = nn.Conv2d(c.n_feats, c.n_feats, 3, padding=1)
        total = c.n_blocks * c.n_layers
        rates = torch.linspace(0, c.drop_path_rate, total, device="cpu").tolist() if total else []
        self.RDBs = nn.ModuleList(
            GLFRDB(c, resolution, rates[i * c.n_layers : (i + 1) * c.n_layers])
            for i in range(c.n_blocks)
        )
        self.add_fusion_and_head(c.n_blocks, c.n_feats, c.dynamic_kernel_size, c.up_feats)

    def embed(self, cloudy: Tensor, sar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        first = self.SFENet1(cloudy)
        return first, self.SFENet2(first), self.SFENet2_SAR(self.SFENet1_SAR(sar))
