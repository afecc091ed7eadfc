"""Building blocks shared by the three networks, and what each model says about itself.

The attribute names of the modules here are those of the published code (``qkv_SAR``,
``attn_fuse_1x1conv``, ``fac_warp``...), because they become the keys of the state dict
that the published checkpoints carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from torch import Tensor, nn

from ..exceptions import ModelConfigError
from .deform import kernel2d_conv

__all__ = [
    "OPTICAL_BANDS",
    "SAR_POLARIZATIONS",
    "CloudRemovalNet",
    "CrossModalWindowAttention",
    "DropPath",
    "DynamicFilterGenerator",
    "Mlp",
    "ModelSpec",
    "WNConv2d",
    "gated_fusion",
    "pixel_reshuffle",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]

OPTICAL_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
SAR_POLARIZATIONS: tuple[str, ...] = ("VV", "VH")


@dataclass(frozen=True)
class ModelSpec:
    """What a model needs from its input; decloud reads this instead of hard-coding it.

    Attributes
    ----------
    name
        Registry name (``"dsen2_cr"``, ``"glf_cr"``, ``"align_cr"``).
    tile_size
        The only tile size (height = width) the model accepts, or ``None`` for any size.
    tile_multiple
        Height and width must be multiples of this (1: no constraint). For a model with a
        ``tile_size``, this is the constraint that the configured size itself satisfies.
    optical_bands
        Order of the 4 optical channels of ``cloudy`` (and of the output).
    sar_polarizations
        Order of the 2 SAR channels of ``sar``.
    normalisation
        Name of the input normalisation (``"m3rcr"``: optical reflectance x10000 clipped
        to [0, 10000] and divided by 10000; SAR dB, VV clipped to [-25, 0] and VH to
        [-32.5, 0], each scaled to [0, 1]; see :mod:`m3rcr_xr.normalize`).
    residual
        Whether the network predicts a residual that is added to the cloudy input.
    channels_last
        Whether the network runs faster on a GPU in ``channels_last`` layout: true for
        convolutions alone (cuDNN's fastest layout), false where window attention
        reshapes the features (on an H200, GLF-CR ran 11% (fp32) to 16% (bf16) slower
        in it).
    """

    name: str
    tile_size: int | None
    tile_multiple: int
    optical_bands: tuple[str, ...] = OPTICAL_BANDS
    sar_polarizations: tuple[str, ...] = SAR_POLARIZATIONS
    normalisation: str = "m3rcr"
    residual: bool = True
    channels_last: bool = False
    config: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def optical_channels(self) -> int:
        return len(self.optical_bands)

    @property
    def sar_channels(self) -> int:
        return len(self.sar_polarizations)


class CloudRemovalNet(nn.Module):
    """Base of the three networks: ``forward(cloudy, sar) -> cloud-free`` and a :class:`ModelSpec`.

    Subclasses set :attr:`name`, :attr:`spec` (in ``__init__``) and implement
    :meth:`output_conv` (the last convolution, zeroed by ``zero_residual_``).
    """

    name: ClassVar[str] = ""
    optical_bands: ClassVar[tuple[str, ...]] = OPTICAL_BANDS
    sar_polarizations: ClassVar[tuple[str, ...]] = SAR_POLARIZATIONS
    normalisation: ClassVar[str] = "m3rcr"
    spec: ModelSpec

    @property
    def tile_size(self) -> int | None:
        """The one accepted tile size, or ``None`` when any size works."""
        return self.spec.tile_size

    @property
    def tile_multiple(self) -> int:
        """Height and width must be multiples of this."""
        return self.spec.tile_multiple

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments, enough to rebuild the same architecture."""
        return dict(self.spec.config)

    def output_conv(self) -> nn.Conv2d:
        """The last convolution, whose output is the residual."""
        raise NotImplementedError

    def check_inputs(self, cloudy: Tensor, sar: Tensor) -> None:
        """Raise :class:`ModelConfigError` unless ``cloudy``/``sar`` fit this model."""
        spec = self.spec
        if cloudy.ndim != 4 or cloudy.shape[1] != spec.optical_channels:
            raise ModelConfigError(
                f"{spec.name}: cloudy must be (B, {spec.optical_channels}, H, W) "
                f"({', '.join(spec.optical_bands)}), got {tuple(cloudy.shape)}"
            )
        if sar.ndim != 4 or sar.shape[1] != spec.sar_channels:
            raise ModelConfigError(
                f"{spec.name}: sar must be (B, {spec.sar_channels}, H, W) "
                f"({', '.join(spec.sar_polarizations)}), got {tuple(sar.shape)}"
            )
        if sar.shape[0] != cloudy.shape[0] or sar.shape[-2:] != cloudy.shape[-2:]:
            raise ModelConfigError(
                f"{spec.name}: sar {tuple(sar.shape)} is not on the grid of cloudy "
                f"{tuple(cloudy.shape)} (resample SAR onto the optical grid first)"
            )
        check_size(spec, (int(cloudy.shape[-2]), int(cloudy.shape[-1])))


def check_size(spec: ModelSpec, size: int | tuple[int, int]) -> None:
    """Raise :class:`ModelConfigError` unless a tile of ``size`` fits ``spec``."""
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ModelConfigError(f"{spec.name}: tile size must be positive, got {(height, width)}")
    if spec.tile_size is not None and (height, width) != (spec.tile_size, spec.tile_size):
        raise ModelConfigError(
            f"{spec.name}: built for {spec.tile_size}x{spec.tile_size} tiles only (its windowed "
            f"attention is fixed at construction), got {height}x{width}; use tiles of "
            f"{spec.tile_size} or build the model with input_size={height}"
        )
    multiple = spec.tile_multiple
    if height % multiple or width % multiple:
        raise ModelConfigError(
            f"{spec.name}: tile height and width must be multiples of {multiple}, "
            f"got {height}x{width}"
        )


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


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> Tensor:
    """(window², window²) index into the (2*window-1)² relative-position bias table."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> Tensor:
    """Attention mask (nW, N, N) of the shifted windows: 0 within a region, -100 across.

    After the cyclic shift by ``-shift``, pixels that came from different image regions
    share a window; they must not attend to each other. Regions are the three bands
    ``[0, H-window)``, ``[H-window, H-shift)``, ``[H-shift, H)`` in each direction.
    """
    rows = torch.arange(height)
    cols = torch.arange(width)
    row_region = (rows >= height - window).long() + (rows >= height - shift).long()
    col_region = (cols >= width - window).long() + (cols >= width - shift).long()
    region = (row_region[:, None] * 3 + col_region[None, :]).float()
    windows = window_partition(region.view(1, height, width, 1), window).squeeze(-1)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class CrossModalWindowAttention(nn.Module):
    """Window attention of GLF-CR / Align-CR: an optical and a SAR stream, gated fusion.

    Each stream has its own ``qkv``/``proj``; both share the relative position bias.
    Before the softmax, the optical logits move towards the SAR logits by a gate
    ``sigmoid(conv1x1(logits_SAR - logits))`` computed across heads
    (``attn_fuse_1x1conv``); the SAR stream keeps its own logits.

    Parameters
    ----------
    dim
        Channels of the tokens.
    window
        Window side (tokens per window: ``window**2``).
    num_heads
        Attention heads (``dim`` must be a multiple).
    """

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ModelConfigError(f"attention: dim {dim} is not a multiple of {num_heads} heads")
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.qkv_SAR = nn.Linear(dim, dim * 3)
        self.attn_fuse_1x1conv = nn.Conv2d(num_heads, num_heads, kernel_size=1)
        self.proj = nn.Linear(dim, dim)
        self.proj_SAR = nn.Linear(dim, dim)

    relative_position_index: Tensor

    def _logits(self, x: Tensor, qkv: nn.Linear) -> tuple[Tensor, Tensor]:
        n_win, n_tok, c = x.shape
        heads = self.num_heads
        q, k, v = qkv(x).reshape(n_win, n_tok, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        return (q * self.scale) @ k.transpose(-2, -1), v

    def forward(
        self, x: Tensor, x_sar: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attend within windows.

        Parameters
        ----------
        x, x_sar
            (B * nW, N, C) window tokens of the two streams.
        mask
            (nW, N, N) additive mask of shifted windows, or ``None``.

        Returns
        -------
        tuple of Tensor
            The two streams, (B * nW, N, C) each.
        """
        n_win, n_tok, c = x.shape
        heads = self.num_heads
        attn, v = self._logits(x, self.qkv)
        attn_sar, v_sar = self._logits(x_sar, self.qkv_SAR)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n_tok, n_tok, heads).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            # One broadcast add of bias and mask, the windows of each image in order.
            n_masks = mask.shape[0]
            bias = (bias + mask.unsqueeze(1)).to(attn.dtype)
            attn = (attn.view(-1, n_masks, heads, n_tok, n_tok) + bias).view(
                -1, heads, n_tok, n_tok
            )
            attn_sar = (attn_sar.view(-1, n_masks, heads, n_tok, n_tok) + bias).view(
                -1, heads, n_tok, n_tok
            )
        else:
            bias = bias.to(attn.dtype)
            attn = attn + bias
            attn_sar = attn_sar + bias
        diff = attn_sar - attn
        gate = torch.sigmoid(self.attn_fuse_1x1conv(diff))
        attn = torch.softmax(attn + diff * gate, dim=-1)
        attn_sar = torch.softmax(attn_sar, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n_win, n_tok, c)
        out_sar = (attn_sar @ v_sar).transpose(1, 2).reshape(n_win, n_tok, c)
        return self.proj(out), self.proj_SAR(out_sar)


def resolve_window(resolution: int, window: int, shift: int) -> tuple[int, int]:
    """Window and shift actually used at ``resolution`` (the Swin rule).

    A window as large as the feature map covers it whole, without shift.
    """
    if resolution <= window:
        return resolution, 0
    if resolution % window:
        raise ModelConfigError(
            f"feature size {resolution} is not a multiple of the attention window {window}"
        )
    return window, shift


class ShiftedWindowMixin(nn.Module):
    """Partition, (shifted-)window attention and merge, for two (B, H, W, C) streams.

    Subclasses set ``resolution``, ``window``, ``shift``, an ``attn``
    (:class:`CrossModalWindowAttention`) and the ``attn_mask`` buffer.
    """

    resolution: int
    window: int
    shift: int
    attn: CrossModalWindowAttention
    attn_mask: Tensor | None

    def _init_windows(self, resolution: int, window: int, shift: int) -> None:
        self.resolution = resolution
        self.window, self.shift = resolve_window(resolution, window, shift)
        mask = None
        if self.shift > 0:
            mask = shifted_window_mask(resolution, resolution, self.window, self.shift)
        self.register_buffer("attn_mask", mask)

    def window_attention(self, x: Tensor, x_sar: Tensor) -> tuple[Tensor, Tensor]:
        """Attention of the two (B, H, W, C) maps within (shifted) windows."""
        _, h, w, _ = x.shape
        if (h, w) != (self.resolution, self.resolution):
            raise ModelConfigError(
                f"window attention built for {self.resolution}x{self.resolution} features, "
                f"got {h}x{w}"
            )
        s, win = self.shift, self.window
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
            x_sar = torch.roll(x_sar, shifts=(-s, -s), dims=(1, 2))
        out, out_sar = self.attn(
            window_partition(x, win), window_partition(x_sar, win), self.attn_mask
        )
        out = window_reverse(out, win, h, w)
        out_sar = window_reverse(out_sar, win, h, w)
        if s:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
            out_sar = torch.roll(out_sar, shifts=(s, s), dims=(1, 2))
        return out, out_sar


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
    filter_generator: DynamicFilterGenerator,
    sar_gate: nn.Conv2d,
    opt_gate: nn.Conv2d,
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


class FusionRDN(CloudRemovalNet):
    """What GLF-CR and Align-CR share: per-block SAR-optical fusion, global feature
    fusion and the pixel-shuffle head (attribute names as published)."""

    def add_fusion_and_head(
        self, n_blocks: int, n_feats: int, dynamic_kernel_size: int, up_feats: int
    ) -> None:
        """Create ``DF``, ``sar_fuse_1x1conv``, ``opt_distribute_1x1conv``, ``GFF`` and
        ``UPNet``, in the published order (it is the state-dict order)."""
        self.DF, self.sar_fuse_1x1conv, self.opt_distribute_1x1conv = build_fusion_lists(
            n_blocks, n_feats, dynamic_kernel_size
        )
        self.GFF = build_gff(n_blocks, n_feats)
        self.UPNet = build_upnet(n_feats, up_feats, self.spec.optical_channels)

    def output_conv(self) -> nn.Conv2d:
        return self.UPNet[-1]  # type: ignore[return-value]
