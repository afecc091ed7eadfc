"""DSen2-CR as trained in the M3R-CR benchmark: an EDSR-style residual network.

Published code: ``baselines/DSen2-CR/EDSR.py`` (class ``EDSR``) of ``zhu-xlab/M3R-CR``.
The optical and SAR inputs are concatenated (6 channels), go through a conv head, a stack
of residual blocks with scaled residuals and a last conv to 4 channels; the result is a
residual added to the cloudy input. Fully convolutional: any tile size works.

State-dict keys: ``head.0``, ``body.{i}.body.{0,2}`` for the residual blocks and
``body.{n_resblocks}`` for the last conv.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..exceptions import ModelConfigError
from .interface import CloudRemovalNet, ModelSpec

__all__ = ["DSen2CR", "ResBlock"]


class ResBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3, scaled by ``res_scale`` and added to the input (EDSR)."""

    def __init__(self, n_feats: int, kernel_size: int = 3, res_scale: float = 1.0) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, kernel_size, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(n_feats, n_feats, kernel_size, padding=pad),
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) * self.res_scale + x


class DSen2CR(CloudRemovalNet):
    """DSen2-CR (the published ``EDSR`` of M3R-CR's DSen2-CR baseline).

    Parameters
    ----------
    n_resblocks
        Residual blocks (published: 16).
    n_feats
        Feature channels (published: 256).
    res_scale
        Scale of each block's residual (published: 0.1).
    kernel_size
        Convolution kernel size (published: 3).

    Examples
    --------
    >>> import torch
    >>> net = DSen2CR(n_resblocks=2, n_feats=8).eval()
    >>> net(torch.rand(1, 4, 20, 20), torch.rand(1, 2, 20, 20)).shape
    torch.Size([1, 4, 20, 20])
    """

    name = "dsen2_cr"

    def __init__(
        self,
        n_resblocks: int = 16,
        n_feats: int = 256,
        res_scale: float = 0.1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if n_resblocks < 0 or n_feats < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ModelConfigError(
                "dsen2_cr: need n_resblocks >= 0, n_feats >= 1 and an odd kernel_size, got "
                f"n_resblocks={n_resblocks}, n_feats={n_feats}, kernel_size={kernel_size}"
            )
        self.spec = ModelSpec(
            name=self.name,
            tile_size=None,
            tile_multiple=1,
            channels_last=True,
            config={
                "n_resblocks": n_resblocks,
                "n_feats": n_feats,
                "res_scale": res_scale,
                "kernel_size": kernel_size,
            },
        )
        pad = kernel_size // 2
        in_channels = self.spec.optical_channels + self.spec.sar_channels
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, n_feats, kernel_size, padding=pad), nn.ReLU(inplace=True)
        )
        self.body = nn.Sequential(
            *(ResBlock(n_feats, kernel_size, res_scale) for _ in range(n_resblocks)),
            nn.Conv2d(n_feats, self.spec.optical_channels, kernel_size, padding=pad),
        )

    def output_conv(self) -> nn.Conv2d:
        return self.body[-1]  # type: ignore[return-value]

    def forward(self, cloudy: Tensor, sar: Tensor) -> Tensor:
        """Predict the cloud-free image (any tile size); see :meth:`CloudRemovalNet.forward`."""
        self.check_inputs(cloudy, sar)
        return cloudy + self.body(self.head(torch.cat((cloudy, sar), dim=1)))
