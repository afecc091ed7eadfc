"""Training losses of the published networks.

- :func:`ec_charbonnier_loss` (Align-CR, ``Align-CR/losses.py``): a Charbonnier-like
  penalty ``((pred - target)^2 + eps^2)^alpha`` (``eps = 1e-3``, ``alpha = 0.45``) weighted
  per pixel by ``1 + 5 * cloudmask``, averaged.
- :func:`carl_loss` (DSen2-CR, ``baselines/DSen2-CR/losses.py``): cloud-adaptive
  regularised loss: clear pixels are compared to the cloudy input, cloudy pixels to the
  target, plus the L1 distance to the target over all pixels.

Both average per sample, then over the batch, as the published loops do; the cloud mask
may be (B, H, W) (as the published loader gives it) or (B, 1 or C, H, W).

Each takes ``valid`` too (the shape of the cloud mask; 1 where the pixel has data): the
means then run over the valid pixels of each sample, and over the samples that have one
(a sample without contributes nothing). With every pixel valid, or ``valid=None``, the
loss is the published one, computed the published way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..exceptions import SchemaError, argument

__all__ = ["CARLLoss", "ECCharbonnierLoss", "carl_loss", "ec_charbonnier_loss", "l1_loss"]


def _mask(cloudmask: Tensor, like: Tensor, name: str = "cloudmask") -> Tensor:
    """``cloudmask`` (the argument ``name``) with a channel axis, in the dtype of ``like``."""
    if cloudmask.ndim == like.ndim - 1:
        cloudmask = cloudmask.unsqueeze(1)
    if cloudmask.ndim != like.ndim or cloudmask.shape[0] != like.shape[0]:
        raise SchemaError(
            f"{argument(name)} {tuple(cloudmask.shape)} does not fit {argument('pred')} "
            f"{tuple(like.shape)}"
        )
    return cloudmask.to(like.dtype)


def _per_sample_mean(x: Tensor, weights: Tensor | None = None) -> Tensor:
    """(B,) means of (B, ...) ``x``; with ``weights`` (0 or 1, broadcast to ``x``) over
    the pixels weighted 1 (0 for a sample without one)."""
    if weights is None:
        return x.flatten(1).mean(dim=1)
    counts = weights.expand_as(x).flatten(1).sum(dim=1)
    return (x * weights).flatten(1).sum(dim=1) / counts.clamp(min=1)


def _valid_weights(valid: Tensor | None, like: Tensor) -> Tensor | None:
    """``valid`` as weights shaped for ``like``; None when every pixel is valid (the
    published means then apply unchanged)."""
    if valid is None:
        return None
    weights = (_mask(valid, like, "valid") > 0).to(like.dtype)
    return None if bool(weights.all()) else weights


def _batch_mean(per_sample: Tensor, weights: Tensor | None) -> Tensor:
    """The mean of per-sample losses, over the samples with a valid pixel."""
    if weights is None:
        return per_sample.mean()
    has_data = weights.flatten(1).any(dim=1)
    if not bool(has_data.any()):
        return (per_sample * 0).sum()  # zero, still part of the graph
    return per_sample[has_data].mean()


def l1_loss(pred: Tensor, target: Tensor, *, valid: Tensor | None = None) -> Tensor:
    """Mean absolute error of GLF-CR (``torch.nn.functional.l1_loss``); with ``valid``,
    over the valid pixels of each sample, then over the samples.

    Examples
    --------
    >>> pred, target = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    >>> target[..., 0] = 3.0  # the first column: far off, and no data
    >>> float(l1_loss(pred, target)), float(l1_loss(pred, target, valid=torch.ones(1, 2, 2)))
    (2.0, 2.0)
    >>> float(l1_loss(pred, target, valid=torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])))
    1.0
    """
    weights = _valid_weights(valid, pred)
    if weights is None:
        return nn.functional.l1_loss(pred, target)
    return _batch_mean(_per_sample_mean(torch.abs(pred - target), weights), weights)


def ec_charbonnier_loss(
    pred: Tensor,
    target: Tensor,
    cloudmask: Tensor,
    *,
    cloud_weight: float = 5.0,
    alpha: float = 0.45,
    epsilon: float = 1e-3,
    valid: Tensor | None = None,
) -> Tensor:
    """Edge/cloud-weighted Charbonnier loss of Align-CR.

    ``mean((1 + cloud_weight * cloudmask) * ((pred - target)^2 + epsilon^2)^alpha)``.

    Parameters
    ----------
    pred, target
        (B, C, H, W).
    cloudmask
        (B, H, W) or (B, 1, H, W); 1 on clouds.
    valid
        As ``cloudmask``; 1 where the pixel has data (None: every pixel).
    """
    mask = _mask(cloudmask, pred)
    weights = _valid_weights(valid, pred)
    penalty = torch.pow((pred - target) ** 2 + epsilon**2, alpha)
    weighted = (1.0 + cloud_weight * mask) * penalty
    return _batch_mean(_per_sample_mean(weighted, weights), weights)


def carl_loss(
    pred: Tensor,
    target: Tensor,
    cloudy: Tensor,
    cloudmask: Tensor,
    *,
    weight: float = 1.0,
    valid: Tensor | None = None,
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
    valid
        As ``cloudmask``; 1 where the pixel has data (None: every pixel).
    """
    mask = _mask(cloudmask, pred)
    weights = _valid_weights(valid, pred)
    to_target = torch.abs(pred - target)
    adaptive = (1.0 - mask) * torch.abs(pred - cloudy) + mask * to_target
    per_sample = _per_sample_mean(adaptive, weights) + weight * _per_sample_mean(to_target, weights)
    return _batch_mean(per_sample, weights)


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
