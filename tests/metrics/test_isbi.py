"""Tests of the ISBI 2012 challenge metrics: thresholds, pixel, Rand, warping, V_rand, V_info."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import adapted_rand_error

from biounet.metrics.isbi import isbi_errors, pixel_error, warping_error
from biounet.metrics.isbi_rand import rand_error, v_info, v_rand
from biounet.metrics.isbi_scan import ThresholdScan, isbi_thresholds

FOUR = ndimage.generate_binary_structure(2, 1)


def random_blobs(rng, shape=(24, 24), sigma=2.0):
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma) > 0


def random_case(rng, shape=(24, 24)):
    truth = random_blobs(rng, shape)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    probabilities = np.clip(ndimage.gaussian_filter(truth * 1.0, 1.0) + 0.8 * noise, 0, 1)
    return truth.astype(np.uint8), probabilities.astype(np.float32)


def segmentations(truth, probabilities, threshold):
    """Ground-truth components and predicted components, boundary pixels made singletons."""
    # Java compares a float pixel with a double threshold; numpy would round the threshold to
    # float32 (0.9999999999999999 -> 1.0), so compare in float64.
    is_foreground = probabilities.astype(np.float64) > threshold
    truth_labels, _ = ndimage.label(truth > 0, structure=FOUR)
    predicted, n_predicted = ndimage.label(is_foreground, structure=FOUR)
    is_boundary = predicted == 0
    predicted[is_boundary] = n_predicted + 1 + np.arange(is_boundary.sum())
    return truth_labels, predicted


def f_score(true_positives, false_positives, false_negatives):
    precision = 1.0 if false_positives == 0 else true_positives / (true_positives + false_positives)
    recall = 1.0 if false_negatives == 0 else true_positives / (true_positives + false_negatives)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def reference_rand_counts(truth, probabilities, threshold, *, ordered):
    """Count pixel pairs of the ground-truth foreground directly from the definition.

    ordered=True counts all ordered pairs, a pixel with itself included (the N^2 normalisation);
    ordered=False counts unordered pairs of distinct pixels with boundary pixels dropped from
    the prediction side (the pairs normalisation).
    """
    truth_labels, predicted = segmentations(truth, probabilities, threshold)
    inside = truth_labels > 0
    a, b = truth_labels[inside], predicted[inside]
    is_segment = probabilities[inside].astype(np.float64) > threshold
    same_truth = a[:, None] == a[None, :]
    same_prediction = b[:, None] == b[None, :]
    if not ordered:
        distinct = np.triu(np.ones(same_truth.shape, dtype=bool), k=1)
        same_truth &= distinct
        same_prediction &= distinct & is_segment[:, None] & is_segment[None, :]
    true_positives = int((same_truth & same_prediction).sum())
    return (
        true_positives,
        int((same_prediction & ~same_truth).sum()),
        int((same_truth & ~same_prediction).sum()),
    )


def test_thresholds_reproduce_the_java_double_loop():
    thresholds = isbi_thresholds(0.0, 1.0)
    assert len(thresholds) == 11 and thresholds[-1] == 0.9999999999999999
    assert thresholds[3] == 0.30000000000000004 and thresholds[8] == 0.7999999999999999
    assert len(isbi_thresholds(0.0, 0.9)) == 10
    assert isbi_thresholds(0.0, 0.9) == thresholds[:10]
    with pytest.raises(ValueError, match="step"):
        isbi_thresholds(0.0, 1.0, step=0.0)


def test_identical_maps_score_perfectly(rng):
    truth = random_blobs(rng).astype(np.uint8) * 255
    probabilities = (truth > 0).astype(np.float32)
    assert isbi_errors(truth, probabilities) == {
        "pixel_error": 0.0,
        "rand_error": 0.0,
        "warping_error": 0.0,
    }
    assert rand_error(truth, probabilities, normalization="pairs").value == 0.0
    assert warping_error(truth, probabilities, variant="classic").value == 0.0
    assert v_rand(truth, probabilities).value == 1.0
    assert v_info(truth, probabilities).value == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(24, 24), (3, 20, 17)])
def test_pixel_error_equals_direct_f1(rng, shape):
    truth = rng.random(shape) < 0.7
    probabilities = rng.random(shape)
    scan = pixel_error(truth, probabilities)
    expected = []
    for threshold in isbi_thresholds(0.0, 1.0):
        proposed = probabilities.astype(np.float32) > threshold
        expected.append(
            1
            - f_score(
                (proposed & truth).sum(), (proposed & ~truth).sum(), (~proposed & truth).sum()
            )
        )
    np.testing.assert_allclose(scan.values, expected, rtol=0, atol=1e-15)
    assert scan.value == min(expected)
    assert scan.threshold == isbi_thresholds(0.0, 1.0)[int(np.argmin(expected))]


@pytest.mark.parametrize("seed", range(4))
def test_pairs_normalisation_equals_skimage_adapted_rand_error(seed):
    # skimage restricts its contingency table to the ground-truth foreground (ignore_labels=(0,))
    # and subtracts n from every sum of squares, i.e. counts pairs of distinct pixels; singleton
    # predicted-boundary pixels then add nothing, exactly like the pairs normalisation, which
    # drops j = 0 from TP and FP but keeps it in the ground-truth sizes a_i.
    rng = np.random.default_rng(seed)
    truth, probabilities = random_case(rng, shape=(40, 40))
    threshold = 0.5
    truth_labels, predicted = segmentations(truth, probabilities, threshold)
    expected, _, _ = adapted_rand_error(truth_labels, predicted, ignore_labels=(0,))
    scan = rand_error(truth, probabilities, normalization="pairs", thresholds=[threshold])
    assert scan.value == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("normalization", ["n_squared", "pairs"])
def test_rand_error_counts_pixel_pairs_as_defined(normalization, rng):
    truth, probabilities = random_case(rng, shape=(20, 20))
    scan = rand_error(truth, probabilities, normalization=normalization)
    expected = [
        1
        - f_score(
            *reference_rand_counts(truth, probabilities, t, ordered=normalization == "n_squared")
        )
        for t in isbi_thresholds(0.0, 1.0)
    ]
    np.testing.assert_allclose(scan.values, expected, rtol=0, atol=1e-12)


def test_rand_error_pools_counts_over_slices(rng):
    first, second = random_case(rng), random_case(rng)
    truth = np.stack([first[0], second[0]])
    probabilities = np.stack([first[1], second[1]])
    counts = [
        np.add(
            reference_rand_counts(*first, t, ordered=True),
            reference_rand_counts(*second, t, ordered=True),
        )
        for t in isbi_thresholds(0.0, 1.0)
    ]
    expected = [1 - f_score(*count) for count in counts]
    np.testing.assert_allclose(rand_error(truth, probabilities).values, expected, atol=1e-12)


def test_rand_error_of_a_split_row_by_hand():
    # ground truth: one segment of 4 pixels; prediction: {0, 1}, boundary pixel 2, {3}
    truth, probabilities = np.array([[1, 1, 1, 1]]), np.array([[1.0, 1.0, 0.0, 1.0]])
    # N^2: TP = 2^2 + 1^2 + 1 (boundary singleton) = 6, FN = 16 - 6, FP = 0 -> F = 6 / 11
    n_squared = rand_error(truth, probabilities, thresholds=[0.5])
    assert n_squared.value == pytest.approx(1 - 6 / 11, abs=1e-15)
    # pairs: TP = C(2, 2) = 1, FN = C(4, 2) - 1 = 5, FP = 0 -> F = 2 / 7
    pairs = rand_error(truth, probabilities, normalization="pairs", thresholds=[0.5])
    assert pairs.value == pytest.approx(1 - 2 / 7, abs=1e-15)


def test_v_info_edge_cases():
    one_segment = np.ones((3, 3), dtype=int)
    assert v_info(one_segment, np.ones((3, 3))).value == 1.0  # one segment on each side
    halves = np.array([[1.0, 1.0, 0.0, 1.0]])
    assert v_info([[1, 1, 1, 1]], halves, thresholds=[0.5]).value == 0.0  # I = 0
    assert v_info(np.zeros((3, 3), dtype=int), np.ones((3, 3))).value == 1.0  # no foreground


def test_v_rand_is_one_minus_the_default_rand_error(rng):
    truth, probabilities = random_case(rng)
    np.testing.assert_allclose(
        v_rand(truth, probabilities).values,
        1 - np.array(rand_error(truth, probabilities).values),
        atol=1e-15,
    )


def test_v_info_equals_entropies_of_the_joint_histogram(rng):
    truth, probabilities = random_case(rng, shape=(32, 32))
    threshold = 0.4
    truth_labels, predicted = segmentations(truth, probabilities, threshold)
    inside = truth_labels > 0

    def entropy(*labels):
        _, counts = np.unique(np.stack(labels), axis=1, return_counts=True)
        p = counts / counts.sum()
        return -(p * np.log(p)).sum()

    h_truth, h_prediction = entropy(truth_labels[inside]), entropy(predicted[inside])
    information = h_truth + h_prediction - entropy(truth_labels[inside], predicted[inside])
    scan = v_info(truth, probabilities, thresholds=[threshold])
    assert scan.value == pytest.approx(2 * information / (h_truth + h_prediction), abs=1e-12)


def test_v_info_averages_slices(rng):
    first, second = random_case(rng), random_case(rng)
    expected = (np.array(v_info(*first).values) + v_info(*second).values) / 2
    stacked = v_info(np.stack([first[0], second[0]]), np.stack([first[1], second[1]]))
    np.testing.assert_allclose(stacked.values, expected, atol=1e-12)


def test_warping_error_counts_only_splits_and_mergers():
    truth = np.ones((10, 12), dtype=np.uint8)
    truth[:, 5:8] = 0  # two cells; the proposal merges them and punches a hole in one
    probabilities = np.ones((10, 12), dtype=np.float32)
    probabilities[5, 1] = 0.0
    split_merge = warping_error(truth, probabilities)
    classic = warping_error(truth, probabilities, variant="classic")
    assert split_merge.value == 10 / 120  # the merge line; the hole is not counted
    assert classic.value == 11 / 120
    assert split_merge.thresholds == isbi_thresholds(0.0, 0.9)


def test_one_pixel_hole_has_no_split_merge_error_but_a_classic_one():
    truth = np.zeros((9, 9), dtype=np.uint8)
    truth[2:7, 2:7] = 1
    probabilities = truth.astype(np.float32)
    probabilities[4, 4] = 0.05
    assert warping_error(truth, probabilities).value == 0.0
    classic = warping_error(truth, probabilities, variant="classic")
    assert classic.value == 0.0 and classic.threshold == 0.0  # at t = 0 the hole is foreground
    assert classic.values[1] == 1 / 81


def test_split_object_costs_one_pixel():
    truth = np.zeros((9, 11), dtype=np.uint8)
    truth[2:7, 1:10] = 1
    probabilities = truth.astype(np.float32)
    probabilities[:, 5] = 0.0
    assert warping_error(truth, probabilities).values == (1 / 99,) * 10


def test_stack_of_copies_scores_like_one_slice(rng):
    truth, probabilities = random_case(rng)
    metrics = (pixel_error, rand_error, warping_error, v_rand, v_info)
    single = [metric(truth, probabilities) for metric in metrics]
    stacked = [metric(np.stack([truth] * 2), np.stack([probabilities] * 2)) for metric in metrics]
    for one, two in zip(single, stacked):
        np.testing.assert_allclose(two.values, one.values, atol=1e-12)


def test_probabilities_are_compared_in_float32_like_imagej():
    # float32(0.3) = 0.30000001192... > 0.30000000000000004, although 0.3 < 0.30000000000000004
    truth = np.array([[0, 1]])
    scan = pixel_error(truth, np.array([[0.0, 0.3]]), thresholds=[0.30000000000000004])
    assert scan.value == 0.0


def test_best_threshold_is_the_first_best():
    truth = np.array([[0, 1, 1, 0]])
    scan = pixel_error(truth, np.array([[0.0, 1.0, 1.0, 0.0]]))
    assert isinstance(scan, ThresholdScan)
    assert scan.value == 0.0 and scan.threshold == 0.0 and set(scan.values) == {0.0}


@pytest.mark.parametrize(
    ("truth", "probabilities", "error", "match"),
    [
        (np.zeros((4, 4)), np.zeros((4, 4)), TypeError, "ground_truth"),
        (np.zeros((4, 4), int), np.zeros((4, 5)), ValueError, "probabilities shape"),
        (np.zeros((2, 2, 4, 4), int), np.zeros((2, 2, 4, 4)), ValueError, "ground_truth must be"),
        (np.zeros((4, 4), int), np.full((4, 4), 1.5), ValueError, r"\[0, 1\]"),
        (np.zeros((4, 4), int), np.full((4, 4), np.nan), ValueError, "finite"),
        (np.zeros((4, 4), int), np.zeros((4, 4), complex), TypeError, "probabilities"),
    ],
)
def test_invalid_inputs_are_rejected(truth, probabilities, error, match):
    with pytest.raises(error, match=match):
        pixel_error(truth, probabilities)


def test_invalid_options_are_rejected():
    truth, probabilities = np.ones((4, 4), int), np.ones((4, 4))
    with pytest.raises(ValueError, match="normalization"):
        rand_error(truth, probabilities, normalization="squares")
    with pytest.raises(ValueError, match="variant"):
        warping_error(truth, probabilities, variant="clustered")
    with pytest.raises(ValueError, match="thresholds"):
        pixel_error(truth, probabilities, thresholds=[])
    with pytest.raises(ValueError, match="thresholds"):
        pixel_error(truth, probabilities, thresholds=[0.5, 1.5])


@pytest.mark.data
def test_real_labels_against_themselves_and_an_eroded_copy(data_root):
    from PIL import Image

    labels_dir = data_root / "isbi2012" / "train" / "labels"
    truth = np.stack([np.array(Image.open(labels_dir / f"{index:02d}.png")) for index in (0, 20)])
    assert set(np.unique(truth).tolist()) == {0, 255}
    same = (truth > 0).astype(np.float32)
    assert isbi_errors(truth, same) == {"pixel_error": 0.0, "rand_error": 0.0, "warping_error": 0.0}

    eroded = np.stack([ndimage.binary_erosion(plane > 0, FOUR) for plane in truth])
    errors = isbi_errors(truth, eroded.astype(np.float32))
    # a one-pixel erosion: a few per cent of pixels and pairs, and the necks it cuts are splits
    assert 0.01 < errors["pixel_error"] < 0.1
    assert 0.01 < errors["rand_error"] < 0.1
    assert 0.0 < errors["warping_error"] < 1e-3
    assert errors["warping_error"] < warping_error(truth, eroded * 1.0, variant="classic").value
