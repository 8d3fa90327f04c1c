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
    # Without the lines the thresholded original merges some seeds the result keeps apart.
    seeds, keep = seed_regions(foreground, 0.5, 4)
    merged_before = len({int(c) for c in ndimage.label(foreground > 0.0, structure=FACES)[0][np.isin(seeds, keep)]})
    assert merged_before < len(keep)


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
    np.testing.assert_array_equal(close_boundaries(foreground), foreground.astype(np.float32))


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
    ],
)
def test_bad_input_is_refused_naming_the_argument(foreground, kwargs, error, words):
    with pytest.raises(error) as caught:
        close_boundaries(foreground, **kwargs)
    assert words in str(caught.value) and "\n" not in str(caught.value)
