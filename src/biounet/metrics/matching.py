"""One-to-one IoU matching of instances -> precision, recall, F1, average precision, DSB score.

A predicted object is a true positive if it is matched one-to-one to a reference object
with IoU >= threshold. The matching is the largest possible one (most true positives) and,
among those, the one with the largest summed IoU, found with the Hungarian algorithm
(as StarDist's `matching`, Schmidt et al. 2018). For thresholds above 0.5 every object has
at most one partner with such an IoU, so the matching is unique and greedy would agree.

Counts are kept, not ratios, so results pool over images by summing (`pool_matches`).
A ratio whose denominator is 0 is 1.0 when both images have no objects (nothing to find,
nothing wrongly found) and 0.0 otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

from biounet.metrics.overlap import iou_matrix

# Kaggle Data Science Bowl 2018 thresholds, written out so that 0.55 is the float 0.55.
DSB_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
POOLINGS = ("objects", "images")


@dataclass(frozen=True)
class MatchingResult:
    """Counts of a one-to-one matching at one IoU threshold; the metrics are derived.

    Attributes:
        threshold: IoU a matched pair needs (>=, or > if `is_strict`).
        n_true: reference objects.
        n_pred: predicted objects.
        n_true_positives: matched pairs.
        sum_matched_iou: summed IoU of the matched pairs.
        is_strict: whether a match needs IoU > threshold (DSB 2018) rather than >=.
    """

    threshold: float
    n_true: int
    n_pred: int
    n_true_positives: int
    sum_matched_iou: float
    is_strict: bool = False

    @property
    def n_false_positives(self) -> int:
        return self.n_pred - self.n_true_positives

    @property
    def n_false_negatives(self) -> int:
        return self.n_true - self.n_true_positives

    @property
    def precision(self) -> float:
        """TP / (TP + FP)."""
        return self._ratio(self.n_true_positives, self.n_pred)

    @property
    def recall(self) -> float:
        """TP / (TP + FN)."""
        return self._ratio(self.n_true_positives, self.n_true)

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall."""
        return self._ratio(2 * self.n_true_positives, self.n_true + self.n_pred)

    @property
    def average_precision(self) -> float:
        """TP / (TP + FP + FN), StarDist's "accuracy" and the DSB 2018 per-threshold score."""
        return self._ratio(
            self.n_true_positives, self.n_true + self.n_pred - self.n_true_positives
        )

    @property
    def mean_matched_iou(self) -> float:
        """Mean IoU of the matched pairs (1.0 if both images are empty, 0.0 if none match)."""
        return self._ratio(self.sum_matched_iou, self.n_true_positives)

    @property
    def panoptic_quality(self) -> float:
        """Sum of matched IoU / (TP + FP/2 + FN/2) (Kirillov et al. 2019, eq. 1)."""
        return self._ratio(self.sum_matched_iou, (self.n_true + self.n_pred) / 2)

    def _ratio(self, numerator: float, denominator: float) -> float:
        if denominator:
            return float(numerator / denominator)
        return 1.0 if self.n_true == 0 and self.n_pred == 0 else 0.0


def match_instances(
    reference: ArrayLike,
    prediction: ArrayLike,
    *,
    thresholds: Sequence[float] = (0.5,),
    is_strict: bool = False,
) -> tuple[MatchingResult, ...]:
    """Match reference and predicted objects one-to-one at each IoU threshold.

    Args:
        reference: (Y, X) or (Z, Y, X) non-negative integer labels, 0 = background.
        prediction: integer labels of the same shape.
        thresholds: IoU thresholds in [0, 1]; the IoU matrix is computed once for all.
        is_strict: require IoU > threshold (DSB 2018) instead of IoU >= threshold (StarDist).

    Returns:
        One `MatchingResult` per threshold, in the order given.

    Example:
        >>> reference = np.array([[1, 1, 0, 2, 2]])
        >>> prediction = np.array([[1, 1, 0, 0, 3]])  # object 2 half found
        >>> low, high = match_instances(reference, prediction, thresholds=(0.5, 0.75))
        >>> low.n_true_positives, low.f1, low.mean_matched_iou
        (2, 1.0, 0.75)
        >>> high.n_true_positives, high.precision, high.average_precision
        (1, 0.5, 0.3333333333333333)

    Raises:
        TypeError: if a label image is not integer.
        ValueError: if the shapes differ, an id is negative or a threshold is outside [0, 1].
    """
    thresholds = tuple(float(threshold) for threshold in thresholds)
    for threshold in thresholds:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"thresholds must lie in [0, 1], got {threshold}")
    iou, _, _ = iou_matrix(reference, prediction)
    return tuple(_match_iou(iou, threshold, is_strict=is_strict) for threshold in thresholds)


def pool_matches(results: Iterable[MatchingResult]) -> MatchingResult:
    """Sum the counts of several images' results at the same threshold (object pooling).

    Example:
        >>> one = MatchingResult(0.5, n_true=2, n_pred=1, n_true_positives=1,
        ...                      sum_matched_iou=0.8)
        >>> two = MatchingResult(0.5, n_true=1, n_pred=2, n_true_positives=1,
        ...                      sum_matched_iou=0.6)
        >>> pool_matches([one, two]).average_precision  # TP 2, FP 1, FN 1
        0.5

    Raises:
        ValueError: if `results` is empty or mixes thresholds or strictness.
    """
    results = list(results)
    if not results:
        raise ValueError("results must hold at least one MatchingResult, got none")
    first = results[0]
    for result in results[1:]:
        if (result.threshold, result.is_strict) != (first.threshold, first.is_strict):
            raise ValueError(
                f"results must share one threshold, got {first.threshold} "
                f"(strict={first.is_strict}) and {result.threshold} (strict={result.is_strict})"
            )
    return MatchingResult(
        threshold=first.threshold,
        n_true=sum(result.n_true for result in results),
        n_pred=sum(result.n_pred for result in results),
        n_true_positives=sum(result.n_true_positives for result in results),
        sum_matched_iou=float(sum(result.sum_matched_iou for result in results)),
        is_strict=first.is_strict,
    )


def average_precision(
    pairs: Iterable[tuple[ArrayLike, ArrayLike]],
    *,
    thresholds: Sequence[float] = (0.5,),
    pooling: str = "objects",
) -> tuple[float, ...]:
    """Return TP / (TP + FP + FN) at each threshold over (reference, prediction) pairs.

    Args:
        pairs: (reference, prediction) label images, e.g. `zip(references, predictions)`.
        thresholds: IoU thresholds (a match needs IoU >= threshold).
        pooling: "objects" sums TP, FP and FN over all images before dividing, so every
            object weighs the same; "images" averages the per-image scores.

    Returns:
        One score per threshold.

    Example:
        >>> one = (np.array([[1, 0, 2]]), np.array([[1, 0, 0]]))  # TP 1, FN 1
        >>> two = (np.array([[1, 1, 0]]), np.array([[1, 1, 0]]))  # TP 1
        >>> average_precision([one, two]), average_precision([one, two], pooling="images")
        ((0.6666666666666666,), (0.75,))

    Raises:
        ValueError: if `pooling` is unknown or `pairs` is empty.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    per_image = [
        match_instances(reference, prediction, thresholds=thresholds)
        for reference, prediction in pairs
    ]
    if not per_image:
        raise ValueError("pairs must hold at least one (reference, prediction) pair, got none")
    by_threshold = list(zip(*per_image))
    if pooling == "objects":
        return tuple(pool_matches(results).average_precision for results in by_threshold)
    return tuple(
        float(np.mean([result.average_precision for result in results]))
        for results in by_threshold
    )


def dsb_score(reference: ArrayLike, prediction: ArrayLike) -> float:
    """Return the Kaggle Data Science Bowl 2018 score of one image.

    The mean over tau = 0.50, 0.55, ..., 0.95 of TP / (TP + FP + FN), where a match needs
    IoU > tau (strictly, as Kaggle; Caicedo et al. 2019). An image with no reference and no
    predicted objects scores 1.0; one with objects in only one of them scores 0.0.

    Example:
        >>> reference = np.array([[1, 1, 1, 1, 0, 2]])
        >>> dsb_score(reference, reference)
        1.0
        >>> prediction = np.array([[1, 1, 1, 0, 0, 2]])  # IoU 0.75 and 1.0
        >>> round(dsb_score(reference, prediction), 3)  # (5 * 2/2 + 5 * 1/3) / 10
        0.667
    """
    results = match_instances(reference, prediction, thresholds=DSB_THRESHOLDS, is_strict=True)
    return float(np.mean([result.average_precision for result in results]))


def dsb_score_images(pairs: Iterable[tuple[ArrayLike, ArrayLike]]) -> float:
    """Return the DSB 2018 score of a data set: the mean of the per-image `dsb_score`.

    Raises:
        ValueError: if `pairs` is empty.
    """
    scores = [dsb_score(reference, prediction) for reference, prediction in pairs]
    if not scores:
        raise ValueError("pairs must hold at least one (reference, prediction) pair, got none")
    return float(np.mean(scores))


def _match_iou(iou: np.ndarray, threshold: float, *, is_strict: bool) -> MatchingResult:
    """Count the maximum one-to-one matching of pairs passing `threshold`, then its IoU."""
    n_true, n_pred = iou.shape
    is_candidate = iou > threshold if is_strict else iou >= threshold
    # IoU 0 means no overlap: never a match, even at threshold 0.
    is_candidate &= iou > 0
    rows, columns = np.nonzero(is_candidate)
    if rows.size and (np.bincount(rows).max() > 1 or np.bincount(columns).max() > 1):
        rows, columns = _hungarian(iou, is_candidate)
    return MatchingResult(
        threshold=threshold,
        n_true=int(n_true),
        n_pred=int(n_pred),
        n_true_positives=int(rows.size),
        sum_matched_iou=float(iou[rows, columns].sum()),
        is_strict=is_strict,
    )


def _hungarian(iou: np.ndarray, is_candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the candidate matching of most pairs and, among those, largest summed IoU."""
    # Only objects with a candidate partner take part, which keeps the problem small.
    row_ids = np.flatnonzero(is_candidate.any(axis=1))
    column_ids = np.flatnonzero(is_candidate.any(axis=0))
    candidate = is_candidate[np.ix_(row_ids, column_ids)]
    # One point per pair plus IoU scaled so that all IoUs together weigh less than one pair.
    n_max_pairs = min(candidate.shape)
    gain = candidate * (1.0 + iou[np.ix_(row_ids, column_ids)] / (n_max_pairs + 1))
    rows, columns = linear_sum_assignment(gain, maximize=True)
    is_match = candidate[rows, columns]
    return row_ids[rows[is_match]], column_ids[columns[is_match]]
