"""Weighted soft-max cross-entropy against a hand computation."""

import math

import pytest
import torch

from biounet.losses import WeightedCrossEntropy, weighted_cross_entropy


def test_matches_hand_computation():
    scores = torch.tensor([[[[0.0, 2.0, -1.0]], [[1.0, 0.0, 3.0]]]])  # B=1, K=2, 1x3
    target = torch.tensor([[[1, 0, 1]]])
    weights = torch.tensor([[[1.0, 3.0, 0.5]]])
    expected = 0.0
    for a0, a1, label, weight in [(0, 1, 1, 1.0), (2, 0, 0, 3.0), (-1, 3, 1, 0.5)]:
        chosen = a1 if label == 1 else a0
        log_p = chosen - math.log(math.exp(a0) + math.exp(a1))  # eq. 1 soft-max
        expected -= weight * log_p
    expected /= 3
    assert weighted_cross_entropy(scores, target, weights).item() == pytest.approx(expected, rel=1e-6)
    assert WeightedCrossEntropy()(scores, target, weights).item() == pytest.approx(expected, rel=1e-6)


def test_independent_of_tile_size():
    scores = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    target = (torch.arange(64).reshape(1, 8, 8) % 2)
    small = weighted_cross_entropy(scores, target)
    tiled = weighted_cross_entropy(scores.repeat(1, 1, 2, 2), target.repeat(1, 2, 2))
    assert tiled.item() == pytest.approx(small.item(), rel=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError, match="do not match"):
        weighted_cross_entropy(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="weights shape"):
        weighted_cross_entropy(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 3))
