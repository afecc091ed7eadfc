"""A small land-cover classifier: a fully convolutional U-Net on the optical bands.

M3R-CR pairs every quartet with an ESA WorldCover map; this network turns an optical
image (a cloud-free target, a cloudy input or a cloud-removal result) into per-pixel
WorldCover classes, so that a result can be judged by whether it keeps the meaning of
the ground (:func:`m3rcr_xr.metrics.evaluate_semantic`). The published M3R-CR code has
no classifier; this one is ours.

Input: the 4 optical bands normalised as for the cloud-removal networks
(:func:`m3rcr_xr.normalize.normalize_optical`). Output: one logit per class of
``landcover.class_names(level)`` (7 at level 1, 11 at level 2). Any tile whose sides
are multiples of ``2 ** depth`` works (the spec's ``tile_multiple``).

>>> import torch
>>> net = LandCoverUNet(level=2, depth=2, features=4).eval()
>>> net(torch.rand(1, 4, 16, 16)).shape
torch.Size([1, 11, 16, 16])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..exceptions import ModelConfigError
from ..landcover import class_names
from .interface import OPTICAL_BANDS, ModelSpec, Network, check_size

__all__ = ["MAX_DEPTH", "LandCoverUNet"]

#: the most levels: tile sides are multiples of ``2 ** depth`` (65536 pixels at 16), and
#: the channels double at each level, so that a deeper one is no network to build
MAX_DEPTH = 16


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LandCoverUNet(Network):
    """U-Net of ``depth`` down/up levels: (B, 4, H, W) optical to (B, classes, H, W) logits.

    Parameters
    ----------
    level
        WorldCover class level of the output: 1 (seven groups) or 2 (eleven classes).
    n_classes
        Output channels; must be the number of classes at ``level`` (it is part of the
        configuration so that a checkpoint's configuration records it). None: that number.
    depth
        Down-sampling levels (:data:`MAX_DEPTH` at most); tile sides must be multiples
        of ``2 ** depth``.
    features
        Channels of the first level, doubled at each level down.
    """

    name = "landcover_unet"

    def __init__(
        self, level: int = 1, n_classes: int | None = None, depth: int = 4, features: int = 32
    ) -> None:
        super().__init__()
        if level not in (1, 2):
            raise ModelConfigError(f"{self.name}: level={level!r} must be 1 or 2")
        classes = class_names(level)
        if n_classes is not None and n_classes != len(classes):
            raise ModelConfigError(
                f"{self.name}: n_classes={n_classes} does not fit level={level}, which has "
                f"{len(classes)} classes ({', '.join(classes)})"
            )
        if not 1 <= depth <= MAX_DEPTH or features < 1:
            raise ModelConfigError(
                f"{self.name}: need 1 <= depth <= {MAX_DEPTH} and features >= 1, got "
                f"depth={depth}, features={features}"
            )
        self.spec = ModelSpec(
            name=self.name,
            tile_size=None,
            tile_multiple=2**depth,
            sar_polarizations=(),
            residual=False,
            channels_last=True,
            task="landcover",
            classes=classes,
            config={
                "level": level,
                "n_classes": len(classes),
                "depth": depth,
                "features": features,
            },
        )
        widths = [features * 2**i for i in range(depth + 1)]
        inputs = [len(OPTICAL_BANDS), *widths[:-2]]
        self.down = nn.ModuleList(_block(a, b) for a, b in zip(inputs, widths[:-1], strict=True))
        self.bottom = _block(widths[-2], widths[-1])
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
            for i in reversed(range(depth))
        )
        self.merge = nn.ModuleList(_block(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.classify = nn.Conv2d(features, len(classes), 1)

    def forward(self, optical: Tensor, sar: Tensor | None = None) -> Tensor:
        """Class logits of each pixel.

        Parameters
        ----------
        optical
            (B, 4, H, W) normalised optical image (blue, green, red, nir).
        sar
            Not used: None or (B, 0, H, W), which is what the tiling engine passes to a
            network whose spec lists no SAR polarizations.
        """
        if optical.ndim != 4 or optical.shape[1] != len(OPTICAL_BANDS):
            raise ModelConfigError(
                f"{self.name}: optical must be (B, {len(OPTICAL_BANDS)}, H, W) "
                f"({', '.join(OPTICAL_BANDS)}), got {tuple(optical.shape)}"
            )
        if sar is not None and sar.shape[1] != 0:
            raise ModelConfigError(f"{self.name}: takes no SAR, got {tuple(sar.shape)}")
        check_size(self.spec, (int(optical.shape[-2]), int(optical.shape[-1])))
        skips, x = [], optical
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = merge(torch.cat((up(x), skip), dim=1))
        return self.classify(x)
