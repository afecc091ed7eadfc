"""Cross-modal (shifted-)window attention of GLF-CR and Align-CR, and the window helpers.

Attribute names are those of the published code (``qkv_SAR``, ``attn_fuse_1x1conv``...),
because they become the keys of the state dict that the published checkpoints carry.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..exceptions import ModelConfigError

__all__ = [
    "CrossModalWindowAttention",
    "ShiftedWindowMixin",
    "relative_position_index",
    "resolve_window",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]


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
