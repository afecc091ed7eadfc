"""The operators and blocks under the models: deformable conv, dynamic filter, windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from m3rcr_xr.exceptions import SchemaError, UsageError
from m3rcr_xr.models import deform_conv2d, kernel2d_conv, torchvision_available
from m3rcr_xr.models.attention import (
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from m3rcr_xr.models.deform import DCNv2Pack
from m3rcr_xr.models.layers import DropPath, WNConv2d, pixel_reshuffle

GOLDEN = ("reference", "golden")


def _golden(shared_dir: Path, name: str) -> Path:
    path = shared_dir.joinpath(*GOLDEN, name)
    if not path.is_file():
        pytest.fail(f"reference file missing: {path}")
    return path


# --- modulated deformable convolution ---------------------------------------------------


def test_deform_conv2d_reproduces_reference_case(shared_dir: Path) -> None:
    case = np.load(_golden(shared_dir, "deform_conv2d_case.npz"))
    t = {k: torch.from_numpy(case[k]) for k in case.files}
    out = deform_conv2d(t["x"], t["offset"], t["weight"], t["bias"], 1, 1, 1, t["mask"])
    assert out.shape == t["out"].shape
    assert (out - t["out"]).abs().max().item() < 1e-4
    # The case tells the offset layout apart: (dx, dy) instead of (dy, dx) fails.
    swapped = t["offset"].view(1, 8, 9, 2, 24, 24).flip(3).reshape(1, 144, 24, 24)
    wrong = deform_conv2d(t["x"], swapped, t["weight"], t["bias"], 1, 1, 1, t["mask"])
    assert (wrong - t["out"]).abs().max().item() > 1e-2


@settings(max_examples=25, deadline=None)
@given(
    c_in=st.integers(1, 4),
    groups=st.sampled_from([1, 2]),
    c_out_per_group=st.integers(1, 3),
    k=st.sampled_from([1, 2, 3]),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    size=st.integers(4, 9),
    seed=st.integers(0, 2**16),
)
def test_deform_conv2d_with_zero_offsets_is_conv2d(
    c_in: int,
    groups: int,
    c_out_per_group: int,
    k: int,
    stride: int,
    padding: int,
    dilation: int,
    size: int,
    seed: int,
) -> None:
    assume(size + 2 * padding >= dilation * (k - 1) + 1)  # the kernel fits the input
    gen = torch.Generator().manual_seed(seed)
    c_in *= groups
    c_out = c_out_per_group * groups
    x = torch.randn(2, c_in, size, size + 1, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, k, k, generator=gen, dtype=torch.float64)
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    expected = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    h_out, w_out = expected.shape[-2:]
    n_off = c_in  # one offset group per channel: the most finely split layout
    offset = torch.zeros(2, 2 * n_off * k * k, h_out, w_out, dtype=torch.float64)
    mask = torch.ones(2, n_off * k * k, h_out, w_out, dtype=torch.float64)
    out = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(
        deform_conv2d(x, offset, weight, bias, stride, padding, dilation), expected
    )


def test_deform_conv2d_integer_offsets_shift_and_zero_outside() -> None:
    # A 1x1 deformable conv with offset (+1 row, -2 cols) reads x[i+1, j-2], zero outside.
    x = torch.arange(30, dtype=torch.float64).view(1, 1, 5, 6) + 1
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    offset = torch.zeros(1, 2, 5, 6, dtype=torch.float64)
    offset[:, 0] = 1.0
    offset[:, 1] = -2.0
    out = deform_conv2d(x, offset, weight)
    expected = torch.zeros_like(x)
    expected[..., :4, 2:] = x[..., 1:, :4]
    torch.testing.assert_close(out, expected)


def test_deform_conv2d_bilinear_half_pixel_and_mask() -> None:
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]], dtype=torch.float64)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    offset = torch.full((1, 2, 2, 2), 0.5, dtype=torch.float64)
    mask = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    out = deform_conv2d(x, offset, weight, mask=mask)
    # (0.5, 0.5) is the mean of the four pixels; beyond the last row/column the zero
    # neighbours count (torchvision semantics, no clamping to the border).
    expected = 0.5 * torch.tensor([[4.0, 2.5], [3.0, 7.0 / 4]], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], expected)


def test_deform_conv2d_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    # Fractional offsets away from integers, where bilinear sampling is differentiable.
    offset = torch.rand(1, 2 * 2 * 9, 5, 5, generator=gen, dtype=torch.float64) * 0.6 + 0.2
    offset.requires_grad_(True)
    mask = torch.rand(1, 2 * 9, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(args[0], args[1], args[2], args[3], 1, 1, 1, args[4])

    assert torch.autograd.gradcheck(fn, (x, offset, weight, bias, mask))


def test_deform_conv2d_rejects_bad_shapes() -> None:
    x = torch.zeros(1, 4, 6, 6)
    weight = torch.zeros(2, 4, 3, 3)
    with pytest.raises(SchemaError, match="offset has 17 channels, not a multiple of 2 . 9"):
        deform_conv2d(x, torch.zeros(1, 17, 6, 6), weight, padding=1)
    with pytest.raises(SchemaError, match=r"offset is \(5, 5\) pixels, the output \(6, 6\)"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 5), weight, padding=1)
    with pytest.raises(SchemaError, match="mask has 8 channels, expected 9"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), weight, padding=1, mask=torch.ones(1, 8, 6, 6))
    with pytest.raises(SchemaError, match="weight has 3 input channels per group"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), torch.zeros(2, 3, 3, 3), padding=1)
    with pytest.raises(SchemaError, match="input has 4 channels, which the 3 offset groups"):
        deform_conv2d(x, torch.zeros(1, 54, 6, 6), weight, padding=1)
    with pytest.raises(UsageError, match="backend='cuda': use 'auto', 'torch' or 'torchvision'"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), weight, padding=1, backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="in_channels=8: not a multiple of deformable_groups=3"):
        DCNv2Pack(8, 6, 3, padding=1, deformable_groups=3)


def test_dcnv2pack_layout_and_init() -> None:
    layer = DCNv2Pack(8, 6, 3, padding=1, deformable_groups=2)
    assert list(layer.state_dict()) == ["weight", "bias", "conv_offset.weight", "conv_offset.bias"]
    assert layer.conv_offset.weight.shape == (2 * 3 * 9, 8, 3, 3)
    x, feat = torch.randn(1, 8, 7, 7), torch.randn(1, 8, 7, 7)
    offset, mask = layer.offsets_and_mask(feat)
    assert offset.shape == (1, 36, 7, 7) and mask.shape == (1, 18, 7, 7)
    # Fresh layer: zero offsets and a 0.5 mask, i.e. half a plain convolution.
    torch.testing.assert_close(
        layer(x, feat), F.conv2d(x, layer.weight * 0.5, padding=1) + layer.bias.view(1, -1, 1, 1)
    )


@pytest.mark.skipif(not torchvision_available(), reason="torchvision not importable")
def test_torchvision_fast_path_agrees() -> None:  # pragma: no cover - needs torchvision
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 11, 9, generator=gen)
    offset = torch.randn(2, 2 * 4 * 9, 11, 9, generator=gen) * 3
    mask = torch.rand(2, 4 * 9, 11, 9, generator=gen)
    weight = torch.randn(5, 8, 3, 3, generator=gen)
    bias = torch.randn(5, generator=gen)
    ours = deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask, backend="torch")
    theirs = deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask, backend="torchvision")
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_torchvision_backend_unavailable_is_clear() -> None:
    if torchvision_available():  # pragma: no cover - depends on the environment
        pytest.skip("torchvision is importable here")
    x = torch.zeros(1, 1, 3, 3)
    with pytest.raises(ImportError, match="torchvision"):
        deform_conv2d(x, torch.zeros(1, 2, 3, 3), torch.ones(1, 1, 1, 1), backend="torchvision")
    # "auto" falls back to the pure implementation.
    out = deform_conv2d(x + 1, torch.zeros(1, 2, 3, 3), torch.ones(1, 1, 1, 1), backend="auto")
    torch.testing.assert_close(out, x + 1)


# --- per-pixel dynamic filtering ---------------------------------------------------------


def _kernel2d_published(feat: torch.Tensor, kernel: torch.Tensor, ksize: int) -> torch.Tensor:
    """Transcription of the published ``kernel2d_conv`` (unfold, transposed taps)."""
    channels = feat.size(1)
    n, _, h, w = kernel.size()
    pad = (ksize - 1) // 2
    feat = F.pad(feat, (pad, pad, pad, pad), mode="replicate")
    feat = feat.unfold(2, ksize, 1).unfold(3, ksize, 1)
    feat = feat.permute(0, 2, 3, 1, 5, 4).contiguous().reshape(n, h, w, channels, -1)
    kernel = kernel.permute(0, 2, 3, 1).reshape(n, h, w, channels, ksize, ksize)
    kernel = kernel.permute(0, 1, 2, 3, 5, 4).reshape(n, h, w, channels, -1)
    return torch.sum(feat * kernel, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("ksize", [1, 3, 5])
def test_kernel2d_matches_published_formulation(ksize: int) -> None:
    gen = torch.Generator().manual_seed(ksize)
    feat = torch.randn(2, 3, 7, 6, generator=gen, dtype=torch.float64)
    kernel = torch.randn(2, 3 * ksize * ksize, 7, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        kernel2d_conv(feat, kernel, ksize), _kernel2d_published(feat, kernel, ksize)
    )


def test_kernel2d_tap_layout_and_replicate_border() -> None:
    feat = torch.arange(12, dtype=torch.float64).view(1, 1, 3, 4)
    kernel = torch.zeros(1, 9, 3, 4, dtype=torch.float64)
    kernel[:, 5] = 1.0  # tap (row 1, col 2): the right-hand neighbour
    expected = torch.cat((feat[..., 1:], feat[..., -1:]), dim=-1)  # replicated last column
    torch.testing.assert_close(kernel2d_conv(feat, kernel, 3), expected)
    with pytest.raises(UsageError, match="ksize=2: kernel2d_conv needs an odd kernel size"):
        kernel2d_conv(feat, torch.zeros(1, 4, 3, 4), 2)
    with pytest.raises(SchemaError, match="kernel must be"):
        kernel2d_conv(feat, torch.zeros(1, 8, 3, 4), 3)


# --- small blocks --------------------------------------------------------------------------


def test_pixel_reshuffle_is_the_published_one() -> None:
    x = torch.randn(2, 3, 8, 6)
    b, c, h, w = x.shape
    published = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 12, 4, 3)
    assert torch.equal(pixel_reshuffle(x, 2), published)


def test_wnconv2d_is_weight_norm_with_legacy_names() -> None:
    conv = WNConv2d(5, 7, 3, padding=1)
    assert list(conv.state_dict()) == ["bias", "weight_g", "weight_v"]
    assert conv.weight_g.shape == (7, 1, 1, 1) and conv.weight_v.shape == (7, 5, 3, 3)
    with torch.no_grad():
        conv.weight_g.mul_(torch.rand(7, 1, 1, 1) + 0.5)
    ref = torch.nn.Conv2d(5, 7, 3, padding=1)
    ref = torch.nn.utils.parametrizations.weight_norm(ref)
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(conv.weight_g)
        ref.parametrizations.weight.original1.copy_(conv.weight_v)
        ref.bias.copy_(conv.bias)
    x = torch.randn(2, 5, 6, 6)
    torch.testing.assert_close(conv(x), ref(x))


def _published_attn_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    img_mask = torch.zeros((1, h, w, 1))
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    cnt = 0
    for hs in slices:
        for ws in slices:
            img_mask[:, hs, ws, :] = cnt
            cnt += 1
    windows = window_partition(img_mask, window).view(-1, window * window)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@pytest.mark.parametrize(("size", "window"), [(16, 4), (80, 8), (24, 8)])
def test_shifted_window_mask_matches_published(size: int, window: int) -> None:
    torch.testing.assert_close(
        shifted_window_mask(size, size, window, window // 2),
        _published_attn_mask(size, size, window, window // 2),
    )


def test_windows_round_trip_and_relative_index() -> None:
    x = torch.randn(2, 8, 12, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 16, 3)
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)
    assert torch.equal(windows[1], x[0, 0:4, 4:8].reshape(16, 3))
    index = relative_position_index(8)
    assert index.shape == (64, 64) and index.min() == 0 and index.max() == 224
    assert index[0, 0] == 7 * 15 + 7  # zero displacement: centre of the table


def test_drop_path_only_in_training() -> None:
    layer = DropPath(0.5)
    x = torch.ones(64, 3)
    assert torch.equal(layer.eval()(x), x)
    kept = layer.train()(x)[:, 0]
    assert set(kept.unique().tolist()) <= {0.0, 2.0}


def test_deform_conv2d_half_precision_keeps_positions_exact() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 96, 96, generator=gen).bfloat16()
    offset = (torch.rand(1, 2 * 9, 96, 96, generator=gen) * 3 - 1.5).bfloat16()
    weight = torch.randn(2, 2, 3, 3, generator=gen).bfloat16()
    low = deform_conv2d(x, offset, weight, padding=1)
    ref = deform_conv2d(x.float(), offset.float(), weight.float(), padding=1)
    assert low.dtype == torch.bfloat16
    # Only the bf16 rounding of the result (about 0.04 here); sampling positions computed
    # in bf16 would be off by up to 1/4 pixel at this size and the error would exceed 5.
    assert (low.float() - ref).abs().max().item() < 0.1


def test_operators_accept_channels_last() -> None:
    cl = torch.channels_last
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 9, 7, generator=gen)
    offset = torch.randn(2, 2 * 4 * 9, 9, 7, generator=gen)
    mask = torch.rand(2, 4 * 9, 9, 7, generator=gen)
    weight = torch.randn(5, 8, 3, 3, generator=gen)
    kernel = torch.randn(2, 8 * 25, 9, 7, generator=gen)
    expected = deform_conv2d(x, offset, weight, None, 1, 1, 1, mask)
    out = deform_conv2d(
        x.contiguous(memory_format=cl),
        offset.contiguous(memory_format=cl),
        weight,
        None,
        1,
        1,
        1,
        mask.contiguous(memory_format=cl),
    )
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(
        kernel2d_conv(x.contiguous(memory_format=cl), kernel.contiguous(memory_format=cl), 5),
        kernel2d_conv(x, kernel, 5),
    )
