"""Tests of the contingency table and IoU matrix against direct pixel loops."""

from collections import Counter

import numpy as np
import pytest

from biounet.metrics import overlap
from biounet.metrics.overlap import check_label_image, contingency_table, iou_matrix


def _slow_table(reference: np.ndarray, prediction: np.ndarray) -> dict[tuple[int, int], int]:
    return dict(Counter(zip(reference.ravel().tolist(), prediction.ravel().tolist())))


def _as_dict(table, reference_ids, prediction_ids) -> dict[tuple[int, int], int]:
    coo = table.tocoo()
    return {
        (int(reference_ids[row]), int(prediction_ids[column])): int(count)
        for row, column, count in zip(coo.row, coo.col, coo.data)
    }


def _random_labels(rng, shape, ids) -> np.ndarray:
    return rng.choice(np.asarray(ids), size=shape)


@pytest.mark.parametrize("shape", [(9, 7), (4, 5, 6)])
@pytest.mark.parametrize(
    "ids",
    [
        [0, 1, 2, 3],  # ids index the table cells directly
        [0, 5, 17, 60_000],  # 60001**2 cells: ids are compacted through a lookup table
        [3, 10**9, 7 * 10**9],  # ids too large for a lookup table: compacted by sorting
    ],
)
def test_table_equals_pixel_loop(rng, shape, ids):
    reference = _random_labels(rng, shape, ids)
    prediction = _random_labels(rng, shape, [0, 2, 9, 12, ids[-1]])

    table, reference_ids, prediction_ids = contingency_table(reference, prediction)

    assert _as_dict(table, reference_ids, prediction_ids) == _slow_table(reference, prediction)
    np.testing.assert_array_equal(reference_ids, np.unique(reference))
    np.testing.assert_array_equal(prediction_ids, np.unique(prediction))
    assert table.sum() == reference.size


def test_dense_and_sorting_paths_agree(rng, monkeypatch):
    reference = _random_labels(rng, (20, 20), range(30))
    prediction = _random_labels(rng, (20, 20), range(25))
    dense, *_ = contingency_table(reference, prediction)
    monkeypatch.setattr(overlap, "_MAX_DENSE_CELLS", 0)  # 30 * 25 cells > 400 pixels

    sorted_counts, *_ = contingency_table(reference, prediction)

    np.testing.assert_array_equal(dense.toarray(), sorted_counts.toarray())


def test_row_and_column_sums_are_object_sizes(rng):
    reference = _random_labels(rng, (15, 16), [0, 4, 8])
    prediction = _random_labels(rng, (15, 16), [1, 2])
    table, reference_ids, prediction_ids = contingency_table(reference, prediction)
    for row, label in enumerate(reference_ids):
        assert table.toarray()[row].sum() == np.count_nonzero(reference == label)
    for column, label in enumerate(prediction_ids):
        assert table.toarray()[:, column].sum() == np.count_nonzero(prediction == label)


def test_unsigned_and_boolean_inputs():
    reference = np.array([[0, 3], [3, 3]], dtype=np.uint64)
    assert contingency_table(reference, reference)[0].toarray().tolist() == [[1, 0], [0, 3]]
    prediction = np.array([[False, True], [True, False]])
    table, reference_ids, prediction_ids = contingency_table(reference, prediction)
    # reference 0 meets prediction 0 once; reference 3 meets 0 once and 1 twice.
    np.testing.assert_array_equal(table.toarray(), [[1, 0], [1, 2]])
    assert reference_ids.tolist() == [0, 3] and prediction_ids.tolist() == [0, 1]


def test_permuting_ids_permutes_the_table(rng):
    reference = _random_labels(rng, (12, 12), [0, 1, 2, 3])
    prediction = _random_labels(rng, (12, 12), [0, 1, 2])
    relabel = np.array([0, 30, 10, 20])  # 1 -> 30, 2 -> 10, 3 -> 20
    table, *_ = contingency_table(reference, prediction)
    permuted, permuted_ids, _ = contingency_table(relabel[reference], prediction)
    assert permuted_ids.tolist() == [0, 10, 20, 30]
    np.testing.assert_array_equal(permuted.toarray(), table.toarray()[[0, 2, 3, 1]])


def test_empty_images():
    table, reference_ids, prediction_ids = contingency_table(
        np.zeros((0, 4), int), np.zeros((0, 4), int)
    )
    assert table.shape == (0, 0) and reference_ids.size == prediction_ids.size == 0


def test_iou_matrix_equals_direct_loop(rng):
    reference = _random_labels(rng, (3, 10, 10), [0, 2, 5, 6])
    prediction = _random_labels(rng, (3, 10, 10), [0, 1, 7])
    iou, reference_ids, prediction_ids = iou_matrix(reference, prediction)
    assert reference_ids.tolist() == [2, 5, 6] and prediction_ids.tolist() == [1, 7]
    for row, true_id in enumerate(reference_ids):
        for column, pred_id in enumerate(prediction_ids):
            true_mask, pred_mask = reference == true_id, prediction == pred_id
            expected = (true_mask & pred_mask).sum() / (true_mask | pred_mask).sum()
            assert iou[row, column] == pytest.approx(expected)


def test_iou_matrix_of_background_only():
    iou, reference_ids, prediction_ids = iou_matrix(np.zeros((3, 3), int), np.ones((3, 3), int))
    assert iou.shape == (0, 1) and prediction_ids.tolist() == [1]


def test_shape_mismatch_names_both_parameters():
    with pytest.raises(ValueError, match="prediction shape .* reference shape"):
        contingency_table(np.zeros((3, 3), int), np.zeros((3, 4), int))


def test_negative_ids_are_rejected():
    with pytest.raises(ValueError, match="reference must have non-negative ids"):
        contingency_table(np.array([[-1, 0]]), np.array([[0, 0]]))


def test_float_labels_are_rejected():
    with pytest.raises(TypeError, match="prediction must be an integer label image"):
        contingency_table(np.array([[1, 0]]), np.array([[0.5, 0.0]]))
    with pytest.raises(TypeError, match="labels must be an integer"):
        check_label_image(np.array(["a"]))
