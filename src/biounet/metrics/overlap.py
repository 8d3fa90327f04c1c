"""Contingency table of two label images, the pixel overlap counts every metric builds on."""

from __future__ import annotations

import numpy as np
import scipy.sparse
from numpy.typing import ArrayLike

# A bincount over all (reference id, prediction id) cells is the fastest count, but its
# memory grows with the product of the largest ids. Beyond this many cells (or the pixel
# count, if larger) the ids are first compacted to 0..n-1; beyond it even then, the pairs
# are counted by sorting.
_MAX_DENSE_CELLS = 1 << 24


def check_label_image(labels: ArrayLike, *, name: str = "labels") -> np.ndarray:
    """Return `labels` as an integer array, or raise naming `name` if it is not a label image.

    Boolean masks are accepted as labels {0, 1}.

    Example:
        >>> check_label_image([[0, 2], [2, 5]]).dtype.kind
        'i'
        >>> check_label_image([[0.0, 1.0]], name="prediction")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: prediction must be an integer label image, got dtype float64; ...

    Raises:
        TypeError: if the dtype is not integer or boolean.
        ValueError: if an id is negative.
    """
    array = np.asarray(labels)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be an integer label image, got dtype {array.dtype}; "
            f"convert probabilities with biounet.postprocess.probabilities_to_labels"
        )
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise ValueError(f"{name} must have non-negative ids, got minimum {array.min()}")
    return array


def check_same_shape(reference: np.ndarray, prediction: np.ndarray) -> None:
    """Raise a ValueError naming both parameters if the two images differ in shape.

    Example:
        >>> check_same_shape(np.zeros((2, 3)), np.zeros((2, 3)))
    """
    if reference.shape != prediction.shape:
        raise ValueError(
            f"prediction shape {prediction.shape} must equal reference shape {reference.shape}"
        )


def contingency_table(
    reference: ArrayLike, prediction: ArrayLike
) -> tuple[scipy.sparse.csr_array, np.ndarray, np.ndarray]:
    """Count the pixels shared by every pair of ids of two label images of any dimension.

    Background (id 0) is an id like any other here: it gets a row or column when present,
    so the row sums are the sizes of the reference objects. Ids need not be contiguous.

    Args:
        reference: non-negative integer labels of any shape, e.g. (Y, X) or (Z, Y, X).
        prediction: integer labels of the same shape.

    Returns:
        `(table, reference_ids, prediction_ids)`: `table[i, j]` (int64, sparse CSR of shape
        (n_reference_ids, n_prediction_ids)) counts the pixels with reference id
        `reference_ids[i]` and prediction id `prediction_ids[j]`; both id arrays are sorted
        and list exactly the ids present. Use `table.toarray()` for a dense array.

    Example:
        >>> table, reference_ids, prediction_ids = contingency_table(
        ...     [[0, 0, 7, 7]], [[3, 0, 0, 3]])
        >>> table.toarray()
        array([[1, 1],
               [1, 1]])
        >>> reference_ids.tolist(), prediction_ids.tolist()
        ([0, 7], [0, 3])

    Raises:
        TypeError: if an input is not an integer (or boolean) array.
        ValueError: if the shapes differ or an id is negative.
    """
    reference = check_label_image(reference, name="reference")
    prediction = check_label_image(prediction, name="prediction")
    check_same_shape(reference, prediction)
    if reference.size == 0:
        empty = scipy.sparse.csr_array((0, 0), dtype=np.int64)
        return empty, reference.ravel(), prediction.ravel()
    n_columns = int(prediction.max()) + 1
    n_cells = (int(reference.max()) + 1) * n_columns
    if n_cells <= max(_MAX_DENSE_CELLS, reference.size):
        # Small ids (the usual 1..n) index the cells directly: no compaction pass needed.
        pair_index = reference.ravel().astype(np.int64)
        pair_index *= n_columns
        # In place and unsafe casting, as uint64 + int64 would promote to float64.
        np.add(pair_index, prediction.ravel(), out=pair_index, casting="unsafe")
        counts = np.bincount(pair_index, minlength=n_cells)
        (cells,) = np.nonzero(counts)
        row_ids, column_ids = np.divmod(cells, n_columns)
        reference_ids = np.unique(row_ids).astype(reference.dtype)
        prediction_ids = np.unique(column_ids).astype(prediction.dtype)
        rows = np.searchsorted(reference_ids, row_ids)
        columns = np.searchsorted(prediction_ids, column_ids)
        counts = counts[cells]
    else:
        rows, columns, counts, reference_ids, prediction_ids = _count_compacted_pairs(
            reference, prediction
        )
    table = scipy.sparse.csr_array(
        (counts.astype(np.int64), (rows, columns)),
        shape=(len(reference_ids), len(prediction_ids)),
        dtype=np.int64,
    )
    return table, reference_ids, prediction_ids


def iou_matrix(
    reference: ArrayLike, prediction: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the intersection over union of every reference object with every predicted one.

    IoU(R, S) = |R ∩ S| / |R ∪ S| (Jaccard index); background (id 0) is excluded.

    Args:
        reference: (Y, X) or (Z, Y, X) non-negative integer labels, 0 = background.
        prediction: integer labels of the same shape.

    Returns:
        `(iou, reference_ids, prediction_ids)`: `iou` is dense float64 of shape
        (n_reference_objects, n_predicted_objects); the id arrays are sorted, without 0.

    Example:
        >>> iou, reference_ids, prediction_ids = iou_matrix([[1, 1, 0, 2]], [[5, 5, 5, 0]])
        >>> iou.round(3).tolist(), reference_ids.tolist(), prediction_ids.tolist()
        ([[0.667], [0.0]], [1, 2], [5])
    """
    table, reference_ids, prediction_ids = contingency_table(reference, prediction)
    reference_sizes = np.asarray(table.sum(axis=1)).ravel()
    prediction_sizes = np.asarray(table.sum(axis=0)).ravel()
    is_reference_object = reference_ids != 0
    is_predicted_object = prediction_ids != 0
    intersection = table[is_reference_object][:, is_predicted_object].toarray()
    union = (
        reference_sizes[is_reference_object, None]
        + prediction_sizes[None, is_predicted_object]
        - intersection
    )
    # Every object has at least one pixel, so the union is never empty.
    iou = intersection / union
    return iou, reference_ids[is_reference_object], prediction_ids[is_predicted_object]


def _count_compacted_pairs(
    reference: np.ndarray, prediction: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Count id pairs after mapping each image's ids to 0..n-1 (for large, sparse ids)."""
    reference_ids, reference_index = _compact_ids(reference.ravel())
    prediction_ids, prediction_index = _compact_ids(prediction.ravel())
    n_columns = len(prediction_ids)
    n_cells = len(reference_ids) * n_columns
    pair_index = reference_index * np.int64(n_columns) + prediction_index
    if n_cells <= max(_MAX_DENSE_CELLS, reference.size):
        counts = np.bincount(pair_index, minlength=n_cells)
        (cells,) = np.nonzero(counts)
        counts = counts[cells]
    else:
        cells, counts = np.unique(pair_index, return_counts=True)
    rows, columns = np.divmod(cells, n_columns)
    return rows, columns, counts, reference_ids, prediction_ids


def _compact_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the sorted ids present in flat `labels` and each pixel's index into them."""
    max_id = int(labels.max())
    # A lookup table indexed by id is O(N) where np.unique sorts; use it unless ids are huge.
    if max_id <= max(4 * labels.size, 1 << 16):
        # uint64 cannot be cast safely to bincount's intp, although these ids fit.
        is_present = np.bincount(labels.astype(np.intp, copy=False), minlength=max_id + 1) > 0
        ids = np.flatnonzero(is_present).astype(labels.dtype)
        lookup = np.cumsum(is_present) - 1
        return ids, lookup[labels].astype(np.int64, copy=False)
    ids, index = np.unique(labels, return_inverse=True)
    return ids, index.astype(np.int64, copy=False).ravel()
