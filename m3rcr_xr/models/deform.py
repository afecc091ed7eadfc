"""Deformable convolution and per-pixel dynamic filtering, in plain PyTorch.

Two operators of the M3R-CR networks usually come from compiled extensions; here they are
written with ordinary tensor operations so that the models run anywhere torch runs:

- :func:`deform_conv2d`: the modulated deformable convolution (DCNv2) with the semantics
  of ``torchvision.ops.deform_conv2d``: the same argument order, offset layout
  (``(dy, dx)`` pairs per offset group and kernel tap), modulation mask and zeros outside
  the image. Bilinear sampling is done by :func:`torch.nn.functional.grid_sample`, the
  convolution itself by one matrix product. Where torchvision is importable it can serve as
  a fast path (``backend="torchvision"``, or ``"auto"``).
- :func:`kernel2d_conv`: the per-pixel dynamic filter ("kernel2d", FAC) of GLF-CR and
  Align-CR: each pixel and channel has its own ``k x k`` kernel, the input is padded by
  replication.

:class:`DCNv2Pack` is the layer of BasicSR's ``PCDAlignment`` (parameters ``weight``,
``bias`` and the offset/mask predictor ``conv_offset``), so its state dict matches the
published checkpoints.
"""

from __future__ import annotations

import importlib
import math
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from torch import Tensor, nn

from ..exceptions import SchemaError, UsageError, argument

__all__ = [
    "DCNv2Pack",
    "deform_conv2d",
    "kernel2d_conv",
    "torchvision_available",
]

Backend = Literal["auto", "torch", "torchvision"]
_IntPair = int | tuple[int, int]

_TV_OPS: object | None = None
_TV_CHECKED = False


def _torchvision_ops() -> object | None:
    """``torchvision.ops`` when importable (looked up once), else ``None``."""
    global _TV_OPS, _TV_CHECKED
    if not _TV_CHECKED:
        _TV_CHECKED = True
        try:
            _TV_OPS = importlib.import_module("torchvision.ops")
        except Exception:  # torchvision absent or broken: the pure path serves
            _TV_OPS = None
    return _TV_OPS


def torchvision_available() -> bool:
    """Whether ``torchvision.ops.deform_conv2d`` can be used as a fast path."""
    return _torchvision_ops() is not None


def _pair(value: _IntPair) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntPair = 1,
    padding: _IntPair = 0,
    dilation: _IntPair = 1,
    mask: Tensor | None = None,
    *,
    backend: Backend = "torch",
) -> Tensor:
    """Modulated deformable 2-D convolution, as ``torchvision.ops.deform_conv2d``.

    Parameters
    ----------
    input
        (B, C_in, H, W) features.
    offset
        (B, 2 * G_off * kh * kw, H_out, W_out). For offset group ``g`` and kernel tap
        ``k = i * kw + j``, channel ``2 * (g * kh * kw + k)`` holds the vertical (row)
        offset and the next channel the horizontal (column) offset, in pixels.
    weight
        (C_out, C_in / groups, kh, kw); ``groups`` is ``C_in // weight.shape[1]``.
    bias
        (C_out,) or ``None``.
    stride, padding, dilation
        As for :func:`torch.nn.functional.conv2d`.
    mask
        (B, G_off * kh * kw, H_out, W_out) modulation scalars (DCNv2), or ``None`` for
        DCNv1 (all ones).
    backend
        ``"torch"`` (default): the pure PyTorch implementation. ``"torchvision"``: call
        ``torchvision.ops.deform_conv2d`` (raises ``ImportError`` without torchvision).
        ``"auto"``: torchvision when importable, else pure PyTorch.

    Returns
    -------
    Tensor
        (B, C_out, H_out, W_out).

    Raises
    ------
    SchemaError
        ``weight``, ``offset`` or ``mask`` does not fit ``input`` (the pure PyTorch
        backend checks; torchvision raises its own).
    UsageError
        An unknown ``backend``.

    Notes
    -----
    A sampling point ``(y, x)`` is read by bilinear interpolation; each of its four
    neighbours that falls outside the image contributes zero, exactly as torchvision's
    kernel does (and as ``grid_sample(padding_mode="zeros")`` does).
    """
    if backend not in ("auto", "torch", "torchvision"):
        raise UsageError(f"{argument('backend', backend)}: use 'auto', 'torch' or 'torchvision'")
    if backend != "torch":
        ops = _torchvision_ops()
        if ops is not None:
            return ops.deform_conv2d(  # type: ignore[attr-defined]
                input, offset, weight, bias, _pair(stride), _pair(padding), _pair(dilation), mask
            )
        if backend == "torchvision":
            raise ImportError("backend='torchvision' needs torchvision, which is not importable")
    return _deform_conv2d_torch(input, offset, weight, bias, stride, padding, dilation, mask)


def _deform_conv2d_torch(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: _IntPair,
    padding: _IntPair,
    dilation: _IntPair,
    mask: Tensor | None,
) -> Tensor:
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    b, c_in, h, w = x.shape
    c_out, c_in_per_group, kh, kw = weight.shape
    taps = kh * kw
    if c_in % c_in_per_group:
        raise SchemaError(
            f"{argument('weight')} has {c_in_per_group} input channels per group, which do "
            f"not divide the {c_in} of {argument('input')}"
        )
    n_groups = c_in // c_in_per_group
    if offset.shape[1] % (2 * taps):
        raise SchemaError(
            f"{argument('offset')} has {offset.shape[1]} channels, not a multiple of 2 * {taps} "
            "(the kernel's taps)"
        )
    n_off = offset.shape[1] // (2 * taps)
    if c_in % n_off:
        raise SchemaError(
            f"{argument('input')} has {c_in} channels, which the {n_off} offset groups of "
            f"{argument('offset')} do not split"
        )
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if offset.shape[-2:] != (h_out, w_out):
        raise SchemaError(
            f"{argument('offset')} is {tuple(offset.shape[-2:])} pixels, the output "
            f"{(h_out, w_out)}"
        )
    if mask is not None and mask.shape[1] != n_off * taps:
        raise SchemaError(
            f"{argument('mask')} has {mask.shape[1]} channels, expected {n_off * taps} (offset "
            "groups x taps)"
        )

    device = x.device
    # Positions in at least float32: in half precision a pixel coordinate near 100 keeps
    # only 1/16 pixel of resolution, too coarse for bilinear weights.
    dtype = torch.promote_types(x.dtype, torch.float32)
    # Regular sampling positions of every output pixel and kernel tap (before offsets).
    rows = torch.arange(h_out, device=device, dtype=dtype) * sh - ph
    cols = torch.arange(w_out, device=device, dtype=dtype) * sw - pw
    tap_rows = (torch.arange(kh, device=device, dtype=dtype) * dh).repeat_interleave(kw)
    tap_cols = (torch.arange(kw, device=device, dtype=dtype) * dw).repeat(kh)
    base_y = tap_rows.view(taps, 1, 1) + rows.view(1, h_out, 1)  # (K, Ho, 1)
    base_x = tap_cols.view(taps, 1, 1) + cols.view(1, 1, w_out)  # (K, 1, Wo)

    off = offset.to(dtype).reshape(b, n_off, taps, 2, h_out, w_out)
    sample_y = base_y + off[:, :, :, 0]  # (B, G, K, Ho, Wo), pixel units
    sample_x = base_x + off[:, :, :, 1]
    # Pixel -> grid_sample's [-1, 1] with align_corners=False (valid even for 1-pixel maps).
    grid = torch.stack(((2 * sample_x + 1) / w - 1, (2 * sample_y + 1) / h - 1), dim=-1)
    grid = grid.view(b * n_off, taps * h_out, w_out, 2)

    per_group = c_in // n_off
    sampled = F.grid_sample(
        x.reshape(b * n_off, per_group, h, w).to(dtype),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (B*G, C/G, K*Ho, Wo)
    sampled = sampled.reshape(b, n_off, per_group, taps, h_out, w_out)
    if mask is not None:
        sampled = sampled * mask.to(dtype).reshape(b, n_off, 1, taps, h_out, w_out)

    # im2col layout: channel-major, tap-minor, as weight.view(C_out, C_in * K) expects.
    columns = sampled.reshape(b, n_groups, c_in_per_group * taps, h_out * w_out).to(x.dtype)
    kernel = weight.reshape(n_groups, c_out // n_groups, c_in_per_group * taps)
    out = torch.matmul(kernel.unsqueeze(0), columns)  # (B, groups, C_out/groups, L)
    out = out.reshape(b, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out


class DCNv2Pack(nn.Module):
    """Modulated deformable convolution whose offsets come from a second feature map.

    The layer of BasicSR's ``PCDAlignment``: ``conv_offset(feat)`` predicts, per offset
    group and kernel tap, two offsets and a mask logit (chunks ``o1``, ``o2``, ``mask`` in
    that order along the channels); the offsets are ``cat(o1, o2)``, the mask is its
    sigmoid, and ``x`` is convolved by :func:`deform_conv2d`.

    Parameters
    ----------
    in_channels, out_channels
        Channels of ``x`` and of the result.
    kernel_size, stride, padding, dilation
        As for ``nn.Conv2d`` (shared by the deformable conv and ``conv_offset``).
    deformable_groups
        Offset groups; ``in_channels`` must be a multiple of it.
    bias
        Whether the deformable conv has a bias.
    backend
        Passed to :func:`deform_conv2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntPair = 3,
        stride: _IntPair = 1,
        padding: _IntPair = 1,
        dilation: _IntPair = 1,
        deformable_groups: int = 1,
        bias: bool = True,
        backend: Backend = "torch",
    ) -> None:
        super().__init__()
        if in_channels % deformable_groups:
            raise UsageError(
                f"{argument('in_channels', in_channels)}: not a multiple of "
                f"{argument('deformable_groups', deformable_groups)}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.deformable_groups = deformable_groups
        self.backend: Backend = backend
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(
            in_channels,
            deformable_groups * 3 * taps,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as BasicSR does: uniform weight, zero bias, zero offsets (mask 0.5)."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)  # type: ignore[arg-type]

    def offsets_and_mask(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """Offsets (B, 2*G*K, H, W) and sigmoid mask (B, G*K, H, W) predicted from ``feat``."""
        out = self.conv_offset(feat)
        o1, o2, mask_logits = torch.chunk(out, 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(mask_logits)

    def forward(self, x: Tensor, feat: Tensor) -> Tensor:
        """Convolve ``x`` at the positions predicted from ``feat``."""
        offset, mask = self.offsets_and_mask(feat)
        return deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            mask,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"padding={self.padding}, deformable_groups={self.deformable_groups}"
        )


def kernel2d_conv(feat: Tensor, kernel: Tensor, ksize: int) -> Tensor:
    """Filter every pixel and channel of ``feat`` with its own ``ksize x ksize`` kernel.

    Parameters
    ----------
    feat
        (B, C, H, W) features; padded by replication (not zeros) at the borders, as in the
        published ``kernel2d_conv``.
    kernel
        (B, C * ksize**2, H, W): channel ``c * ksize**2 + i * ksize + j`` weights the
        neighbour at row offset ``i - ksize // 2`` and column offset ``j - ksize // 2`` of
        channel ``c``.
    ksize
        Odd kernel size.

    Returns
    -------
    Tensor
        (B, C, H, W).

    Raises
    ------
    UsageError
        An even ``ksize``.
    SchemaError
        ``kernel`` is not (B, C * ksize**2, H, W).
    """
    if ksize % 2 != 1:
        raise UsageError(f"{argument('ksize', ksize)}: kernel2d_conv needs an odd kernel size")
    b, c, h, w = feat.shape
    taps = ksize * ksize
    if kernel.shape != (b, c * taps, h, w):
        raise SchemaError(
            f"{argument('kernel')} must be {(b, c * taps, h, w)}, not {tuple(kernel.shape)}"
        )
    pad = ksize // 2
    padded = F.pad(feat, (pad, pad, pad, pad), mode="replicate")
    weights = kernel.reshape(b, c, taps, h, w)
    # One multiply-add of a shifted view per kernel tap (k*k full-tensor ops, no loop over
    # pixels): an im2col buffer would be k*k times the feature map and is ~10x slower on CPU.
    out = padded[:, :, :h, :w] * weights[:, :, 0]
    for tap in range(1, taps):
        i, j = divmod(tap, ksize)
        out = out + padded[:, :, i : i + h, j : j + w] * weights[:, :, tap]
    return out
