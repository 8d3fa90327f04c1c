"""ISBI 2012 EM segmentation challenge metrics: pixel, Rand and warping errors, V_rand, V_info.

Computed as the organisers' Fiji code did (Trainable_Segmentation `metrics/`: PixelError,
RandError, WarpingError, VariationOfInformation, ClassificationStatistics): 0 in the ground
truth is membrane, > 0 cell interior; a pixel is proposed interior when its probability,
rounded to float32, is > t; every slice is scored in 2-D and the best value over the
thresholds `isbi_thresholds` generates is reported. Arganda-Carreras et al. 2015
("Crowdsourcing the creation of image segmentation algorithms for connectomics", Front.
Neuroanat.) define the Rand and information scores used here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from biounet.metrics.overlap import contingency_table
from biounet.metrics.warping import MismatchType, classify_mismatches, warp_ground_truth

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def isbi_thresholds(lo: float, hi: float, step: float = 0.1) -> tuple[float, ...]:
    """Return the thresholds of the organisers' loop `for (t = lo; t <= hi; t += step)`.

    The sum accumulates in doubles, so 0..1 ends at 0.9999999999999999 (11 values) and
    0..0.9 stops before 0.9999999999999999 (10 values).

    Example:
        >>> len(isbi_thresholds(0.0, 1.0)), isbi_thresholds(0.0, 1.0)[-1]
        (11, 0.9999999999999999)
        >>> len(isbi_thresholds(0.0, 0.9))
        10
    """
    if not step > 0:
        raise ValueError(f"step must be positive, got {step}")
    thresholds, threshold = [], float(lo)
    while threshold <= hi:
        thresholds.append(threshold)
        threshold += step
    return tuple(thresholds)


@dataclass(frozen=True)
class ThresholdScan:
    """The best value of a metric over thresholds, the first threshold reaching it, all values.

    `value` is an error (lower is better) for the `*_error` functions and a score (higher is
    better) for `v_rand` and `v_info`.
    """

    value: float
    threshold: float
    thresholds: tuple[float, ...]
    values: tuple[float, ...]


def pixel_error(
    ground_truth: ArrayLike, probabilities: ArrayLike, *, thresholds: Sequence[float] | None = None
) -> ThresholdScan:
    """Return 1 - the best F1 of the foreground pixels over thresholds (default 0..1).

    TP, FP and FN are pooled over all slices; precision is 1 when FP = 0 and recall 1 when
    FN = 0 (PixelError.getPixelErrorMaximalFScore, ClassificationStatistics).

    Args:
        ground_truth: (Y, X) or (Z, Y, X) integer or bool labels, 0 = membrane.
        probabilities: the same shape, in [0, 1], 1 = certainly cell interior.
        thresholds: overrides `isbi_thresholds(0.0, 1.0)`.

    Example:
        >>> truth = np.array([[0, 1, 1, 1]])
        >>> scan = pixel_error(truth, [[0.0, 0.9, 0.6, 0.2]])
        >>> scan.value, scan.threshold, len(scan.values)
        (0.0, 0.0, 11)
    """
    truth, values, thresholds = _check_inputs(ground_truth, probabilities, thresholds, 1.0)
    n_truth = int(truth.sum())
    scores = []
    for threshold in thresholds:
        proposed = values > threshold
        true_positives = int(np.count_nonzero(proposed & truth))
        scores.append(
            _f_score(true_positives, int(proposed.sum()) - true_positives, n_truth - true_positives)
        )
    return _best(thresholds, [1.0 - score for score in scores], lower_is_better=True)


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
    truth, values, thresholds = _check_inputs(ground_truth, probabilities, thresholds, 1.0)
    overlaps = _overlaps(truth, values, thresholds)
    count_pairs = RAND_NORMALIZATIONS[normalization]
    errors = [1.0 - _f_score(*_rand_counts(slices, count_pairs)) for slices in overlaps]
    return _best(thresholds, errors, lower_is_better=True)


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
    truth, values, thresholds = _check_inputs(ground_truth, probabilities, thresholds, 1.0)
    overlaps = _overlaps(truth, values, thresholds)
    scores = [_f_score(*_rand_counts(slices, _pairs_with_self)) for slices in overlaps]
    return _best(thresholds, scores, lower_is_better=False)


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
    truth, values, thresholds = _check_inputs(ground_truth, probabilities, thresholds, 1.0)
    overlaps = _overlaps(truth, values, thresholds)
    scores = [float(np.mean([_information_score(one) for one in slices])) for slices in overlaps]
    return _best(thresholds, scores, lower_is_better=False)


def warping_error(
    ground_truth: ArrayLike,
    probabilities: ArrayLike,
    *,
    variant: str = "split_merge",
    radius: int = 20,
    thresholds: Sequence[float] | None = None,
) -> ThresholdScan:
    """Return the least warping error over thresholds (default 0..0.9).

    The binary ground truth of each slice is warped onto the thresholded map by simple
    points (`warp_ground_truth`, Jain et al. 2010). "split_merge" (the challenge metric,
    WarpingError.getMinimumSplitsAndMergersErrorValue(0, 0.9, 0.1, false, 20)) counts the
    remaining mismatches `classify_mismatches` calls split or merge; "classic" counts all of
    them. Both are divided by W * H * Z.

    Example:
        >>> truth = np.ones((5, 7), int); truth[:, 3] = 0  # two cells
        >>> warping_error(truth, np.ones((5, 7))).value  # proposal merges them
        0.14285714285714285
    """
    if variant not in ("split_merge", "classic"):
        raise ValueError(f"variant must be 'split_merge' or 'classic', got {variant!r}")
    truth, values, thresholds = _check_inputs(ground_truth, probabilities, thresholds, 0.9)
    errors = []
    for threshold in thresholds:
        n_errors = 0
        for truth_slice, values_slice in zip(truth, values):
            warped, mismatches = warp_ground_truth(truth_slice, values_slice, threshold)
            if variant == "classic":
                n_errors += int(mismatches.sum())
                continue
            classes = classify_mismatches(warped, mismatches, radius=radius)
            n_errors += int(np.isin(classes, (MismatchType.SPLIT, MismatchType.MERGE)).sum())
        errors.append(n_errors / truth.size)
    return _best(thresholds, errors, lower_is_better=True)


def isbi_errors(ground_truth: ArrayLike, probabilities: ArrayLike) -> dict[str, float]:
    """Return the three ISBI 2012 errors with the organisers' thresholds and defaults.

    Example:
        >>> truth = np.ones((4, 4), int); truth[:, 1] = 0
        >>> isbi_errors(truth, (truth > 0).astype(float))
        {'pixel_error': 0.0, 'rand_error': 0.0, 'warping_error': 0.0}
    """
    return {
        "pixel_error": pixel_error(ground_truth, probabilities).value,
        "rand_error": rand_error(ground_truth, probabilities).value,
        "warping_error": warping_error(ground_truth, probabilities).value,
    }


def _check_inputs(
    ground_truth: ArrayLike, probabilities: ArrayLike, thresholds: Sequence[float] | None, hi: float
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Return (Z, Y, X) foreground, probabilities rounded to float32 (as float64), thresholds."""
    truth, values = np.asarray(ground_truth), np.asarray(probabilities)
    if truth.dtype != bool and truth.dtype.kind not in "iu":
        raise TypeError(f"ground_truth must have an integer or bool dtype, got {truth.dtype}")
    if values.dtype != bool and values.dtype.kind not in "iuf":
        raise TypeError(f"probabilities must have a real dtype, got {values.dtype}")
    if truth.ndim not in (2, 3) or truth.size == 0:
        raise ValueError(
            f"ground_truth must be non-empty (Y, X) or (Z, Y, X), got shape {truth.shape}"
        )
    if values.shape != truth.shape:
        raise ValueError(
            f"probabilities shape {values.shape} must equal ground_truth shape {truth.shape}"
        )
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        low, high = values.min(), values.max()
        raise ValueError(f"probabilities must be finite and in [0, 1], got range [{low}, {high}]")
    thresholds = isbi_thresholds(0.0, hi) if thresholds is None else tuple(map(float, thresholds))
    if not thresholds or not all(0 <= threshold <= 1 for threshold in thresholds):
        raise ValueError(f"thresholds must be non-empty and in [0, 1], got {thresholds}")
    # The organisers' ImageJ held images as float32 and compared them with double thresholds.
    values = values.astype(np.float32).astype(np.float64)
    shape = (-1, *truth.shape[-2:])
    return (truth > 0).reshape(shape), values.reshape(shape), thresholds


def _f_score(true_positives: float, false_positives: float, false_negatives: float) -> float:
    """F1 with ClassificationStatistics' conventions: P = 1 if FP = 0, R = 1 if FN = 0."""
    precision = 1.0 if false_positives == 0 else true_positives / (true_positives + false_positives)
    recall = 1.0 if false_negatives == 0 else true_positives / (true_positives + false_negatives)
    return 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)


def _best(
    thresholds: tuple[float, ...], values: list[float], *, lower_is_better: bool
) -> ThresholdScan:
    """Pick the first best value, as the organisers' strict `<` / `>` comparisons do."""
    index = int(np.argmin(values) if lower_is_better else np.argmax(values))
    return ThresholdScan(
        float(values[index]), thresholds[index], thresholds, tuple(map(float, values))
    )


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
