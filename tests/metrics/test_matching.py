"""Tests of instance matching, average precision and the DSB 2018 score."""

import numpy as np
import pytest

from biounet.metrics.matching import (
    DSB_THRESHOLDS,
    MatchingResult,
    average_precision,
    dsb_score,
    dsb_score_images,
    match_instances,
    pool_matches,
)
from biounet.metrics.overlap import iou_matrix

# Reference objects 1 (4 px), 2 (4 px), 3 (2 px). Prediction 5 == object 1 (IoU 1);
# 6 covers 3 px of object 2 plus 1 background px (IoU 3/5 = 0.6); 7 lies on background
# (false positive); object 3 is missed (false negative).
REFERENCE = np.array([[1, 1, 1, 1, 0, 2, 2, 2, 2, 0, 3, 3, 0, 0]])
PREDICTION = np.array([[5, 5, 5, 5, 0, 0, 6, 6, 6, 6, 0, 0, 7, 7]])


def _brute_force(iou: np.ndarray, threshold: float, *, is_strict: bool) -> tuple[int, float]:
    """Best (n_pairs, summed IoU) over every one-to-one matching of candidate pairs."""
    n_true, n_pred = iou.shape

    def is_candidate(row, column):
        value = iou[row, column]
        return value > 0 and (value > threshold if is_strict else value >= threshold)

    def search(row, used_columns):
        if row == n_true:
            return 0, 0.0
        best = search(row + 1, used_columns)  # leave this reference object unmatched
        for column in range(n_pred):
            if column not in used_columns and is_candidate(row, column):
                count, total = search(row + 1, used_columns | {column})
                best = max(best, (count + 1, total + iou[row, column]))
        return best

    return search(0, frozenset())


def _greedy(iou: np.ndarray, threshold: float) -> tuple[int, float]:
    order = np.argsort(-iou, axis=None)
    used_rows, used_columns, total = set(), set(), 0.0
    for row, column in zip(*np.unravel_index(order, iou.shape)):
        if iou[row, column] >= threshold and row not in used_rows and column not in used_columns:
            used_rows.add(row)
            used_columns.add(column)
            total += iou[row, column]
    return len(used_rows), total


def test_hand_made_example_at_two_thresholds():
    low, high = match_instances(REFERENCE, PREDICTION, thresholds=(0.5, 0.7))
    # tau 0.5: TP 2 (IoU 1 and 0.6), FP 1, FN 1.
    assert (low.n_true_positives, low.n_false_positives, low.n_false_negatives) == (2, 1, 1)
    assert low.precision == pytest.approx(2 / 3)
    assert low.recall == pytest.approx(2 / 3)
    assert low.f1 == pytest.approx(2 / 3)
    assert low.average_precision == pytest.approx(2 / 4)
    assert low.mean_matched_iou == pytest.approx(0.8)
    assert low.panoptic_quality == pytest.approx(1.6 / 3)  # (1 + 0.6) / (2 + 1/2 + 1/2)
    # tau 0.7: only the exact copy is matched: TP 1, FP 2, FN 2.
    assert (high.n_true_positives, high.n_false_positives, high.n_false_negatives) == (1, 2, 2)
    assert high.precision == pytest.approx(1 / 3)
    assert high.average_precision == pytest.approx(1 / 5)
    assert high.mean_matched_iou == 1.0


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("is_strict", [False, True])
def test_matching_equals_brute_force(seed, is_strict):
    # Random pixels of few ids overlap heavily, so low thresholds give conflicting pairs.
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 5, size=(6, 7))
    prediction = rng.integers(0, 4, size=(6, 7))
    thresholds = (0.05, 0.1, 0.15, 0.2, 0.3)
    iou, _, _ = iou_matrix(reference, prediction)

    results = match_instances(reference, prediction, thresholds=thresholds, is_strict=is_strict)

    for threshold, result in zip(thresholds, results):
        n_pairs, total = _brute_force(iou, threshold, is_strict=is_strict)
        assert result.n_true_positives == n_pairs
        assert result.sum_matched_iou == pytest.approx(total)


@pytest.mark.parametrize("seed", range(10))
def test_hungarian_and_greedy_agree_above_one_half(seed):
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 3, size=(5, 5))
    prediction = np.where(rng.random((5, 5)) < 0.2, rng.integers(0, 3, (5, 5)), reference)
    iou, _, _ = iou_matrix(reference, prediction)
    for threshold in (0.5, 0.6, 0.8):
        (result,) = match_instances(reference, prediction, thresholds=(threshold,))
        n_pairs, total = _greedy(iou, threshold)
        assert result.n_true_positives == n_pairs
        assert result.sum_matched_iou == pytest.approx(total)


def test_identical_images_score_perfectly(rng):
    labels = rng.integers(0, 6, size=(3, 8, 8))
    for result in match_instances(labels, labels, thresholds=(0.1, 0.5, 0.9, 1.0)):
        assert result.precision == result.recall == result.f1 == 1.0
        assert result.average_precision == result.mean_matched_iou == 1.0
    assert dsb_score(labels, labels) == 1.0


def test_scores_do_not_depend_on_ids(rng):
    reference = rng.integers(0, 5, size=(10, 10))
    prediction = rng.integers(0, 5, size=(10, 10))
    reference_ids = np.array([0, 40, 7, 13, 2])  # background stays 0
    prediction_ids = np.array([0, 9, 3, 21, 5])
    results = match_instances(reference, prediction, thresholds=(0.1, 0.2))
    permuted = match_instances(
        reference_ids[reference], prediction_ids[prediction], thresholds=(0.1, 0.2)
    )
    for result, other in zip(results, permuted):
        assert result.n_true_positives == other.n_true_positives
        assert result.sum_matched_iou == pytest.approx(other.sum_matched_iou)


def test_empty_images_score_one_and_one_sided_empty_zero():
    empty = np.zeros((4, 4), int)
    labels = np.zeros((4, 4), int)
    labels[1:3, 1:3] = 1
    (both_empty,) = match_instances(empty, empty)
    assert both_empty.f1 == both_empty.average_precision == both_empty.precision == 1.0
    (missed,) = match_instances(labels, empty)
    assert missed.recall == missed.precision == missed.average_precision == 0.0
    assert dsb_score(empty, empty) == 1.0
    assert dsb_score(labels, empty) == dsb_score(empty, labels) == 0.0


def test_dsb_score_of_hand_example():
    # IoUs 1.0 and 0.6, one FP, one FN. tau 0.50, 0.55: TP 2 -> 2/4; tau 0.60 ... 0.95
    # (8 thresholds): 0.6 is not > tau, TP 1 -> 1/5. Mean (2 * 0.5 + 8 * 0.2) / 10 = 0.26.
    assert dsb_score(REFERENCE, PREDICTION) == pytest.approx(0.26)
    assert dsb_score_images([(REFERENCE, PREDICTION), (REFERENCE, REFERENCE)]) == pytest.approx(
        (0.26 + 1.0) / 2
    )
    assert len(DSB_THRESHOLDS) == 10 and DSB_THRESHOLDS[1] == 0.55


def test_iou_of_exactly_the_threshold_is_a_match_unless_strict():
    reference = np.array([[1, 1, 0, 0]])
    prediction = np.array([[2, 0, 0, 0]])  # IoU 1/2
    (result,) = match_instances(reference, prediction, thresholds=(0.5,))
    (strict,) = match_instances(reference, prediction, thresholds=(0.5,), is_strict=True)
    assert result.n_true_positives == 1 and strict.n_true_positives == 0
    assert dsb_score(reference, prediction) == 0.0


def test_halves_tie_at_one_half_and_match_once():
    # Both predicted halves have IoU exactly 0.5 with the reference: one-to-one keeps one.
    reference = np.array([[1, 1, 1, 1]])
    prediction = np.array([[2, 2, 3, 3]])
    (result,) = match_instances(reference, prediction, thresholds=(0.5,))
    assert (result.n_true_positives, result.n_false_positives) == (1, 1)


def test_pooling_sums_counts_and_differs_from_image_mean():
    (first,) = match_instances(REFERENCE, PREDICTION)  # TP 2, FP 1, FN 1
    (second,) = match_instances(REFERENCE, REFERENCE)  # TP 3
    pooled = pool_matches([first, second])
    assert (pooled.n_true_positives, pooled.n_false_positives) == (5, 1)
    assert pooled.average_precision == pytest.approx(5 / 7)
    pairs = [(REFERENCE, PREDICTION), (REFERENCE, REFERENCE)]
    assert average_precision(pairs) == pytest.approx((5 / 7,))
    assert average_precision(pairs, pooling="images") == pytest.approx(((0.5 + 1.0) / 2,))


def test_result_counts_are_consistent():
    result = MatchingResult(0.5, n_true=4, n_pred=3, n_true_positives=2, sum_matched_iou=1.5)
    assert (result.n_false_positives, result.n_false_negatives) == (1, 2)
    harmonic = 2 * result.precision * result.recall / (result.precision + result.recall)
    assert result.f1 == pytest.approx(harmonic)


def test_errors_name_the_parameter():
    with pytest.raises(ValueError, match="thresholds"):
        match_instances(REFERENCE, PREDICTION, thresholds=(1.5,))
    with pytest.raises(ValueError, match="pooling"):
        average_precision([(REFERENCE, PREDICTION)], pooling="frames")
    with pytest.raises(ValueError, match="pairs"):
        average_precision([])
    with pytest.raises(ValueError, match="pairs"):
        dsb_score_images([])
    with pytest.raises(ValueError, match="results must share one threshold"):
        pool_matches(match_instances(REFERENCE, PREDICTION, thresholds=(0.5, 0.7)))
    with pytest.raises(ValueError, match="results"):
        pool_matches([])
    with pytest.raises(ValueError, match="prediction shape"):
        match_instances(REFERENCE, PREDICTION[:, :5])
    with pytest.raises(TypeError, match="reference"):
        dsb_score(REFERENCE.astype(float), PREDICTION)
