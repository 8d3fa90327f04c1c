"""Tests of per-class IoU / Dice and the variation of information."""

import math
from collections import Counter

import numpy as np
import pytest
from skimage.metrics import variation_of_information as skimage_variation_of_information

from biounet.metrics.semantic import (
    class_dice,
    class_iou,
    confusion_matrix,
    variation_of_information,
)


def _slow_conditional_entropy(target: np.ndarray, given: np.ndarray) -> float:
    """H(target | given) in bits by counting pixels in Python dictionaries."""
    n_pixels = target.size
    joint = Counter(zip(target.ravel().tolist(), given.ravel().tolist()))
    given_counts = Counter(given.ravel().tolist())
    return -sum(
        count / n_pixels * math.log2(count / given_counts[given_id])
        for (_, given_id), count in joint.items()
    )


@pytest.mark.parametrize("shape", [(12, 13), (3, 6, 7)])
def test_class_scores_equal_direct_formulas(rng, shape):
    reference = rng.integers(0, 3, size=shape)
    prediction = rng.integers(0, 3, size=shape)
    iou = class_iou(reference, prediction, n_classes=4)
    dice = class_dice(reference, prediction, n_classes=4)
    for label in range(3):
        true_mask, pred_mask = reference == label, prediction == label
        intersection = np.count_nonzero(true_mask & pred_mask)
        assert iou[label] == pytest.approx(intersection / np.count_nonzero(true_mask | pred_mask))
        assert dice[label] == pytest.approx(
            2 * intersection / (np.count_nonzero(true_mask) + np.count_nonzero(pred_mask))
        )
    assert np.isnan(iou[3]) and np.isnan(dice[3])  # class 3 absent from both maps
    np.testing.assert_allclose(dice[:3], 2 * iou[:3] / (1 + iou[:3]))


def test_confusion_matrix_counts_pairs(rng):
    reference = rng.integers(0, 4, size=(9, 9))
    prediction = rng.integers(0, 4, size=(9, 9))
    matrix = confusion_matrix(reference, prediction)
    for true_class in range(4):
        for pred_class in range(4):
            expected = np.count_nonzero((reference == true_class) & (prediction == pred_class))
            assert matrix[true_class, pred_class] == expected


def test_identical_class_maps_score_one(rng):
    classes = rng.integers(0, 3, size=(10, 10))
    np.testing.assert_array_equal(class_iou(classes, classes), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(class_dice(classes, classes), [1.0, 1.0, 1.0])


def test_class_ids_beyond_n_classes_are_rejected():
    with pytest.raises(ValueError, match="n_classes=2"):
        class_iou(np.array([[0, 2]]), np.array([[0, 1]]), n_classes=2)


@pytest.mark.parametrize("shape", [(15, 14), (4, 5, 6)])
def test_variation_of_information_equals_slow_entropies(rng, shape):
    reference = rng.integers(0, 5, size=shape) * 3
    prediction = rng.integers(0, 4, size=shape)
    vi = variation_of_information(reference, prediction)
    assert vi.split == pytest.approx(_slow_conditional_entropy(prediction, reference))
    assert vi.merge == pytest.approx(_slow_conditional_entropy(reference, prediction))
    np.testing.assert_allclose(
        [vi.split, vi.merge], skimage_variation_of_information(reference, prediction)
    )


def test_variation_of_information_is_zero_for_equal_partitions(rng):
    labels = rng.integers(0, 6, size=(10, 10))
    relabel = np.array([11, 3, 0, 7, 100, 5])  # a bijection of ids, background included
    assert variation_of_information(labels, labels).total == 0.0
    vi = variation_of_information(labels, relabel[labels])
    assert (vi.split, vi.merge) == (0.0, 0.0)


def test_variation_of_information_swaps_parts_with_the_arguments(rng):
    reference = rng.integers(0, 3, size=(8, 8))
    prediction = rng.integers(0, 5, size=(8, 8))
    forward = variation_of_information(reference, prediction)
    backward = variation_of_information(prediction, reference)
    assert forward.split == pytest.approx(backward.merge)
    assert forward.total == pytest.approx(backward.total)


def test_split_and_merge_of_hand_example():
    # Splitting one reference object into two equal halves costs one bit of split;
    # merging two equal objects costs one bit of merge.
    reference = np.array([[1, 1, 1, 1]])
    halves = np.array([[1, 1, 2, 2]])
    assert variation_of_information(reference, halves).split == pytest.approx(1.0)
    assert variation_of_information(reference, halves).merge == 0.0
    assert variation_of_information(halves, reference).merge == pytest.approx(1.0)
    in_nats = variation_of_information(reference, halves, base=math.e)
    assert in_nats.split == pytest.approx(math.log(2))


def test_ignored_reference_ids_are_left_out():
    reference = np.array([[0, 0, 1, 1]])
    prediction = np.array([[5, 6, 1, 1]])
    assert variation_of_information(reference, prediction).split > 0
    ignored = variation_of_information(reference, prediction, ignore_reference_ids=(0,))
    assert ignored.total == 0.0
    nothing_left = variation_of_information(reference, prediction, ignore_reference_ids=(0, 1))
    assert nothing_left.total == 0.0


def test_errors_name_the_parameter():
    with pytest.raises(ValueError, match="base"):
        variation_of_information(np.zeros((2, 2), int), np.zeros((2, 2), int), base=1)
    with pytest.raises(ValueError, match="prediction shape"):
        variation_of_information(np.zeros((2, 2), int), np.zeros((3, 2), int))
    with pytest.raises(TypeError, match="reference"):
        class_iou(np.zeros((2, 2)), np.zeros((2, 2), int))
