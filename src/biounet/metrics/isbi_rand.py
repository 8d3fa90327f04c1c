"""ISBI 2012 Rand error and the foreground-restricted V_rand and V_info scores.

As the organisers' Fiji code computed them (Trainable_Segmentation `metrics/RandError`,
`VariationOfInformation`), with the definitions of Arganda-Carreras et al. 2015
("Crowdsourcing the creation of image segmentation algorithms for connectomics", Front.
Neuroanat.); the protocol (thresholds, float32 rounding) is `biounet.metrics.isbi_scan`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from biounet.metrics.isbi_scan import ThresholdScan, best_value, check_inputs, f_score
from biounet.metrics.overlap import contingency_table

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _pairs_with_self(sizes: np.ndarray) -> int:
    """Ordered pixel pairs within segments of `sizes`, a pixel with itself included: N^2."""
    return int(np.dot(sizes, sizes))


def _distinct_pairs(sizes: np.ndarray) -> int:
    """Unordered pairs of distinct pixels within segments of `sizes`: N choose 2."""
    return int(np.dot(sizes, sizes - 1)) // 2


RAND_NORMALIZATIONS = {"n_squared": _pairs_with_self, "pairs": _distinct_pairs}


def rand_error(
    ground_truth: ArrayLike,
    probabilities: ArrayLike,
    *,
    normalization: str = "n_squared",
    thresholds: Sequence[float] | None = None,
) -> ThresholdScan:
    """Return 1 - the best foreground-restricted Rand F-score over thresholds (default 0..1).

    Per slice, n_ij counts the ground-truth-foreground pixels in ground-truth component i and
    predicted component j (4-connected; j = 0 is predicted boundary), a_i = sum_j n_ij and
    b_j = sum_{i} n_ij for j >= 1. "n_squared" (RandError.foregroundRestrictedStatsN2, used
    since 2015) counts each predicted-boundary pixel as its own segment: TP = sum_{j>=1} n_ij^2
    + sum_i n_i0, FN = sum_i a_i^2 - TP, FP = sum_{j>=1} b_j^2 + sum_i n_i0 - TP. "pairs" (the
    2012 RandError.foregroundRestrictedRandIndex) counts pairs: TP = sum_{j>=1} C(n_ij, 2),
    FN = sum_i C(a_i, 2) - TP, FP = sum_{j>=1} C(b_j, 2) - TP. TP, FP, FN are pooled over
    slices, then F = 2PR / (P + R) as in `pixel_error`.

    Example:
        >>> truth = np.array([[1, 1, 0, 2, 2]])
        >>> rand_error(truth, [[1.0, 1.0, 0.0, 1.0, 1.0]]).value
        0.0
    """
    if normalization not in RAND_NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {sorted(RAND_NORMALIZATIONS)}, got {normalization!r}"
        )
    truth, values, thresholds = check_inputs(ground_truth, probabilities, thresholds, 1.0)
    overlaps = _overlaps(truth, values, thresholds)
    count_pairs = RAND_NORMALIZATIONS[normalization]
    errors = [1.0 - f_score(*_rand_counts(slices, count_pairs)) for slices in overlaps]
    return best_value(thresholds, errors, lower_is_better=True)


def v_rand(
    ground_truth: ArrayLike, probabilities: ArrayLike, *, thresholds: Sequence[float] | None = None
) -> ThresholdScan:
    """Return the best foreground-restricted V_rand over thresholds (default 0..1).

    V_rand = 2 sum p_ij^2 / (sum s_i^2 + sum t_j^2) (Arganda-Carreras et al. 2015,
    foreground-restricted Rand scoring V^Rand_alpha with alpha = 0.5): p_ij is the joint
    distribution of predicted segment i and ground-truth segment j over the ground-truth
    foreground pixels of all slices, each predicted-boundary pixel its own segment. It is the
    F-score of `rand_error(normalization="n_squared")`. The leaderboard script
    (`getMaximalVRandAfterThinning`) first thins predicted boundaries to one pixel with a
    watershed; that step is not reproduced here.

    Example:
        >>> round(v_rand([[1, 1, 0, 2, 2]], [[1.0, 1.0, 0.0, 0.0, 1.0]]).value, 4)  # 12 / 14
        0.8571
    """
    truth, values, thresholds = check_inputs(ground_truth, probabilities, thresholds, 1.0)
    overlaps = _overlaps(truth, values, thresholds)
    scores = [f_score(*_rand_counts(slices, _pairs_with_self)) for slices in overlaps]
    return best_value(thresholds, scores, lower_is_better=False)


def v_info(
    ground_truth: ArrayLike, probabilities: ArrayLike, *, thresholds: Sequence[float] | None = None
) -> ThresholdScan:
    """Return the best foreground-restricted V_info over thresholds (default 0..1).

    V_info = 2 I(S; T) / (H(S) + H(T)) with I = H(S) + H(T) - H(S, T) (Arganda-Carreras et
    al. 2015, information theoretic scoring V^Info_alpha with alpha = 0.5), over the joint
    distribution of one slice as in `v_rand`, averaged over slices like the organisers'
    VariationOfInformation (pooling would add log Z to every entropy). A slice scores 1 when
    both entropies are 0 (one segment each; the organisers' code gives 0) or it has no
    ground-truth foreground. Predicted boundaries are not thinned as in the leaderboard's
    `getMaximalVInfoAfterThinning`.

    Example:
        >>> round(v_info([[1, 1, 0, 2, 2]], [[1.0, 1.0, 0.0, 0.0, 1.0]]).value, 4)
        0.8
    """
    truth, values, thresholds = check_inputs(ground_truth, probabilities, thresholds, 1.0)
    overlaps = _overlaps(truth, values, thresholds)
    scores = [float(np.mean([_information_score(one) for one in slices])) for slices in overlaps]
    return best_value(thresholds, scores, lower_is_better=False)


class _Overlap(NamedTuple):
    """Segment sizes over the ground-truth foreground of one slice at one threshold.

    n_ij counts the pixels in ground-truth component i and predicted component j (j = 0:
    predicted boundary); a_i = sum_j n_ij, b_j = sum_i n_ij.
    """

    joint: np.ndarray  # the non-zero n_ij with j >= 1
    truth: np.ndarray  # a_i, boundary pixels included
    prediction: np.ndarray  # b_j, j >= 1
    n_boundary: int  # sum_i n_i0


def _overlaps(
    truth: np.ndarray, values: np.ndarray, thresholds: tuple[float, ...]
) -> list[list[_Overlap]]:
    """Return `overlaps[threshold index][slice]` of 4-connected components in 2-D."""
    overlaps: list[list[_Overlap]] = [[] for _ in thresholds]
    for truth_slice, values_slice in zip(truth, values):
        truth_labels, _ = ndimage.label(truth_slice, structure=_FOUR_CONNECTED)
        truth_ids = truth_labels[truth_slice]
        for index, threshold in enumerate(thresholds):
            predicted, _ = ndimage.label(values_slice > threshold, structure=_FOUR_CONNECTED)
            overlaps[index].append(_slice_overlap(truth_ids, predicted[truth_slice]))
    return overlaps


def _slice_overlap(truth_ids: np.ndarray, predicted_ids: np.ndarray) -> _Overlap:
    """Overlap of one slice, from the ids of its ground-truth-foreground pixels."""
    if truth_ids.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Overlap(empty, empty, empty, 0)
    table, _, prediction_ids = contingency_table(truth_ids, predicted_ids)
    truth_sizes = np.asarray(table.sum(axis=1)).ravel()
    table = table.tocoo()
    is_segment = prediction_ids[table.col] != 0
    joint = table.data[is_segment]
    prediction_sizes = np.bincount(table.col[is_segment], weights=joint).astype(np.int64)
    n_boundary = int(table.data[~is_segment].sum())
    return _Overlap(joint, truth_sizes, prediction_sizes[prediction_sizes > 0], n_boundary)


def _rand_counts(
    overlaps: list[_Overlap], count_pairs: Callable[[np.ndarray], int]
) -> tuple[int, int, int]:
    """Return (TP, FP, FN) of the foreground-restricted Rand index, pooled over slices."""
    # A predicted-boundary pixel is a segment of its own: its only pair is with itself.
    singletons = count_pairs(np.ones(1, dtype=np.int64)) * sum(one.n_boundary for one in overlaps)
    joint = sum(count_pairs(one.joint) for one in overlaps) + singletons
    truth = sum(count_pairs(one.truth) for one in overlaps)
    prediction = sum(count_pairs(one.prediction) for one in overlaps) + singletons
    return joint, prediction - joint, truth - joint


def _information_score(overlap: _Overlap) -> float:
    """V_info of one slice; 1 without ground-truth foreground or with one segment on each side."""
    n_pixels = int(overlap.truth.sum())
    if n_pixels == 0:
        return 1.0
    entropy_truth = _entropy(overlap.truth, n_pixels, 0)
    entropy_prediction = _entropy(overlap.prediction, n_pixels, overlap.n_boundary)
    entropy_joint = _entropy(overlap.joint, n_pixels, overlap.n_boundary)
    total = entropy_truth + entropy_prediction
    return 1.0 if total == 0 else 2.0 * (total - entropy_joint) / total


def _entropy(sizes: np.ndarray, n_pixels: int, n_singletons: int) -> float:
    """Shannon entropy (nats) of segments of `sizes` plus `n_singletons` one-pixel segments."""
    # sum (c/n) log(n/c): every term >= 0, and exactly 0 for a single segment
    return (
        float(np.dot(sizes, np.log(n_pixels / sizes)) + n_singletons * np.log(n_pixels)) / n_pixels
    )
