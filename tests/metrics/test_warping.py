"""Tests of simple-point warping and mismatch classification against a slow reference."""

import numpy as np
import pytest
from scipy import ndimage

from biounet.metrics.warping import (
    NEIGHBOUR_OFFSETS,
    SIMPLE_POINTS,
    MismatchType,
    classify_mismatches,
    warp_ground_truth,
)

FOUR = ndimage.generate_binary_structure(2, 1)
EIGHT = np.ones((3, 3), dtype=bool)


# --- slow, obvious reference implementation (Jain et al. 2010 as the organisers ran it) ---


def reference_is_simple(patch: np.ndarray) -> bool:
    """T4(x, foreground) == 1 and T8(x, background) == 1 in the 3x3 patch, centre excluded."""
    foreground = patch.astype(bool).copy()
    foreground[1, 1] = False
    labels, _ = ndimage.label(foreground, structure=FOUR)
    t4 = len({labels[row, column] for row, column in ((0, 1), (1, 0), (1, 2), (2, 1))} - {0})
    background = ~patch.astype(bool)
    background[1, 1] = False
    _, t8 = ndimage.label(background, structure=EIGHT)
    return t4 == 1 and t8 == 1


def reference_warp(truth, probabilities, threshold):
    values = np.asarray(probabilities, dtype=np.float32)
    target = values.astype(np.float64) > threshold
    image = np.pad(np.asarray(truth) > 0, 1)
    height, width = target.shape
    while True:
        # column outer, row inner: the order ties keep under a stable sort
        mismatches = [
            (x, y)
            for x in range(width)
            for y in range(height)
            if image[y + 1, x + 1] != target[y, x]
        ]
        if not mismatches:
            break
        mismatches.sort(key=lambda xy: -np.float32(abs(float(values[xy[1], xy[0]]) - threshold)))
        n_flips = 0
        for x, y in mismatches:
            if reference_is_simple(image[y : y + 3, x : x + 3]):
                image[y + 1, x + 1] = not image[y + 1, x + 1]
                n_flips += 1
        if n_flips == 0:
            break
    warped = image[1:-1, 1:-1]
    return warped, warped != target


def reference_neighbour_ids(labels, row, column):
    height, width = labels.shape
    return {
        labels[row + d_row, column + d_column]
        for d_row in (-1, 0, 1)
        for d_column in (-1, 0, 1)
        if (d_row, d_column) != (0, 0)
        and 0 <= row + d_row < height
        and 0 <= column + d_column < width
    }


def reference_classify(warped, mismatches, radius):
    height, width = warped.shape
    labels, _ = ndimage.label(warped, structure=FOUR)
    result = np.zeros(warped.shape, dtype=np.uint8)
    for row, column in zip(*np.nonzero(mismatches)):
        ids = reference_neighbour_ids(labels, row, column)
        is_foreground = bool(warped[row, column])
        if ids == {0}:
            kind = MismatchType.OBJECT_DELETION if is_foreground else MismatchType.OBJECT_ADDITION
        elif len(ids) == 1:
            kind = MismatchType.HOLE_ADDITION if is_foreground else MismatchType.HOLE_DELETION
        elif len(ids) == 2 and not is_foreground:
            kind = MismatchType.HOLE_ADDITION
        elif len(ids) == 2:
            if radius < 1 or radius > width or radius > height:
                window, centre = warped.copy(), (row, column)
            else:
                window = np.zeros((2 * radius + 1, 2 * radius + 1), dtype=bool)
                for i in range(2 * radius + 1):
                    for j in range(2 * radius + 1):
                        source_row, source_column = row - radius + i, column - radius + j
                        if 0 <= source_row < height and 0 <= source_column < width:
                            window[i, j] = warped[source_row, source_column]
                centre = (radius, radius)
            window[centre] = False
            window_labels, _ = ndimage.label(window, structure=FOUR)
            is_split = len(reference_neighbour_ids(window_labels, *centre)) > 2
            kind = MismatchType.SPLIT if is_split else MismatchType.HOLE_DELETION
        else:
            kind = MismatchType.MERGE if not is_foreground else MismatchType.SPLIT
        result[row, column] = kind
    return result


def random_case(rng, shape=(24, 24), quantized=False):
    truth = ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > 0
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    probabilities = np.clip(ndimage.gaussian_filter(truth * 1.0, 1.0) + 0.8 * noise, 0, 1)
    if quantized:  # many equal |p - t| to exercise the tie order
        probabilities = np.round(probabilities * 4) / 4
    return truth.astype(np.uint8), probabilities.astype(np.float32)


# --- tests ---


def test_simple_point_table_matches_connected_components_on_all_neighbourhoods():
    for code in range(256):
        patch = np.zeros((3, 3), dtype=bool)
        for bit, (d_row, d_column) in enumerate(NEIGHBOUR_OFFSETS):
            patch[1 + d_row, 1 + d_column] = (code >> bit) & 1
        for centre in (False, True):  # simplicity ignores the centre's own value
            patch[1, 1] = centre
            assert SIMPLE_POINTS[code] == reference_is_simple(patch), (code, centre)


@pytest.mark.parametrize("seed", range(8))
def test_warping_and_classification_equal_the_reference(seed):
    rng = np.random.default_rng(seed)
    truth, probabilities = random_case(rng, quantized=seed % 2 == 1)
    for threshold in (0.0, 0.30000000000000004, 0.5, 0.8999999999999999):
        warped, mismatches = warp_ground_truth(truth, probabilities, threshold)
        expected_warped, expected_mismatches = reference_warp(truth, probabilities, threshold)
        np.testing.assert_array_equal(warped, expected_warped)
        np.testing.assert_array_equal(mismatches, expected_mismatches)
        for radius in (2, 20, 30):  # window, window, whole image (radius > side)
            np.testing.assert_array_equal(
                classify_mismatches(warped, mismatches, radius=radius),
                reference_classify(warped, mismatches, radius),
            )


def test_random_cases_exercise_every_decisive_branch():
    seen = set()
    for seed in range(8):
        truth, probabilities = random_case(np.random.default_rng(seed), quantized=seed % 2 == 1)
        for threshold in (0.0, 0.5, 0.8999999999999999):
            warped, mismatches = warp_ground_truth(truth, probabilities, threshold)
            seen |= set(np.unique(classify_mismatches(warped, mismatches, radius=2)).tolist())
    assert {MismatchType.MERGE, MismatchType.SPLIT, MismatchType.HOLE_DELETION} <= seen


def test_boundary_shift_is_absorbed_by_simple_points():
    truth = np.zeros((12, 12), dtype=np.uint8)
    truth[3:9, 2:7] = 1
    proposal = np.zeros((12, 12), dtype=np.float32)
    proposal[2:10, 4:10] = 1.0  # the same square, shifted and grown
    warped, mismatches = warp_ground_truth(truth, proposal, 0.5)
    np.testing.assert_array_equal(warped, proposal > 0.5)
    assert not mismatches.any()


def test_cut_through_an_object_leaves_one_split_pixel():
    truth = np.zeros((9, 11), dtype=np.uint8)
    truth[2:7, 1:10] = 1
    proposal = truth.astype(np.float32)
    proposal[:, 5] = 0.0  # a one-pixel membrane splits the object in two
    warped, mismatches = warp_ground_truth(truth, proposal, 0.5)
    assert mismatches.sum() == 1 and warped[mismatches].all()
    classes = classify_mismatches(warped, mismatches)
    assert classes[mismatches].tolist() == [MismatchType.SPLIT]


def test_filled_membrane_leaves_a_line_of_merge_pixels():
    truth = np.ones((10, 12), dtype=np.uint8)
    truth[:, 5:8] = 0  # a membrane three pixels wide between two cells
    warped, mismatches = warp_ground_truth(truth, np.ones((10, 12), np.float32), 0.5)
    assert mismatches.sum() == 10  # thinned to a one-pixel line the height of the image
    classes = classify_mismatches(warped, mismatches)
    assert set(classes[mismatches].tolist()) == {MismatchType.MERGE}


def test_one_pixel_hole_is_a_hole_not_a_split_or_merge():
    truth = np.zeros((9, 9), dtype=np.uint8)
    truth[2:7, 2:7] = 1
    proposal = truth.astype(np.float32)
    proposal[4, 4] = 0.0
    warped, mismatches = warp_ground_truth(truth, proposal, 0.5)
    assert mismatches.sum() == 1 and mismatches[4, 4]
    assert classify_mismatches(warped, mismatches)[4, 4] == MismatchType.HOLE_ADDITION


def test_window_radius_decides_whether_a_ring_neck_splits():
    warped = np.zeros((15, 15), dtype=bool)
    warped[2:13, 2:13] = True
    warped[4:11, 4:11] = False  # an annulus two pixels thick ...
    warped[2:4, 7] = False
    warped[3, 7] = True  # ... with a one-pixel neck at (3, 7)
    mismatches = np.zeros_like(warped)
    mismatches[3, 7] = True
    local = classify_mismatches(warped, mismatches, radius=2)[3, 7]
    whole = classify_mismatches(warped, mismatches, radius=0)[3, 7]
    assert local == MismatchType.SPLIT  # the ring closes outside a 5x5 window
    assert whole == MismatchType.HOLE_DELETION


def test_identical_maps_warp_to_themselves():
    truth, _ = random_case(np.random.default_rng(3))
    warped, mismatches = warp_ground_truth(truth, truth.astype(np.float32), 0.5)
    np.testing.assert_array_equal(warped, truth > 0)
    assert not mismatches.any()


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="ground_truth and probabilities"):
        warp_ground_truth(np.zeros((4, 4), int), np.zeros((4, 5)), 0.5)
