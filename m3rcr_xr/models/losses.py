"""Training losses of the published networks.

- :func:`ec_charbonnier_loss` (Align-CR, ``Align-CR/losses.py``): a Charbonnier-like
  penalty ``((pred - target)^2 + eps^2)^alpha`` (``eps = 1e-3``, ``alpha = 0.45``) weighted
  per pixel by ``1 + 5 * cloudmask``, averaged.
- :func:`carl_loss` (DSen2-CR, ``baselines/DSen2-CR/losses.py``): cloud-adaptive
  regularised loss: clear pixels are compared to the cloudy input, cloudy pixels to the
  target, plus the L1 distance to the target over all pixels.

Both average per sample, then over the batch, as the published loops do; the cloud mask
may be (B, H, W) (as the published loader gives it) or (B, 1 or C, H, W).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CARLLoss", "ECCharbonnierLoss", "carl_loss", "ec_charbonnier_loss"]


def _mask(cloudmask: Tensor, like: Tensor) -> Tensor:
    if cloudmask.ndim == like.ndim - 1:
        cloudmask = cloudmask.unsqueeze(1)
    if cloudmask.ndim != like.ndim or cloudmask.shape[0] != like.shape[0]:
        raise ValueError(
            f"cloudmask {tuple(cloudmask.shape)} does not fit predictions {tuple(like.shape)}"
        )
    return cloudmask.to(like.dtype)


def _per_sample_mean(x: Tensor) -> Tensor:
    return x.flatten(1).mean(dim=1)


def ec_charbonnier_loss(
    pred: Tensor,
    target: Tensor,
    cloudmask: Tensor,
    *,
    cloud_weight: float = 5.0,
    alpha: float = 0.45,
    epsilon: float = 1e-3,
) -> Tensor:
    """Edge/cloud-weighted Charbonnier loss of Align-CR.

    ``mean((1 + cloud_weight * cloudmask) * ((pred - target)^2 + epsilon^2)^alpha)``.

    Parameters
    ----------
    pred, target
        (B, C, H, W).
    cloudmask
        (B, H, W) or (B, 1, H, W); 1 on clouds.
    """
    mask = _mask(cloudmask, pred)
    penalty = torch.pow((pred - target) ** 2 + epsilon**2, alpha)
    weighted = (1.0 + cloud_weight * mask) * penalty
    return _per_sample_mean(weighted).mean()


def carl_loss(
    pred: Tensor,
    target: Tensor,
    cloudy: Tensor,
    cloudmask: Tensor,
    *,
    weight: float = 1.0,
) -> Tensor:
    """Cloud-adaptive regularised loss (CARL) of DSen2-CR.

    ``mean((1 - m) * |pred - cloudy| + m * |pred - target|) + weight * mean(|pred - target|)``
    per sample, averaged over the batch.

    Parameters
    ----------
    pred, target, cloudy
        (B, C, H, W).
    cloudmask
        (B, H, W) or (B, 1, H, W); 1 on clouds.
    """
    mask = _mask(cloudmask, pred)
    to_target = torch.abs(pred - target)
    adaptive = (1.0 - mask) * torch.abs(pred - cloudy) + mask * to_target
    per_sample = _per_sample_mean(adaptive) + weight * _per_sample_mean(to_target)
    return per_sample.mean()


class ECCharbonnierLoss(nn.Module):
    """Module form of :func:`ec_charbonnier_loss`: ``loss(pred, target, cloudmask)``."""

    def __init__(
        self, cloud_weight: float = 5.0, alpha: float = 0.45, epsilon: float = 1e-3
    ) -> None:
        super().__init__()
        self.cloud_weight = cloud_weight
        self.alpha = alpha
        self.epsilon = epsilon

    def forward(self, pred: Tensor, target: Tensor, cloudmask: Tensor) -> Tensor:
        return ec_charbonnier_loss(
            pred,
            target,
            cloudmask,
            cloud_weight=self.cloud_weight,
            alpha=self.alpha,
            epsilon=self.epsilon,
        )


class CARLLoss(nn.Module):
    """Module form of :func:`carl_loss`: ``loss(pred, target, cloudy, cloudmask)``."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, pred: Tensor, target: Tensor, cloudy: Tensor, cloudmask: Tensor) -> Tensor:
        return carl_loss(pred, target, cloudy, cloudmask, weight=self.weight)
