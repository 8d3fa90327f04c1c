"""Tests of probabilities -> instance labels."""

import numpy as np
import pytest
from scipy import ndimage

from biounet.metrics.overlap import contingency_table
from biounet.postprocess import (
    PostprocessConfig,
    instances_from_probabilities,
    probabilities_to_labels,
)


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    squared = sum((axis - c) ** 2 for axis, c in zip(grid, centre))
    return squared <= radius**2


def _touching_balls(shape, ndim) -> tuple[np.ndarray, np.ndarray]:
    """Two balls of radius 10 whose centres are 16 px apart: the neck is 12 px wide."""
    middle = [size // 2 for size in shape]
    first = list(middle)
    second = list(middle)
    first[-1] -= 8
    second[-1] += 8
    return _ball(shape, first, 10), _ball(shape, second, 10)


def _assert_consecutive(labels: np.ndarray) -> None:
    assert labels.dtype == np.int32
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(ids.size) if 0 in ids else ids)
    assert labels.min() >= 0


@pytest.mark.parametrize("shape", [(40, 60), (28, 28, 48)])
def test_watershed_splits_two_touching_balls(shape):
    first, second = _touching_balls(shape, len(shape))
    assert (first & second).any()  # they overlap, so the mask is one component
    foreground = np.where(first | second, 0.9, 0.05)

    labels = probabilities_to_labels(foreground)

    _assert_consecutive(labels)
    assert labels.max() == 2
    left, right = labels[first & ~second], labels[second & ~first]
    # Each ball's own part is (almost entirely) one label, and the two labels differ.
    assert np.mean(left == np.bincount(left).argmax()) > 0.95
    assert np.mean(right == np.bincount(right).argmax()) > 0.95
    assert np.bincount(left).argmax() != np.bincount(right).argmax()
    np.testing.assert_array_equal(labels > 0, first | second)


def test_without_watershed_touching_balls_stay_one_object():
    first, second = _touching_balls((40, 60), 2)
    foreground = np.where(first | second, 0.9, 0.0)
    labels = probabilities_to_labels(foreground, config=PostprocessConfig(watershed=False))
    assert labels.max() == 1


def test_components_without_a_seed_stay_whole_objects():
    first, second = _touching_balls((40, 60), 2)
    foreground = np.where(first | second, 0.9, 0.0)
    foreground[2:5, 2:10] = 0.9  # a 3-px bar: its distance maximum is far below 50 px
    config = PostprocessConfig(min_seed_prominence_px=50.0)
    labels = probabilities_to_labels(foreground, config=config)
    assert labels.max() == 2
    np.testing.assert_array_equal(labels > 0, foreground > 0.5)


def test_probability_seeds_split_at_a_predicted_border():
    # Two squares joined by a 2-px band of probability 0.7: above threshold 0.5 (one
    # component) but below seed_threshold 0.9, so each square seeds its own object.
    foreground = np.zeros((20, 34))
    foreground[4:16, 4:16] = 0.95
    foreground[4:16, 16:18] = 0.7
    foreground[4:16, 18:30] = 0.95
    config = PostprocessConfig(seeds="probability")
    labels = probabilities_to_labels(foreground, config=config)
    assert labels.max() == 2
    assert len(np.unique(labels[4:16, 4:16])) == 1 and len(np.unique(labels[4:16, 18:30])) == 1
    assert labels[10, 10] != labels[10, 24]


def test_a_predicted_border_separates_objects_without_watershed():
    foreground = np.zeros((20, 34))
    foreground[4:16, 4:30] = 0.95
    foreground[4:16, 16:18] = 0.2
    labels = probabilities_to_labels(foreground, config=PostprocessConfig(watershed=False))
    assert labels.max() == 2


def test_small_objects_are_removed():
    foreground = np.zeros((30, 30))
    foreground[2:4, 2:4] = 1.0  # 4 px
    foreground[10:25, 10:25] = 1.0  # 225 px
    labels = probabilities_to_labels(foreground, config=PostprocessConfig(min_size=5))
    assert labels.max() == 1 and not labels[2:4, 2:4].any()
    kept = probabilities_to_labels(foreground, config=PostprocessConfig(min_size=4))
    assert kept.max() == 2


def test_small_watershed_basins_are_absorbed_not_erased():
    # A large disc with a small disc on a 3-px neck: the small one seeds a basin of about
    # 90 px, which a min_size of 120 removes; its pixels must join the large disc, not
    # become background.
    mask = _ball((40, 50), (20, 18), 12) | _ball((40, 50), (20, 38), 5)
    mask[19:22, 29:34] = True
    foreground = mask * 0.9
    split = probabilities_to_labels(foreground, config=PostprocessConfig(min_size=10))
    assert split.max() == 2 and 60 < np.count_nonzero(split == split[20, 38]) < 120
    merged = probabilities_to_labels(foreground, config=PostprocessConfig(min_size=120))
    assert merged.max() == 1
    np.testing.assert_array_equal(merged > 0, mask)


def test_holes_are_filled():
    ring = _ball((30, 30), (15, 15), 10) & ~_ball((30, 30), (15, 15), 4)
    foreground = ring * 0.8
    labels = probabilities_to_labels(foreground)
    np.testing.assert_array_equal(labels > 0, _ball((30, 30), (15, 15), 10))
    assert labels.max() == 1
    kept_hole = probabilities_to_labels(foreground, config=PostprocessConfig(fill_holes=False))
    np.testing.assert_array_equal(kept_hole > 0, ring)


@pytest.mark.parametrize("shape", [(50, 45), (12, 14, 16)])
def test_filled_mask_equals_scipy_fill_holes(rng, shape):
    foreground = ndimage.gaussian_filter(rng.random(shape), 1.0)
    foreground = (foreground - foreground.min()) / np.ptp(foreground)
    foreground[(slice(2, 9),) * len(shape)] = 1.0  # a hollow box: at least one hole
    foreground[(slice(4, 7),) * len(shape)] = 0.0
    for connectivity in range(1, len(shape) + 1):
        config = PostprocessConfig(min_size=0, watershed=False, connectivity=connectivity)
        labels = probabilities_to_labels(foreground, config=config)
        # Holes are background regions connected in the complementary neighbourhood.
        background_connectivity = len(shape) if connectivity == 1 else 1
        structure = ndimage.generate_binary_structure(len(shape), background_connectivity)
        expected = ndimage.binary_fill_holes(foreground > 0.5, structure=structure)
        np.testing.assert_array_equal(labels > 0, expected)
        assert (expected != (foreground > 0.5)).any()


def test_empty_and_below_threshold_maps_give_zeros():
    for foreground in (np.zeros((16, 16)), np.full((4, 8, 8), 0.5), np.zeros((0, 5))):
        labels = probabilities_to_labels(foreground)
        assert labels.dtype == np.int32 and labels.shape == foreground.shape
        assert not labels.any()


def test_random_maps_give_consecutive_ids_covering_the_mask(rng):
    foreground = ndimage.gaussian_filter(rng.random((64, 64)), 2)
    foreground = (foreground - foreground.min()) / np.ptp(foreground)
    config = PostprocessConfig(min_size=0, fill_holes=False)
    labels = probabilities_to_labels(foreground, config=config)
    _assert_consecutive(labels)
    np.testing.assert_array_equal(labels > 0, foreground > 0.5)


def test_transposed_input_gives_transposed_objects(rng):
    foreground = ndimage.gaussian_filter(rng.random((48, 40)), 3)
    foreground = (foreground - foreground.min()) / np.ptp(foreground)
    labels = probabilities_to_labels(foreground)
    transposed = probabilities_to_labels(foreground.T.copy())
    table, _, _ = contingency_table(labels.T, transposed)
    # The same partition up to ids: every row and column of the table has one non-zero.
    counts = table.toarray()
    assert ((counts > 0).sum(axis=0) == 1).all() and ((counts > 0).sum(axis=1) == 1).all()


def test_rounding_just_outside_zero_and_one_is_tolerated():
    foreground = np.zeros((12, 12), dtype=np.float32)
    foreground[2:10, 2:10] = 1.0 + 1e-7
    foreground[0, 0] = -1e-7
    assert probabilities_to_labels(foreground).max() == 1


def test_input_is_not_modified():
    foreground = np.zeros((10, 10))
    foreground[2:8, 2:8] = 0.9
    copy = foreground.copy()
    probabilities_to_labels(foreground)
    np.testing.assert_array_equal(foreground, copy)


def test_errors_name_the_parameter():
    with pytest.raises(TypeError, match="foreground"):
        probabilities_to_labels(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="foreground must be \\(Y, X\\)"):
        probabilities_to_labels(np.zeros((2, 4, 4, 4)))
    with pytest.raises(ValueError, match="foreground must lie in \\[0, 1\\]"):
        probabilities_to_labels(np.full((4, 4), 1.5))
    with pytest.raises(ValueError, match="NaN"):
        probabilities_to_labels(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="connectivity"):
        probabilities_to_labels(np.zeros((4, 4)), config=PostprocessConfig(connectivity=3))


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"threshold": 1.0}, "threshold"),
        ({"min_size": -1}, "min_size"),
        ({"seeds": "maxima"}, "seeds"),
        ({"min_seed_prominence_px": 0.0}, "min_seed_prominence_px"),
        ({"distance_sigma_px": -1.0}, "distance_sigma_px"),
        ({"seed_threshold": 1.0}, "seed_threshold"),
        ({"seeds": "probability", "seed_threshold": 0.4}, "seed_threshold"),
        ({"connectivity": 4}, "connectivity"),
        ({"interior_threshold": 0.0}, "interior_threshold"),
    ],
)
def test_config_validation_names_the_field(options, name):
    with pytest.raises(ValueError, match=name):
        PostprocessConfig(**options)


def test_config_rejects_a_fractional_min_size():
    with pytest.raises(TypeError, match="min_size"):
        PostprocessConfig(min_size=2.5)


def test_a_high_threshold_needs_no_seed_threshold_with_distance_seeds():
    assert PostprocessConfig(threshold=0.95).seed_threshold == 0.9


def two_touching_squares():
    """A 10x20 foreground rectangle made of two 10x10 cells: no neck for distance seeds."""
    labels = np.zeros((14, 24), np.int32)
    labels[2:12, 2:12], labels[2:12, 12:22] = 1, 2
    return labels


def three_class_probabilities(labels):
    """Confident softmax output of a background / interior / boundary network."""
    from biounet.targets import boundary_classes

    classes = boundary_classes(labels)
    return np.stack([classes == k for k in range(3)]).astype(np.float32)


def test_interior_seeds_split_cells_whose_union_has_no_neck():
    labels = two_touching_squares()
    probabilities = three_class_probabilities(labels)
    # the foreground alone is one rectangle: distance seeds find one object in it
    assert probabilities_to_labels(1.0 - probabilities[0]).max() == 1
    instances = instances_from_probabilities(probabilities, boundary_class=True)
    table, _, _ = contingency_table(labels.ravel(), instances.ravel())
    assert instances.max() == 2
    assert table.toarray()[1:, 1:].max(axis=1).tolist() == [100, 100]  # every pixel back


def test_a_boundary_class_output_with_distance_seeds_uses_the_foreground_alone():
    probabilities = three_class_probabilities(two_touching_squares())
    config = PostprocessConfig(min_size=1)
    np.testing.assert_array_equal(
        instances_from_probabilities(probabilities, boundary_class=True, config=config),
        probabilities_to_labels(1.0 - probabilities[0], config=config),
    )


def test_interior_seeds_touching_at_a_corner_stay_two_objects():
    interior = np.zeros((6, 6), np.float32)
    interior[1:3, 1:3] = interior[3:5, 3:5] = 1.0
    foreground = np.zeros((6, 6), np.float32)
    foreground[1:5, 1:5] = 1.0
    config = PostprocessConfig(seeds="interior", min_size=1)
    labels = probabilities_to_labels(foreground, config=config, interior=interior)
    assert labels[1, 1] != labels[4, 4] and labels.max() == 2


def test_two_class_output_keeps_the_foreground_post_processing(rng):
    foreground = ndimage.gaussian_filter(rng.random((40, 40)), 2).astype(np.float32)
    foreground = (foreground - foreground.min()) / np.ptp(foreground)
    probabilities = np.stack([1.0 - foreground, foreground])
    np.testing.assert_array_equal(
        instances_from_probabilities(probabilities),
        probabilities_to_labels(np.clip(1.0 - probabilities[0], 0, 1)),
    )


def test_interior_seeds_need_the_interior_map_and_vice_versa():
    foreground = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match="interior must be given exactly when"):
        probabilities_to_labels(foreground, config=PostprocessConfig(seeds="interior"))
    with pytest.raises(ValueError, match="interior must be given exactly when"):
        probabilities_to_labels(foreground, interior=foreground)
    with pytest.raises(ValueError, match="interior must have the shape"):
        probabilities_to_labels(
            foreground, config=PostprocessConfig(seeds="interior"), interior=foreground[:4]
        )
    with pytest.raises(ValueError, match="interior must lie in"):
        probabilities_to_labels(
            foreground, config=PostprocessConfig(seeds="interior"), interior=foreground * 2
        )
    with pytest.raises(ValueError, match="boundary_class needs \\(3, ...\\) probabilities"):
        instances_from_probabilities(np.ones((2, 8, 8), np.float32), boundary_class=True)
    with pytest.raises(ValueError, match="seeds='interior' needs the interior class of a boundary_class network"):
        instances_from_probabilities(np.ones((2, 8, 8), np.float32) / 2, config=PostprocessConfig(seeds="interior"))
    with pytest.raises(TypeError, match="probabilities must be floating-point"):
        instances_from_probabilities(np.ones((3, 8, 8), np.uint8), boundary_class=True)
    with pytest.raises(ValueError, match="probabilities must be \\(K, Y, X\\)"):
        instances_from_probabilities(np.ones(40, np.float32))


def stacked_nuclei(sections_apart):
    """Two balls of radius 10 px, sampled on sections 4 px thick, `sections_apart` in Z."""
    z, y, x = np.mgrid[0:16, 0:32, 0:32].astype(float)
    foreground = np.zeros(z.shape, np.float32)
    for centre in (7.5 - sections_apart / 2, 7.5 + sections_apart / 2):
        foreground[((z - centre) * 4) ** 2 + (y - 16) ** 2 + (x - 16) ** 2 <= 10**2] = 1
    return foreground


@pytest.mark.parametrize("sections_apart", [3, 4, 5])
def test_spacing_splits_nuclei_stacked_in_z_that_voxel_distances_merge(sections_apart):
    # In voxels the pair is a slab whose distance to the background peaks at the neck;
    # in space each ball's centre lies 10 px deep and the neck less.
    foreground = stacked_nuclei(sections_apart)
    assert probabilities_to_labels(foreground).max() == 1
    labels = probabilities_to_labels(foreground, config=PostprocessConfig(spacing=(4.0, 1.0, 1.0)))
    assert labels.max() == 2
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes[0] == sizes[1] and sizes.sum() == (foreground > 0).sum()
    upper = labels[:8][foreground[:8] > 0]
    assert len(np.unique(upper)) == 1  # the cut runs between the two balls


def test_spacing_distances_equal_scipy_sampling(rng):
    from biounet.watershed import distance_seeds

    components = ndimage.label(ndimage.gaussian_filter(rng.random((10, 24, 24)), 2) > 0.5)[0]
    config = PostprocessConfig(spacing=(3.0, 1.0, 0.5), distance_sigma_px=0.0)
    distance, _ = distance_seeds(components, config)
    for label in range(1, components.max() + 1):
        alone = np.pad(components == label, 1)
        expected = ndimage.distance_transform_edt(alone, sampling=(3.0, 1.0, 0.5))[1:-1, 1:-1, 1:-1]
        np.testing.assert_allclose(distance[components == label], expected[components == label])
    assert PostprocessConfig(spacing=[1, 1]).spacing == (1.0, 1.0)
    np.testing.assert_array_equal(
        probabilities_to_labels(stacked_nuclei(4), config=PostprocessConfig(spacing=(1, 1, 1))),
        probabilities_to_labels(stacked_nuclei(4)),
    )


@pytest.mark.parametrize(
    ("spacing", "error", "message"),
    [((), TypeError, "a list of sizes"), ((True, 1.0), TypeError, "a list of sizes"), ("11", TypeError, "a list of sizes"),
     (2.0, TypeError, "a list of sizes"), ((1.0, 0.0), ValueError, "finite and > 0"),
     ((1.0, -2.0), ValueError, "finite and > 0"), ((float("nan"), 1.0), ValueError, "finite and > 0")],
)
def test_spacing_is_checked(spacing, error, message):
    with pytest.raises(error, match=f"^spacing must be (None or )?{message}"):
        PostprocessConfig(spacing=spacing)


def test_spacing_must_match_the_map():
    with pytest.raises(ValueError, match=r"spacing must have one size per axis of the 2-D foreground, got \[4.0, 1.0, 1.0\]"):
        probabilities_to_labels(np.zeros((5, 5), np.float32), config=PostprocessConfig(spacing=(4, 1, 1)))
