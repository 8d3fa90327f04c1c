"""Per-class IoU and Dice of class maps; variation of information between label images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from biounet.metrics.overlap import check_label_image, check_same_shape, contingency_table


@dataclass(frozen=True)
class VariationOfInformation:
    """The two conditional entropies of the variation of information (Meila 2007).

    Attributes:
        split: H(prediction | reference), grows when reference objects are split.
        merge: H(reference | prediction), grows when reference objects are merged.
    """

    split: float
    merge: float

    @property
    def total(self) -> float:
        """VI = split + merge, a metric on partitions: 0 iff they are equal up to ids."""
        return self.split + self.merge


def confusion_matrix(
    reference: ArrayLike, prediction: ArrayLike, *, n_classes: int | None = None
) -> np.ndarray:
    """Count pixels of reference class i predicted as class j.

    Args:
        reference: (Y, X) or (Z, Y, X) class map of non-negative integers.
        prediction: class map of the same shape.
        n_classes: number of classes; default 1 + the largest class in either map.

    Returns:
        (n_classes, n_classes) int64; rows are reference classes, columns predicted ones.

    Example:
        >>> confusion_matrix([[0, 1, 1]], [[0, 0, 1]]).tolist()
        [[1, 0], [1, 1]]

    Raises:
        ValueError: if the shapes differ or a class id is negative or >= `n_classes`.
    """
    reference = check_label_image(reference, name="reference")
    prediction = check_label_image(prediction, name="prediction")
    check_same_shape(reference, prediction)
    largest = max(int(reference.max(initial=0)), int(prediction.max(initial=0)))
    if n_classes is None:
        n_classes = largest + 1
    elif largest >= n_classes:
        raise ValueError(f"class ids must be < n_classes={n_classes}, got class {largest}")
    pair_index = reference.astype(np.int64).ravel() * n_classes + prediction.ravel()
    counts = np.bincount(pair_index, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def class_iou(
    reference: ArrayLike, prediction: ArrayLike, *, n_classes: int | None = None
) -> np.ndarray:
    """Return the intersection over union (Jaccard index) of every class.

    IoU_c = TP_c / (TP_c + FP_c + FN_c); NaN for a class absent from both maps, so that
    `np.nanmean` averages over the classes present.

    Example:
        >>> class_iou([[0, 1, 1, 2]], [[0, 0, 1, 2]], n_classes=4).round(3).tolist()
        [0.5, 0.5, 1.0, nan]
    """
    matrix = confusion_matrix(reference, prediction, n_classes=n_classes)
    true_positives = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positives
    return _divide_or_nan(true_positives, union)


def class_dice(
    reference: ArrayLike, prediction: ArrayLike, *, n_classes: int | None = None
) -> np.ndarray:
    """Return the Dice coefficient 2 |A ∩ B| / (|A| + |B|) of every class (NaN if absent).

    Dice = 2 IoU / (1 + IoU) class by class.

    Example:
        >>> class_dice([[0, 1, 1, 2]], [[0, 0, 1, 2]]).round(3).tolist()
        [0.667, 0.667, 1.0]
    """
    matrix = confusion_matrix(reference, prediction, n_classes=n_classes)
    true_positives = np.diag(matrix).astype(np.float64)
    return _divide_or_nan(2 * true_positives, matrix.sum(axis=0) + matrix.sum(axis=1))


def variation_of_information(
    reference: ArrayLike,
    prediction: ArrayLike,
    *,
    base: float = 2.0,
    ignore_reference_ids: Sequence[int] = (),
) -> VariationOfInformation:
    """Compute the variation of information between two label images (Meila 2007).

    VI = H(prediction | reference) + H(reference | prediction), with the joint distribution
    of ids given by the pixel counts of the contingency table. Background (0) is a segment
    like any other unless its id is listed in `ignore_reference_ids`.

    Args:
        reference: (Y, X) or (Z, Y, X) non-negative integer labels.
        prediction: integer labels of the same shape.
        base: base of the logarithm: 2 (bits, the default, as scikit-image and the CREMI
            challenge) or `math.e` (nats).
        ignore_reference_ids: reference ids whose pixels are left out (e.g. `(0,)` to skip
            unlabelled background, as CREMI does).

    Returns:
        The split and merge parts; 0 and 0 if no pixel is left.

    Example:
        >>> reference = np.array([[1, 1, 2, 2]])
        >>> vi = variation_of_information(reference, np.array([[1, 1, 1, 1]]))
        >>> vi.split, vi.merge  # one bit is lost by merging two equal halves
        (0.0, 1.0)
    """
    reference = check_label_image(reference, name="reference")
    prediction = check_label_image(prediction, name="prediction")
    check_same_shape(reference, prediction)
    if base <= 0 or base == 1:
        raise ValueError(f"base must be positive and not 1, got {base}")
    if len(ignore_reference_ids):
        is_kept = ~np.isin(reference, np.asarray(ignore_reference_ids))
        reference, prediction = reference[is_kept], prediction[is_kept]
    if reference.size == 0:
        return VariationOfInformation(split=0.0, merge=0.0)
    table, _, _ = contingency_table(reference, prediction)
    joint = table.tocoo()
    probability = joint.data / reference.size
    reference_probability = np.asarray(table.sum(axis=1)).ravel()[joint.row] / reference.size
    prediction_probability = np.asarray(table.sum(axis=0)).ravel()[joint.col] / reference.size
    # H(X | Y) = -sum p(x, y) log(p(x, y) / p(y)), summed over the non-zero cells only.
    split = -np.sum(probability * np.log(probability / reference_probability))
    merge = -np.sum(probability * np.log(probability / prediction_probability))
    scale = 1.0 / math.log(base)
    # The clamp removes -0.0 and rounding noise below zero from exact splits or merges.
    return VariationOfInformation(
        split=max(0.0, float(split) * scale), merge=max(0.0, float(merge) * scale)
    )


def _divide_or_nan(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    result = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=result, where=denominator > 0)
    return result
