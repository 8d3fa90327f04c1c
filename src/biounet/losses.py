"""Pixel-wise weighted soft-max cross-entropy, eq. 1 of Ronneberger et al. 2015."""

from __future__ import annotations

import torch
import torch.nn.functional as functional
from torch import nn


def weighted_cross_entropy(
    scores: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the mean over pixels of w(x) * -log p_l(x)(x), eq. 1 with the weights of eq. 2.

    The paper's energy is the *sum* over all pixels; the mean divides it by the number
    of pixels, so the learning rate means the same for any tile size or batch size.

    Args:
        scores: (B, K, *spatial) unnormalised class scores a_k(x).
        target: (B, *spatial) integer true class l(x) in [0, K).
        weights: (B, *spatial) w(x); None weighs every pixel 1.

    Example:
        >>> scores = torch.tensor([[[[0.0, 2.0]], [[1.0, 0.0]]]])  # B=1, K=2, 1x2 pixels
        >>> target = torch.tensor([[[1, 0]]])
        >>> round(weighted_cross_entropy(scores, target, torch.tensor([[[1.0, 3.0]]])).item(), 4)
        0.347
    """
    if scores.ndim != target.ndim + 1 or scores.shape[:1] + scores.shape[2:] != target.shape:
        raise ValueError(
            f"scores (B, K, ...) {tuple(scores.shape)} and target (B, ...) "
            f"{tuple(target.shape)} do not match"
        )
    per_pixel = functional.cross_entropy(scores, target.long(), reduction="none")
    if weights is not None:
        if weights.shape != target.shape:
            raise ValueError(
                f"weights shape {tuple(weights.shape)} must equal target shape "
                f"{tuple(target.shape)}"
            )
        per_pixel = per_pixel * weights
    return per_pixel.mean()


class WeightedCrossEntropy(nn.Module):
    """Module form of `weighted_cross_entropy`."""

    def forward(
        self, scores: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return weighted_cross_entropy(scores, target, weights)
