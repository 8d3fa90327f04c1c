"""Weighted soft-max cross-entropy against a hand computation; skeleton recall against loops."""

import math

import numpy as np
import pytest
import torch

from biounet.losses import (
    WeightedCrossEntropy,
    skeleton_recall,
    target_skeletons,
    weighted_cross_entropy,
)


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


def reference_skeleton_recall(scores, skeletons):
    """Loop over classes and pixels: 1 - mean over classes with skeleton of the soft recall."""
    probabilities = torch.softmax(scores, dim=1).numpy()
    skeletons = skeletons.numpy()
    recalls = []
    for k in range(scores.shape[1]):
        covered = length = 0.0
        for index in np.ndindex(skeletons[:, k].shape):
            item, *pixel = index
            length += skeletons[(item, k, *pixel)]
            covered += probabilities[(item, k, *pixel)] * skeletons[(item, k, *pixel)]
        if length:
            recalls.append(covered / length)
    return 1.0 - sum(recalls) / len(recalls)


def membrane_target(batch=2):
    target = torch.ones(batch, 24, 30, dtype=torch.int64)
    target[:, 10:13, :] = 0  # a 3-pixel membrane between two cells
    target[:, :, 14:16] = 0
    return target


def reference_tubes(labels, n_classes):
    """Per item, class and plane: skimage's skeleton, dilated twice by a cross, in the class."""
    from skimage.morphology import dilation, skeletonize

    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    out = np.zeros((labels.shape[0], n_classes, *labels.shape[1:]), np.float32)
    for item in range(labels.shape[0]):
        for k in range(n_classes):
            for plane in np.ndindex(labels.shape[1:-2]):
                mask = labels[(item, *plane)] == k
                tube = dilation(dilation(skeletonize(mask), cross), cross) & mask
                out[(item, k, *plane)] = tube
    return out


@pytest.mark.parametrize("shape", [(2, 40, 52), (1, 3, 30, 34)])
def test_tubed_skeletons_equal_the_plane_by_plane_reference(shape):
    from scipy import ndimage

    rng = np.random.default_rng(2)
    # blobs of three classes with thin and thick parts
    labels = ndimage.zoom(rng.integers(0, 3, [max(2, n // 6) for n in shape]), [a / max(2, a // 6) for a in shape], order=0)[tuple(slice(0, n) for n in shape)]
    assert labels.shape == shape and len(np.unique(labels)) == 3
    skeletons = target_skeletons(torch.from_numpy(labels), 4)
    np.testing.assert_array_equal(skeletons.numpy(), reference_tubes(labels, 4))
    assert skeletons[:, 3].sum() == 0  # an absent class has no skeleton


def test_tubes_follow_each_class_and_stay_inside_it():
    target = membrane_target()
    skeletons = target_skeletons(target, 2)
    for k in (0, 1):
        assert (skeletons[:, k] <= (target == k).float()).all() and skeletons[:, k].sum() > 0
    assert skeletons[0, 0, 10:13, 0:8].all()  # a 3-pixel membrane is its own tube
    # far thinner than the class: the cells' tube is a band, not their area
    assert skeletons[:, 1].sum() < 0.5 * (target == 1).sum()


@pytest.mark.parametrize(
    ("target", "n_classes", "message"),
    [
        (torch.zeros(4, 4, dtype=torch.int64), 2, "target must be an integer \\(B, Y, X\\)"),
        (torch.zeros(1, 4, 4), 2, "got torch.float32"),
        (torch.full((1, 4, 4), 2), 2, "target classes must lie in \\[0, 2\\), got \\[2, 2\\]"),
        (torch.zeros(1, 4, 4, dtype=torch.int64), 0, "n_classes must be a positive integer, got 0"),
    ],
)
def test_target_skeletons_refuses_bad_input(target, n_classes, message):
    with pytest.raises(ValueError, match=message):
        target_skeletons(target, n_classes)


def test_skeleton_recall_matches_the_loop_reference():
    generator = torch.Generator().manual_seed(1)
    target = membrane_target()
    skeletons = target_skeletons(target, 3)
    scores = torch.randn(2, 3, 24, 30, generator=generator)
    expected = reference_skeleton_recall(scores, skeletons)
    assert skeleton_recall(scores, skeletons).item() == pytest.approx(expected, rel=1e-5)


def test_a_membrane_gap_costs_its_length_and_the_gradient_closes_it():
    target = membrane_target(batch=1)
    skeletons = target_skeletons(target, 2)
    scores = torch.where(target == 0, 5.0, -5.0)[:, None].repeat(1, 2, 1, 1)
    scores[:, 1] *= -1  # confident and right everywhere
    perfect = skeleton_recall(scores, skeletons).item()

    def with_gap(columns):
        gapped = scores.clone()
        gapped[:, :, 9:14, 3 : 3 + columns] = gapped[:, :, 9:14, 3 : 3 + columns].flip(1)
        return gapped  # the membrane predicted as cell over `columns` pixels of its length

    assert (skeleton_recall(with_gap(8), skeletons).item() - perfect) == pytest.approx(
        2 * (skeleton_recall(with_gap(4), skeletons).item() - perfect), rel=1e-3)
    gapped = with_gap(4).requires_grad_(True)
    loss = skeleton_recall(gapped, skeletons)
    loss.backward()
    assert perfect < 1e-3 and loss.item() > perfect + 0.01
    # descending the gradient raises the membrane score inside the gap, not elsewhere
    assert (gapped.grad[0, 0, 10:13, 3:7] < 0).all()
    assert gapped.grad[0, 0, :, 20:].abs().max() < 1e-6


def test_skeleton_recall_needs_matching_shapes_and_tolerates_empty_skeletons():
    with pytest.raises(ValueError, match="scores .* and skeletons"):
        skeleton_recall(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
    scores = torch.zeros(1, 2, 4, 4, requires_grad=True)
    loss = skeleton_recall(scores, torch.zeros(1, 2, 4, 4))
    loss.backward()
    assert loss.item() == 0.0 and scores.grad is not None
