"""ISBI 2012 EM segmentation challenge metrics: pixel and warping errors, and all three errors.

Computed as the organisers' Fiji code did (Trainable_Segmentation `metrics/`: PixelError,
WarpingError, ClassificationStatistics), with their protocol (`biounet.metrics.isbi_scan`):
0 in the ground truth is membrane, > 0 cell interior; a pixel is proposed interior when
its probability, rounded to float32, is > t; every slice is scored in 2-D and the best
value over the thresholds `isbi_thresholds` generates is reported. The Rand error and the
V_rand and V_info scores are in `biounet.metrics.isbi_rand`; `isbi_errors` gives the
three errors of the challenge's 2012 leaderboard.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from biounet.metrics.isbi_rand import rand_error
from biounet.metrics.isbi_scan import ThresholdScan, best_value, check_inputs, f_score
from biounet.metrics.warping import MismatchType, classify_mismatches, warp_ground_truth


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
    truth, values, thresholds = check_inputs(ground_truth, probabilities, thresholds, 1.0)
    n_truth = int(truth.sum())
    scores = []
    for threshold in thresholds:
        proposed = values > threshold
        true_positives = int(np.count_nonzero(proposed & truth))
        scores.append(
            f_score(true_positives, int(proposed.sum()) - true_positives, n_truth - true_positives)
        )
    return best_value(thresholds, [1.0 - score for score in scores], lower_is_better=True)


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
    truth, values, thresholds = check_inputs(ground_truth, probabilities, thresholds, 0.9)
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
    return best_value(thresholds, errors, lower_is_better=True)


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


