"""Closing membrane gaps with watershed lines: one seed per component at every threshold."""

import numpy as np
import pytest
from scipy import ndimage

from biounet.boundaries import close_boundaries

FACES = ndimage.generate_binary_structure(2, 1)


def smooth_map(seed: int, shape=(64, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 2)
    # ranks spread the values uniformly over [0, 1): about half the map seeds basins
    return (field.ravel().argsort().argsort().reshape(shape) / field.size).astype(np.float32)


def seed_regions(foreground, seed_threshold, min_seed_size):
    """The seeds the docstring promises, labelled independently of the implementation."""
    labels, n = ndimage.label(foreground > seed_threshold, structure=FACES)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=range(1, n + 1))
    keep = [index for index, size in enumerate(sizes, start=1) if size >= min_seed_size]
    return labels, keep


@pytest.mark.parametrize("seed", range(8))
def test_no_component_holds_two_seeds_at_any_threshold(seed):
    foreground = smooth_map(seed)
    closed = close_boundaries(foreground, min_seed_size=4)
    seeds, keep = seed_regions(foreground, 0.5, 4)
    assert len(keep) >= 2  # the case is not trivial
    for threshold in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
        components, _ = ndimage.label(closed > threshold, structure=FACES)
        owners = {}
        for index in keep:
            ids = np.unique(components[seeds == index])
            assert ids.size == 1 and ids[0] > 0  # a seed is never cut or erased
            assert ids[0] not in owners, f"seeds {owners.get(ids[0])} and {index} merged at {threshold}"
            owners[ids[0]] = index


@pytest.mark.parametrize("seed", range(4))
def test_only_line_pixels_change_and_they_become_zero(seed):
    foreground = smooth_map(seed)
    closed = close_boundaries(foreground, min_seed_size=4)
    changed = closed != foreground
    assert changed.any()
    assert (closed[changed] == 0).all()
    # Thresholded at 0 the result is a partition: one component per kept seed, none other.
    seeds, keep = seed_regions(foreground, 0.5, 4)
    components, n_components = ndimage.label(closed > 0, structure=FACES)
    assert n_components == len(keep)
    assert {int(components[seeds == index][0]) for index in keep} == set(range(1, n_components + 1))


def test_a_gap_in_a_straight_membrane_is_closed_by_a_one_pixel_line():
    foreground = np.full((20, 31), 0.95, np.float32)
    foreground[:, 13:18] = 0.05  # a membrane five pixels wide
    foreground[8:12, 13:18] = 0.4  # ... faint over four rows: cells merge at t = 0.3
    assert ndimage.label(foreground > 0.3, structure=FACES)[1] == 1
    closed = close_boundaries(foreground)
    assert ndimage.label(closed > 0.3, structure=FACES)[1] == 2
    line = closed != foreground
    # one pixel wide: the gap's four rows plus the rest of the membrane's column
    assert line.sum(axis=1).tolist() == [1] * 20
    assert np.count_nonzero(line.any(axis=0)) <= 2  # it may step sideways in a plateau


def test_specks_below_the_seed_size_seed_nothing():
    foreground = np.full((30, 30), 0.05, np.float32)
    foreground[2:10, 2:10] = 0.9  # a cell of 64 px
    foreground[20:22, 20:22] = 0.9  # a speck of 4 px inside the membrane
    assert (close_boundaries(foreground, min_seed_size=16) == foreground).all()
    with_speck = close_boundaries(foreground, min_seed_size=4)
    assert (with_speck == 0).sum() > (foreground == 0).sum()  # the speck got its own basin


def test_stacks_are_closed_slice_by_slice_and_the_input_is_kept():
    stack = np.stack([smooth_map(seed) for seed in range(3)])
    before = stack.copy()
    closed = close_boundaries(stack, seed_threshold=0.6, min_seed_size=8)
    assert closed.dtype == np.float32 and closed.shape == stack.shape
    for index in range(3):
        np.testing.assert_array_equal(
            closed[index], close_boundaries(stack[index], seed_threshold=0.6, min_seed_size=8)
        )
    np.testing.assert_array_equal(stack, before)


def test_a_map_without_seeds_is_returned_unchanged():
    foreground = np.full((8, 8), 0.2, np.float64)
    closed = close_boundaries(foreground)
    assert closed.dtype == np.float64 and closed is not foreground
    np.testing.assert_array_equal(closed, foreground)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_values_keep_their_precision_and_seeds_are_compared_in_float64(dtype):
    foreground = np.full((6, 9), 0.3, dtype)
    foreground[:, 4] = 0.1  # two cells; float32(0.3) > 0.3 in float64, as the metrics see it
    closed = close_boundaries(foreground, seed_threshold=0.3, min_seed_size=1)
    assert closed.dtype == dtype
    expected_seeds = 2 if np.float64(dtype(0.3)) > 0.3 else 0
    assert ndimage.label(foreground.astype(np.float64) > 0.3, structure=FACES)[1] == expected_seeds
    changed = closed != foreground
    assert changed.sum() == (6 if expected_seeds == 2 else 0)  # the membrane column is the line
    np.testing.assert_array_equal(closed[~changed], foreground[~changed])
    near = np.full((6, 9), 0.50000001)
    near[:, 4] = 0.3  # seeds only in float64
    assert ndimage.label(close_boundaries(near, min_seed_size=1) > 0.0, structure=FACES)[1] == 2


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 5, 5), (2, 0, 5)])
def test_empty_maps_come_back_empty(shape):
    assert close_boundaries(np.zeros(shape, np.float32)).shape == shape


@pytest.mark.parametrize(
    ("foreground", "kwargs", "error", "words"),
    [
        (np.ones((4, 4), np.uint8), {}, TypeError, "foreground must be floating-point"),
        (np.ones((2, 2, 4, 4)), {}, ValueError, "foreground must be (Y, X) or (Z, Y, X)"),
        (np.full((4, 4), 1.5), {}, ValueError, "foreground must lie in [0, 1]"),
        (np.full((4, 4), np.nan), {}, ValueError, "foreground must not contain NaN"),
        (np.ones((4, 4)), {"seed_threshold": 1.0}, ValueError, "seed_threshold must lie in [0, 1)"),
        (np.ones((4, 4)), {"min_seed_size": 0}, ValueError, "min_seed_size must be >= 1"),
        (np.ones((4, 4)), {"min_seed_size": 2.5}, TypeError, "min_seed_size must be an int"),
        (np.ones((4, 4)), {"seed_threshold": "0.5"}, TypeError, "seed_threshold must be a number"),
        (np.ones((4, 4)), {"seed_threshold": True}, TypeError, "seed_threshold must be a number"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(foreground, kwargs, error, words):
    with pytest.raises(error) as caught:
        close_boundaries(foreground, **kwargs)
    assert words in str(caught.value) and "\n" not in str(caught.value)
