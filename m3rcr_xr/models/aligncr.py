"""Align-CR: SAR-to-optical feature alignment and fusion, the M3R-CR reference network.

Published code: ``Align-CR/net_CR_RDN.py`` (class ``RDN_residual_CR``),
``Align-CR/model/arch_util.py`` (``WideActResBlock``), ``Align-CR/submodules.py`` of
``zhu-xlab/M3R-CR``, and BasicSR's ``PCDAlignment``/``DCNv2Pack``
(``basicsr/archs/edvr_arch.py``, ``basicsr/archs/arch_util.py``).

Structure (published default in brackets):

- both inputs are pixel-unshuffled by 2, embedded by a conv3x3 (``SFE_conv``) and
  ``n_sfe_blocks`` [5] wide-activation residual blocks with weight normalisation
  (``SFE_module``) into ``n_feats`` [96] channels;
- for each of ``n_blocks`` [6] stages: the SAR features are aligned to the optical ones
  (``SFAlign``: a 3-level feature pyramid per stream, then pyramid-cascading-deformable
  alignment with ``deformable_groups`` [8] offset groups), a residual dense block
  (``RDBs``: ``n_layers`` [5] dense conv layers of ``growth_rate`` [48] per stream, local
  fusion, then one cross-modal (shifted-)window transformer layer with ``num_heads`` [8],
  ``window_size`` [8], ``mlp_ratio`` [4]; shifted in odd stages), then dynamic filtering of
  SAR (kernel ``dynamic_kernel_size`` [5]) and the two gated exchanges;
- global feature fusion plus the (ReLU-ed) first embedding, ``UPNet``, plus the cloudy input.

Runs on ``input_size`` x ``input_size`` tiles only (windowed attention).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from torch import Tensor, nn

from ..exceptions import ModelConfigError
from .attention import CrossModalWindowAttention, ShiftedWindowMixin, resolve_window
from .deform import Backend, DCNv2Pack
from .fusion_rdn import FusionConfig, FusionRDN, check_fusion_config
from .interface import ModelSpec
from .layers import Mlp, WNConv2d

__all__ = [
    "AlignCR",
    "AlignFeature",
    "AlignRDB",
    "PCDAlignment",
    "SwinBlock",
    "WideActResBlock",
]


class WideActResBlock(nn.Module):
    """Wide-activation residual block with weight-normalised convs (published, arch_util).

    ``body``: conv1x1 (nf -> expand*nf), ReLU, conv1x1 (-> int(linear*nf)), conv3x3 (-> nf);
    the output is ``body(x) + x``.
    """

    def __init__(self, nf: int, expand: int = 6, linear: float = 0.8) -> None:
        super().__init__()
        mid = int(nf * linear)
        self.body = nn.Sequential(
            WNConv2d(nf, nf * expand, 1),
            nn.ReLU(inplace=True),
            WNConv2d(nf * expand, mid, 1),
            WNConv2d(mid, nf, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.1)


def _up2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class PCDAlignment(nn.Module):
    """Pyramid, cascading and deformable alignment (BasicSR ``PCDAlignment``, EDVR).

    Offsets are estimated coarse to fine on three pyramid levels (``l3``: 1/4, ``l2``: 1/2,
    ``l1``: full size); the coarser offsets and aligned features are upsampled (offsets
    doubled) into the finer level; a last cascading deformable conv refines level 1.
    """

    def __init__(self, num_feat: int, deformable_groups: int, backend: Backend = "torch") -> None:
        super().__init__()
        self.offset_conv1 = nn.ModuleDict()
        self.offset_conv2 = nn.ModuleDict()
        self.offset_conv3 = nn.ModuleDict()
        self.dcn_pack = nn.ModuleDict()
        self.feat_conv = nn.ModuleDict()
        for i in (3, 2, 1):  # coarse to fine: the published registration (and key) order
            level = f"l{i}"
            self.offset_conv1[level] = nn.Conv2d(num_feat * 2, num_feat, 3, padding=1)
            if i == 3:
                self.offset_conv2[level] = nn.Conv2d(num_feat, num_feat, 3, padding=1)
            else:
                self.offset_conv2[level] = nn.Conv2d(num_feat * 2, num_feat, 3, padding=1)
                self.offset_conv3[level] = nn.Conv2d(num_feat, num_feat, 3, padding=1)
            self.dcn_pack[level] = DCNv2Pack(
                num_feat,
                num_feat,
                3,
                padding=1,
                deformable_groups=deformable_groups,
                backend=backend,
            )
            if i < 3:
                self.feat_conv[level] = nn.Conv2d(num_feat * 2, num_feat, 3, padding=1)
        self.cas_offset_conv1 = nn.Conv2d(num_feat * 2, num_feat, 3, padding=1)
        self.cas_offset_conv2 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.cas_dcnpack = DCNv2Pack(
            num_feat, num_feat, 3, padding=1, deformable_groups=deformable_groups, backend=backend
        )

    def forward(self, nbr: list[Tensor], ref: list[Tensor]) -> Tensor:
        """Align ``nbr`` (levels 1, 2, 3) to ``ref`` (levels 1, 2, 3); return level 1."""
        up_offset: Tensor | None = None
        up_feat: Tensor | None = None
        feat = nbr[0]
        for i in (3, 2, 1):
            level = f"l{i}"
            offset = _lrelu(self.offset_conv1[level](torch.cat((nbr[i - 1], ref[i - 1]), 1)))
            if up_offset is None:
                offset = _lrelu(self.offset_conv2[level](offset))
            else:
                offset = _lrelu(self.offset_conv2[level](torch.cat((offset, up_offset), 1)))
                offset = _lrelu(self.offset_conv3[level](offset))
            feat = self.dcn_pack[level](nbr[i - 1], offset)
            if up_feat is not None:
                feat = self.feat_conv[level](torch.cat((feat, up_feat), 1))
            if i > 1:
                feat = _lrelu(feat)
                # Offsets are in pixels: twice as many at the finer level.
                up_offset = _up2(offset) * 2
                up_feat = _up2(feat)
        offset = torch.cat((feat, ref[0]), 1)
        offset = _lrelu(self.cas_offset_conv2(_lrelu(self.cas_offset_conv1(offset))))
        return _lrelu(self.cas_dcnpack(feat, offset))


class AlignFeature(nn.Module):
    """Align SAR features to optical ones (published ``Align_Feature``).

    Builds a 3-level pyramid of each stream (stride-2 convs, then a top-down FPN pass:
    ``toplayer``, ``latlayer``, ``smooth``) and aligns ``src`` to ``ref`` with
    :class:`PCDAlignment` (``pcd_align``).
    """

    def __init__(
        self, channels: int, deformable_groups: int = 8, backend: Backend = "torch"
    ) -> None:
        super().__init__()
        c = channels
        self.src_L2_conv1 = nn.Conv2d(c, c * 2, 3, stride=2, padding=1)
        self.src_L3_conv1 = nn.Conv2d(c * 2, c * 4, 3, stride=2, padding=1)
        self.ref_L2_conv1 = nn.Conv2d(c, c * 2, 3, stride=2, padding=1)
        self.ref_L3_conv1 = nn.Conv2d(c * 2, c * 4, 3, stride=2, padding=1)
        for side in ("src", "ref"):
            setattr(self, f"{side}_toplayer", nn.Conv2d(c * 4, c, 1))
            setattr(self, f"{side}_smooth1", nn.Conv2d(c, c, 3, padding=1))
            setattr(self, f"{side}_smooth2", nn.Conv2d(c, c, 3, padding=1))
            setattr(self, f"{side}_latlayer1", nn.Conv2d(c * 2, c, 1))
            setattr(self, f"{side}_latlayer2", nn.Conv2d(c, c, 1))
        self.pcd_align = PCDAlignment(c, deformable_groups, backend=backend)

    def _pyramid(self, side: str, l1: Tensor) -> list[Tensor]:
        m = dict(self.named_children())
        l2 = F.relu(m[f"{side}_L2_conv1"](l1))
        l3 = F.relu(m[f"{side}_L3_conv1"](l2))
        l3 = F.relu(m[f"{side}_toplayer"](l3))
        l2 = m[f"{side}_smooth1"](_up2(l3) + m[f"{side}_latlayer1"](l2))
        l1 = m[f"{side}_smooth2"](_up2(l2) + m[f"{side}_latlayer2"](l1))
        return [l1, l2, l3]

    def forward(self, src: Tensor, ref: Tensor) -> Tensor:
        """``src`` (SAR) features aligned to ``ref`` (optical); same shape as ``src``."""
        return self.pcd_align(self._pyramid("src", src), self._pyramid("ref", ref))


class SwinBlock(ShiftedWindowMixin):
    """Cross-modal (shifted-)window transformer layer (published ``SwinTransformerBlock``).

    Pre-norm: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, for each stream.
    """

    def __init__(
        self, dim: int, resolution: int, num_heads: int, window: int, shift: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self._init_windows(resolution, window, shift)
        self.norm1 = nn.LayerNorm(dim)
        self.norm1_SAR = nn.LayerNorm(dim)
        self.attn = CrossModalWindowAttention(dim, self.window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.norm2_SAR = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = Mlp(dim, hidden)
        self.mlp_SAR = Mlp(dim, hidden)

    def forward(self, x: Tensor, x_sar: Tensor) -> tuple[Tensor, Tensor]:
        """Both streams as (B, H, W, C)."""
        a, a_sar = self.window_attention(self.norm1(x), self.norm1_SAR(x_sar))
        x = x + a
        x = x + self.mlp(self.norm2(x))
        x_sar = x_sar + a_sar
        x_sar = x_sar + self.mlp_SAR(self.norm2_SAR(x_sar))
        return x, x_sar


class _DenseConv(nn.Module):
    """conv3x3 + ReLU per stream, concatenated to the input (published ``RDB_Conv``)."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, growth, 3, padding=1), nn.ReLU())
        self.conv_SAR = nn.Sequential(nn.Conv2d(in_channels, growth, 3, padding=1), nn.ReLU())

    def forward(self, x: Tensor, x_sar: Tensor) -> tuple[Tensor, Tensor]:
        return torch.cat((x, self.conv(x)), 1), torch.cat((x_sar, self.conv_SAR(x_sar)), 1)


class AlignRDB(nn.Module):
    """Residual dense block of Align-CR (published ``RDB``).

    Dense convs, local feature fusion (``LFF``), a :class:`SwinBlock` on the fused
    features, and the block input added back.
    """

    def __init__(self, config: FusionConfig, resolution: int, shift: int) -> None:
        super().__init__()
        channels, growth, n_layers = config.n_feats, config.growth_rate, config.n_layers
        num_heads, window, mlp_ratio = config.num_heads, config.window_size, config.mlp_ratio
        self.convs = nn.Sequential(
            *(_DenseConv(channels + c * growth, growth) for c in range(n_layers))
        )
        self.LFF = nn.Conv2d(channels + n_layers * growth, channels, 3, padding=1)
        self.LFF_SAR = nn.Conv2d(channels + n_layers * growth, channels, 3, padding=1)
        self.SwinTransformerBlock = SwinBlock(
            channels, resolution, num_heads, window, shift, mlp_ratio
        )

    def forward(self, x: Tensor, x_sar: Tensor) -> tuple[Tensor, Tensor]:
        y, y_sar = x, x_sar
        for layer in self.convs:
            y, y_sar = layer(y, y_sar)
        y = self.LFF(y).permute(0, 2, 3, 1)
        y_sar = self.LFF_SAR(y_sar).permute(0, 2, 3, 1)
        y, y_sar = self.SwinTransformerBlock(y, y_sar)
        return y.permute(0, 3, 1, 2) + x, y_sar.permute(0, 3, 1, 2) + x_sar


@dataclasses.dataclass(frozen=True)
class AlignCRConfig(FusionConfig):
    """The constructor arguments of :class:`AlignCR` (see there), published values."""

    mlp_ratio: float = 4.0
    n_sfe_blocks: int = 5
    deformable_groups: int = 8
    up_feats: int = 256
    deform_backend: Backend = "torch"


class AlignCR(FusionRDN):
    """Align-CR (published ``RDN_residual_CR`` of ``Align-CR/net_CR_RDN.py``).

    Parameters
    ----------
    input_size
        Tile size the network is built for (published: 160). It must be a multiple of 8
        (two pyramid levels on the half-resolution features), and ``input_size / 2`` a
        multiple of ``window_size`` (or at most ``window_size``).
    n_feats
        Feature channels ``G0`` (published: 96); a multiple of ``num_heads`` and of
        ``deformable_groups``.
    n_blocks
        Stages ``D`` (alignment + dense block + fusion; published: 6).
    n_layers
        Dense conv layers per block ``C`` (published: 5).
    growth_rate
        Channels added per dense layer ``G`` (published: 48).
    num_heads
        Attention heads (published: 8).
    window_size
        Attention window (published: 8).
    mlp_ratio
        Transformer MLP hidden size relative to ``n_feats`` (published: 4).
    dynamic_kernel_size
        Size of the per-pixel SAR filters (published: 5; odd).
    n_sfe_blocks
        Wide-activation blocks of the shallow feature extractor (published: 5).
    deformable_groups
        Offset groups of the deformable convolutions (published: 8).
    up_feats
        Channels before the pixel shuffle of ``UPNet`` (published: 256; multiple of 4).
    deform_backend
        ``"torch"`` (pure PyTorch, default), ``"auto"`` or ``"torchvision"``; see
        :func:`m3rcr_xr.models.deform.deform_conv2d`.

    Notes
    -----
    A valid small configuration: ``input_size=32, n_feats=16, n_blocks=2, n_layers=2,
    growth_rate=8, num_heads=2, window_size=4, n_sfe_blocks=1, deformable_groups=2,
    up_feats=16`` (tiles of 32x32 only).
    """

    name = "align_cr"
    config_class = AlignCRConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        c = AlignCRConfig(*args, **kwargs)
        config = dataclasses.asdict(c)
        resolution = check_fusion_config(self.name, config)
        if c.input_size % 8:
            raise ModelConfigError(
                f"align_cr: input_size must be a multiple of 8, got {c.input_size}"
            )
        if c.n_feats % c.num_heads or c.deformable_groups < 1 or c.n_feats % c.deformable_groups:
            raise ModelConfigError(
                f"align_cr: n_feats {c.n_feats} must be a multiple of num_heads {c.num_heads} and "
                f"of deformable_groups {c.deformable_groups}"
            )
        if c.n_sfe_blocks < 0 or int(c.n_feats * 0.8) < 1:
            raise ModelConfigError("align_cr: need n_sfe_blocks >= 0 and n_feats >= 2")
        window, _ = resolve_window(resolution, c.window_size, c.window_size // 2)
        self.spec = ModelSpec(
            name=self.name,
            tile_size=c.input_size,
            tile_multiple=math.lcm(8, 2 * window),
            config=config,
        )
        opt_in = 4 * self.spec.optical_channels
        sar_in = 4 * self.spec.sar_channels
        self.SFE_conv = nn.Conv2d(opt_in, c.n_feats, 3, padding=1)
        self.SFE_module = nn.Sequential(
            *(WideActResBlock(c.n_feats) for _ in range(c.n_sfe_blocks))
        )
        self.SFE_conv_SAR = nn.Conv2d(sar_in, c.n_feats, 3, padding=1)
        self.SFE_module_SAR = nn.Sequential(
            *(WideActResBlock(c.n_feats) for _ in range(c.n_sfe_blocks))
        )
        self.RDBs = nn.ModuleList(
            AlignRDB(c, resolution, 0 if i % 2 == 0 else c.window_size // 2)
            for i in range(c.n_blocks)
        )
        self.SFAlign = nn.ModuleList(
            AlignFeature(c.n_feats, c.deformable_groups, backend=c.deform_backend)
            for _ in range(c.n_blocks)
        )
        self.add_fusion_and_head(c.n_blocks, c.n_feats, c.dynamic_kernel_size, c.up_feats)

    def embed(self, cloudy: Tensor, sar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # The published code applies an in-place ReLU to the first embedding before the
        # extractor, so the global skip adds the ReLU-ed embedding.
        first = F.relu(self.SFE_conv(cloudy))
        x_sar = self.SFE_module_SAR(F.relu(self.SFE_conv_SAR(sar)))
        return first, self.SFE_module(first), x_sar

    def block(self, index: int, x: Tensor, x_sar: Tensor) -> tuple[Tensor, Tensor]:
        """Align the SAR features to the optical ones (``SFAlign``), then the dense block."""
        return super().block(index, x, self.SFAlign[index](x_sar, x))
