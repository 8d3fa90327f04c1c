"""Tests of the Cell Tracking Challenge SEG and DET measures."""

import math

import numpy as np
import pytest

from biounet.metrics.ctc import (
    DetResult,
    det_score,
    det_score_frames,
    seg_score,
    seg_score_frames,
)


def _slow_seg_jaccard(reference: np.ndarray, prediction: np.ndarray) -> list[float]:
    """J of every reference object by the challenge's definition, one object at a time."""
    jaccard = []
    for label in np.unique(reference[reference > 0]):
        object_mask = reference == label
        value = 0.0
        for candidate in np.unique(prediction[prediction > 0]):
            candidate_mask = prediction == candidate
            overlap = np.count_nonzero(object_mask & candidate_mask)
            if overlap > 0.5 * np.count_nonzero(object_mask):
                value = overlap / np.count_nonzero(object_mask | candidate_mask)
        jaccard.append(value)
    return jaccard


def _blobs(rng, shape, n_objects) -> np.ndarray:
    """Random overlapping boxes; later boxes paint over earlier ones."""
    labels = np.zeros(shape, dtype=np.int32)
    for label in range(1, n_objects + 1):
        start = [rng.integers(0, size - 2) for size in shape]
        stop = [begin + rng.integers(2, 6) for begin in start]
        labels[tuple(slice(b, e) for b, e in zip(start, stop))] = label
    return labels


def test_seg_of_hand_made_example():
    # Object 1 (6 px) is covered by 7 on 4 px and 7 has 1 extra px: 4 > 3, J = 4 / 7.
    # Object 2 (2 px) meets 8 on 1 px: 1 is not > 1, so J = 0. Object 3 (2 px) == 9: J = 1.
    reference = np.array([[1, 1, 1, 1, 1, 1, 0, 2, 2, 0, 3, 3]])
    prediction = np.array([[0, 0, 7, 7, 7, 7, 7, 8, 0, 0, 9, 9]])
    result = seg_score(reference, prediction)
    np.testing.assert_allclose(result.jaccard, [4 / 7, 0.0, 1.0])
    assert result.matched_ids.tolist() == [7, 0, 9]
    assert result.reference_ids.tolist() == [1, 2, 3]
    assert result.score == pytest.approx((4 / 7 + 1) / 3)


@pytest.mark.parametrize("shape", [(20, 20), (6, 10, 10)])
def test_seg_equals_direct_loop(rng, shape):
    for _ in range(10):
        reference = _blobs(rng, shape, 6)
        prediction = _blobs(rng, shape, 8)
        result = seg_score(reference, prediction)
        np.testing.assert_allclose(result.jaccard, _slow_seg_jaccard(reference, prediction))


def test_identical_and_relabelled_images_score_one(rng):
    reference = _blobs(rng, (30, 30), 10)
    relabel = np.concatenate([[0], rng.permutation(np.arange(1, 11)) * 17])
    assert seg_score(reference, reference).score == 1.0
    assert seg_score(reference, relabel[reference]).score == 1.0
    assert det_score(reference, relabel[reference]).score == 1.0


def test_seg_pools_objects_not_frames():
    one = (np.array([[1, 1, 2, 2]]), np.array([[1, 1, 0, 0]]))  # J = 1, 0
    two = (np.array([[0, 3, 3, 0]]), np.array([[0, 4, 4, 0]]))  # J = 1
    empty = (np.zeros((1, 4), int), np.array([[1, 1, 0, 0]]))  # no reference objects
    assert seg_score_frames([one, two, empty]) == pytest.approx(2 / 3)
    assert math.isnan(seg_score(*empty).score)
    assert math.isnan(seg_score_frames([empty]))


def test_det_of_hand_made_example():
    # 7 matches 1 and 2 (one split), 3 is missed (FN), 8 and 9 match nothing (2 FP).
    # AOGM-D = 5 * 1 + 10 * 1 + 1 * 2 = 17; AOGM-D_0 = 10 * 3 = 30; DET = 1 - 17 / 30.
    reference = np.array([[1, 1, 0, 2, 2, 0, 3, 3, 0, 0]])
    prediction = np.array([[7, 7, 7, 7, 7, 0, 0, 0, 8, 9]])
    result = det_score(reference, prediction)
    assert result == DetResult(
        n_reference=3, n_false_negatives=1, n_false_positives=2, n_splits=1
    )
    assert result.aogm_d == 17.0
    assert result.score == pytest.approx(13 / 30)


def test_det_is_zero_without_result_and_clipped_with_many_false_positives():
    reference = np.array([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    assert det_score(reference, np.zeros_like(reference)).score == 0.0
    # One match but 12 spurious objects cost 12 > AOGM-D_0 = 10: the minimum clips to 0.
    noisy = np.array([[1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]])
    assert det_score(reference, noisy).score == 0.0


def test_det_frames_sum_operations_before_normalising():
    perfect = (np.array([[1, 1, 2, 2]]), np.array([[1, 1, 2, 2]]))
    missed = (np.array([[1, 1, 0, 0]]), np.zeros((1, 4), int))
    # AOGM-D = 10 (one FN), AOGM-D_0 = 10 * 3: 1 - 10 / 30, not the mean (1 + 0) / 2.
    assert det_score_frames([perfect, missed]) == pytest.approx(2 / 3)
    assert math.isnan(det_score_frames([]))


def test_errors_name_the_parameter():
    with pytest.raises(ValueError, match="prediction shape"):
        seg_score(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError, match="prediction"):
        det_score(np.zeros((2, 2), int), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="reference must have non-negative ids"):
        seg_score(-np.ones((2, 2), int), np.zeros((2, 2), int))
