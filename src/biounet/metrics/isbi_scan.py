"""The ISBI 2012 organisers' scoring protocol: their threshold loop and input conventions.

Shared by the pixel, Rand and warping errors (`biounet.metrics.isbi`,
`biounet.metrics.isbi_rand`): 0 in the ground truth is membrane, > 0 cell interior; a
pixel is proposed interior when its probability, rounded to float32, is > t; the best
value over the thresholds is reported, the first one reaching it on ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


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


def check_inputs(
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


def f_score(true_positives: float, false_positives: float, false_negatives: float) -> float:
    """F1 with ClassificationStatistics' conventions: P = 1 if FP = 0, R = 1 if FN = 0."""
    precision = 1.0 if false_positives == 0 else true_positives / (true_positives + false_positives)
    recall = 1.0 if false_negatives == 0 else true_positives / (true_positives + false_negatives)
    return 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)


def best_value(
    thresholds: tuple[float, ...], values: list[float], *, lower_is_better: bool
) -> ThresholdScan:
    """Pick the first best value, as the organisers' strict `<` / `>` comparisons do."""
    index = int(np.argmin(values) if lower_is_better else np.argmax(values))
    return ThresholdScan(
        float(values[index]), thresholds[index], thresholds, tuple(map(float, values))
    )
