"""Cell Tracking Challenge SEG and DET measures of one frame, and their pooling over frames.

Both rest on the challenge's matching rule: a reference object R matches a result object
S iff |R ∩ S| > 0.5 |R|, so each reference object matches at most one result object
(Maška et al. 2014, Ulman et al. 2017; celltrackingchallenge.net/evaluation-methodology).
A 2-D frame and a 3-D volume are treated alike: an object is one id in one image. The
challenge's 3-D data sets with reference masks on single slices are not handled here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from biounet.metrics.overlap import contingency_table

# AOGM-D penalties of the challenge's DET (Matula et al. 2015): a split costs 5, adding a
# missed object 10, deleting a spurious one 1.
SPLIT_PENALTY = 5.0
FALSE_NEGATIVE_PENALTY = 10.0
FALSE_POSITIVE_PENALTY = 1.0


@dataclass(frozen=True, eq=False)
class SegResult:
    """Per-reference-object Jaccard indices of one frame.

    Attributes:
        jaccard: (n_reference,) float64, |R ∩ S| / |R ∪ S| of each reference object with
            its matching result object, 0 if none matches.
        reference_ids: (n_reference,) the reference ids, sorted, 0 excluded.
        matched_ids: (n_reference,) the matching result id, 0 where none matches.
    """

    jaccard: np.ndarray
    reference_ids: np.ndarray
    matched_ids: np.ndarray

    @property
    def score(self) -> float:
        """SEG of this frame: the mean Jaccard index, NaN if it has no reference object."""
        return float(self.jaccard.mean()) if self.jaccard.size else float("nan")


@dataclass(frozen=True)
class DetResult:
    """Operation counts that turn the result objects into the reference ones (AOGM-D).

    Attributes:
        n_reference: reference objects.
        n_false_negatives: reference objects no result object matches (must be added).
        n_false_positives: result objects matching no reference object (must be deleted).
        n_splits: result objects matching k > 1 reference objects need k - 1 splits each.
    """

    n_reference: int
    n_false_negatives: int
    n_false_positives: int
    n_splits: int

    @property
    def aogm_d(self) -> float:
        """Weighted cost of the operations (Matula et al. 2015, AOGM restricted to vertices)."""
        return (
            SPLIT_PENALTY * self.n_splits
            + FALSE_NEGATIVE_PENALTY * self.n_false_negatives
            + FALSE_POSITIVE_PENALTY * self.n_false_positives
        )

    @property
    def score(self) -> float:
        """DET = 1 - min(AOGM-D, AOGM-D_0) / AOGM-D_0, AOGM-D_0 = cost of adding every object.

        NaN without reference objects.
        """
        aogm_d_empty = FALSE_NEGATIVE_PENALTY * self.n_reference
        if aogm_d_empty == 0:
            return float("nan")
        return 1.0 - min(self.aogm_d, aogm_d_empty) / aogm_d_empty


def seg_score(reference: ArrayLike, prediction: ArrayLike) -> SegResult:
    """Compute the CTC SEG measure of one frame (2-D) or volume (3-D).

    J = |R ∩ S| / |R ∪ S| for the result object S with |R ∩ S| > 0.5 |R|, else 0; SEG is
    the mean J over the reference objects. To pool frames, average all objects' J
    (`seg_score_frames`), not the frames' means.

    Args:
        reference: (Y, X) or (Z, Y, X) non-negative integer labels, 0 = background.
        prediction: integer labels of the same shape, 0 = background.

    Returns:
        A `SegResult`; `.score` is SEG, `.jaccard` the per-object values.

    Example:
        >>> reference = np.array([[1, 1, 1, 1, 0, 2, 2]])
        >>> prediction = np.array([[5, 5, 5, 0, 0, 6, 0]])  # 6 covers only half of 2
        >>> result = seg_score(reference, prediction)
        >>> result.jaccard.tolist(), result.matched_ids.tolist(), result.score
        ([0.75, 0.0], [5, 0], 0.375)
    """
    matches = _match_objects(reference, prediction)
    jaccard = np.zeros(len(matches.reference_ids))
    matched_ids = np.zeros(len(matches.reference_ids), dtype=matches.prediction_ids.dtype)
    rows, columns = matches.rows, matches.columns
    union = matches.reference_sizes[rows] + matches.prediction_sizes[columns] - matches.overlaps
    jaccard[rows] = matches.overlaps / union
    matched_ids[rows] = matches.prediction_ids[columns]
    return SegResult(jaccard=jaccard, reference_ids=matches.reference_ids, matched_ids=matched_ids)


def seg_score_frames(pairs: Iterable[tuple[ArrayLike, ArrayLike]]) -> float:
    """Return SEG over frames: the mean Jaccard index over all reference objects of all frames.

    Frames without reference objects add nothing; the result is NaN if no frame has any.

    Example:
        >>> one = (np.array([[1, 1, 2, 2]]), np.array([[1, 1, 0, 0]]))  # J = 1 and 0
        >>> two = (np.array([[0, 3, 3, 0]]), np.array([[0, 4, 4, 0]]))  # J = 1
        >>> round(seg_score_frames([one, two]), 4)  # (1 + 0 + 1) / 3, not (0.5 + 1) / 2
        0.6667
    """
    jaccard = [seg_score(reference, prediction).jaccard for reference, prediction in pairs]
    all_jaccard = np.concatenate(jaccard) if jaccard else np.zeros(0)
    return float(all_jaccard.mean()) if all_jaccard.size else float("nan")


def det_score(reference: ArrayLike, prediction: ArrayLike) -> DetResult:
    """Compute the CTC DET operation counts of one frame (2-D) or volume (3-D).

    The challenge computes DET against its tracking markers (`TRA/man_track*.tif`), not
    against the full segmentation masks used by SEG; pass those as `reference` to match it.

    Example:
        >>> reference = np.array([[1, 1, 0, 2, 2, 0, 3, 3]])
        >>> prediction = np.array([[7, 7, 7, 7, 7, 0, 0, 0]])  # merges 1 and 2, misses 3
        >>> result = det_score(reference, prediction)
        >>> result.n_splits, result.n_false_negatives, result.score  # 1 - (5 + 10) / 30
        (1, 1, 0.5)
    """
    matches = _match_objects(reference, prediction)
    n_matches_per_prediction = np.bincount(
        matches.columns, minlength=len(matches.prediction_ids)
    )
    return DetResult(
        n_reference=len(matches.reference_ids),
        n_false_negatives=len(matches.reference_ids) - len(matches.rows),
        n_false_positives=int(np.count_nonzero(n_matches_per_prediction == 0)),
        n_splits=int(np.maximum(n_matches_per_prediction - 1, 0).sum()),
    )


def det_score_frames(pairs: Iterable[tuple[ArrayLike, ArrayLike]]) -> float:
    """Return DET over frames: the operation counts are summed before normalising."""
    results = [det_score(reference, prediction) for reference, prediction in pairs]
    pooled = DetResult(
        n_reference=sum(result.n_reference for result in results),
        n_false_negatives=sum(result.n_false_negatives for result in results),
        n_false_positives=sum(result.n_false_positives for result in results),
        n_splits=sum(result.n_splits for result in results),
    )
    return pooled.score


@dataclass(frozen=True, eq=False)
class _Matches:
    """Object ids, sizes and the pairs passing |R ∩ S| > 0.5 |R| (indices into the ids)."""

    reference_ids: np.ndarray
    prediction_ids: np.ndarray
    reference_sizes: np.ndarray
    prediction_sizes: np.ndarray
    rows: np.ndarray
    columns: np.ndarray
    overlaps: np.ndarray


def _match_objects(reference: ArrayLike, prediction: ArrayLike) -> _Matches:
    table, reference_ids, prediction_ids = contingency_table(reference, prediction)
    reference_sizes = np.asarray(table.sum(axis=1)).ravel()
    prediction_sizes = np.asarray(table.sum(axis=0)).ravel()
    is_reference_object = reference_ids != 0
    is_predicted_object = prediction_ids != 0
    objects = table[is_reference_object][:, is_predicted_object].tocoo()
    reference_sizes = reference_sizes[is_reference_object]
    prediction_sizes = prediction_sizes[is_predicted_object]
    # Integer form of overlap > 0.5 |R|; the rule lets a reference object match at most one.
    is_match = 2 * objects.data > reference_sizes[objects.row]
    return _Matches(
        reference_ids=reference_ids[is_reference_object],
        prediction_ids=prediction_ids[is_predicted_object],
        reference_sizes=reference_sizes,
        prediction_sizes=prediction_sizes,
        rows=objects.row[is_match].astype(np.int64),
        columns=objects.col[is_match].astype(np.int64),
        overlaps=objects.data[is_match],
    )
