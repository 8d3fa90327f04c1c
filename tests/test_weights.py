"""Tests of the eq. 2 weight map against a slow, obvious reference and its invariants."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from biounet.targets import boundary_classes
from biounet.weights import (
    balanced_class_map,
    border_weight_map,
    class_weight_map,
    weight_map,
)


def reference_weight_map(labels, *, w0=10.0, sigma=5.0, class_weights="balanced", spacing=1.0):
    """Eq. 2 the obvious way: one whole-image distance transform per cell, sort, take two.

    Same definitions as the module: d_i = distance to the nearest pixel of cell i, the
    border term on background pixels only, "balanced" = n / (k * n_class).
    """
    labels = np.asarray(labels)
    is_background = labels == 0
    cells = [cell for cell in np.unique(labels) if cell != 0]
    border = np.zeros(labels.shape)
    if len(cells) >= 2:
        distances = np.stack(
            [ndimage.distance_transform_edt(labels != cell, sampling=spacing) for cell in cells]
        )
        distances.sort(axis=0)
        border = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
        border[~is_background] = 0.0
    if class_weights is None:
        class_weights = (1.0, 1.0)
    elif class_weights == "balanced":
        frequencies = [is_background.mean(), 1.0 - is_background.mean()]
        n_present = sum(frequency > 0 for frequency in frequencies)
        class_weights = [1 / (n_present * f) if f > 0 else 0.0 for f in frequencies]
    return np.where(is_background, class_weights[0], class_weights[1]) + border


def touching_cells(shape, n_cells, rng):
    """Voronoi cells of random seeds, one side of every boundary set to background."""
    seeds = np.zeros(shape, dtype=np.int64)
    seeds.flat[rng.choice(seeds.size, size=n_cells, replace=False)] = np.arange(1, n_cells + 1)
    indices = ndimage.distance_transform_edt(
        seeds == 0, return_distances=False, return_indices=True
    )
    labels = seeds[tuple(indices)]
    is_gap = np.zeros(shape, dtype=bool)
    for axis in range(len(shape)):
        is_gap |= np.diff(labels, axis=axis, prepend=labels.take([0], axis=axis)) > 0
    labels[is_gap] = 0
    return labels


def sparse_cells(shape, n_cells, rng, radius=3):
    """Balls of the given radius at random places in a background-dominated image."""
    labels = np.zeros(shape, dtype=np.int32)
    grid = np.indices(shape)
    for cell in range(1, n_cells + 1):
        centre = [rng.integers(0, size) for size in shape]
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
        labels[distance <= radius] = cell
    return labels


def noise_cells(shape, rng):
    """Scattered, disconnected instances: every id is many separate pixels."""
    return rng.integers(0, 5, size=shape)


LABEL_MAKERS_2D = {
    "touching": lambda rng: touching_cells((48, 64), 14, rng),
    "sparse": lambda rng: sparse_cells((64, 64), 6, rng),
    "noise": lambda rng: noise_cells((24, 20), rng),
}


@pytest.mark.parametrize("kind", sorted(LABEL_MAKERS_2D))
@pytest.mark.parametrize(
    ("w0", "sigma"), [(10.0, 5.0), (1.0, 2.0), (50.0, 12.0), (0.5, 1.0), (1e-7, 5.0), (0.0, 5.0)]
)
def test_weight_map_matches_reference_2d(kind, w0, sigma, rng):
    labels = LABEL_MAKERS_2D[kind](rng)

    weights = weight_map(labels, w0=w0, sigma=sigma)

    assert weights.dtype == np.float32 and weights.shape == labels.shape
    expected = reference_weight_map(labels, w0=w0, sigma=sigma)
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("spacing", [1.0, (2.0, 1.0, 1.0), (1.0, 0.5, 0.75)])
@pytest.mark.parametrize("kind", ["touching", "sparse"])
def test_weight_map_matches_reference_3d(kind, spacing, rng):
    if kind == "touching":
        labels = touching_cells((10, 24, 20), 8, rng)
    else:
        labels = sparse_cells((12, 28, 24), 4, rng, radius=2)

    weights = weight_map(labels, spacing=spacing)

    expected = reference_weight_map(labels, spacing=spacing)
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-5)


def test_cut_off_follows_w0_so_large_w0_stays_exact(rng):
    labels = sparse_cells((80, 80), 5, rng)  # gaps of all widths up to far beyond 4 sigma

    weights = border_weight_map(labels, w0=1e4, sigma=3.0)

    expected = reference_weight_map(labels, w0=1e4, sigma=3.0, class_weights=(0.0, 0.0))
    np.testing.assert_allclose(weights, expected, rtol=1e-6, atol=1e-5)  # float32 near 1e4


@settings(max_examples=40, deadline=None)
@given(
    labels=arrays(
        np.int16, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 3)
    ),
    w0=st.floats(0.0, 100.0),
    sigma=st.floats(0.3, 20.0),
)
def test_weight_map_matches_reference_on_any_small_image(labels, w0, sigma):
    weights = weight_map(labels, w0=w0, sigma=sigma)

    expected = reference_weight_map(labels, w0=w0, sigma=sigma)
    np.testing.assert_allclose(weights, expected, rtol=1e-6, atol=1e-5)


def test_touching_cells_get_the_border_term_in_the_gap_only():
    labels = np.zeros((9, 11), dtype=np.uint8)
    labels[2:7, 1:5] = 1
    labels[2:7, 6:10] = 2  # column 5 is a one-pixel gap

    border = border_weight_map(labels, w0=10.0, sigma=5.0)

    np.testing.assert_allclose(border[2:7, 5], 10.0 * math.exp(-(2.0**2) / 50.0), rtol=1e-6)
    # two rows above the gap, both cells are sqrt(2**2 + 1**2) away
    np.testing.assert_allclose(border[0, 5], 10.0 * math.exp(-((2 * math.sqrt(5)) ** 2) / 50.0))
    assert np.all(border[labels != 0] == 0)
    assert border.max() == border[4, 5]


def test_one_cell_has_no_border_term():
    labels = np.zeros((30, 40), dtype=np.int32)
    labels[5:12, 3:30] = 7
    labels[20:25, 3:9] = 7  # a second piece of the same cell is still one cell

    assert np.all(border_weight_map(labels) == 0)
    np.testing.assert_array_equal(weight_map(labels), class_weight_map(labels))


@pytest.mark.parametrize("fill", [0, 3, 10**12])
def test_image_of_one_class_weighs_one_everywhere(fill):
    labels = np.full((16, 12), fill, dtype=np.int64)
    labels[:, 6:] //= 2  # two cells touching without background: no border term either

    np.testing.assert_array_equal(weight_map(labels), np.ones((16, 12), dtype=np.float32))


def test_symmetric_pair_gives_mirror_symmetric_map():
    y, x = np.indices((41, 60))
    labels = np.zeros((41, 60), dtype=np.int32)
    labels[(y - 20) ** 2 + (x - 22) ** 2 <= 36] = 1
    labels[(y - 20) ** 2 + (x - 37) ** 2 <= 36] = 2  # mirror image of cell 1 about x = 29.5

    weights = weight_map(labels)

    np.testing.assert_allclose(weights, weights[:, ::-1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(weights, weights[::-1, :], rtol=0, atol=1e-6)
    assert weights[20, 29] > weights[20, 22]  # the gap between them weighs most


def test_map_does_not_depend_on_the_instance_ids(rng):
    labels = touching_cells((48, 56), 12, rng)
    new_ids = np.concatenate([[0], rng.permutation(12) + 1])

    expected = weight_map(labels)
    for relabelled in (new_ids[labels], (new_ids[labels] * 1_000_003).astype(np.uint64)):
        np.testing.assert_allclose(weight_map(relabelled), expected, rtol=0, atol=1e-6)


def test_weight_is_at_least_the_class_weight(rng):
    labels = touching_cells((40, 40), 9, rng)

    weights = weight_map(labels, class_weights=(0.3, 2.0))

    assert np.all(weights >= class_weight_map(labels, class_weights=(0.3, 2.0)))
    assert np.all(border_weight_map(labels) >= 0)


def test_far_away_pixels_get_no_border_term():
    labels = np.zeros((120, 120), dtype=np.int32)
    labels[2:6, 2:6] = 1
    labels[2:6, 8:12] = 2

    border = border_weight_map(labels, w0=10.0, sigma=5.0)

    distance_to_cells = ndimage.distance_transform_edt(labels == 0)
    cutoff = 5.0 * math.sqrt(2 * math.log(10.0 / 1e-6))
    assert np.all(border[distance_to_cells > cutoff] == 0)
    assert math.isclose(border[4, 7], 10.0 * math.exp(-(3.0**2) / 50.0), rel_tol=1e-6)


def test_spacing_scales_distances():
    labels = sparse_cells((40, 40), 4, np.random.default_rng(3))

    coarse = border_weight_map(labels, sigma=10.0, spacing=2.0)

    np.testing.assert_allclose(coarse, border_weight_map(labels, sigma=5.0), rtol=0, atol=1e-5)


def test_input_is_not_modified(rng):
    labels = touching_cells((30, 30), 6, rng)
    copy = labels.copy()

    weight_map(labels)

    np.testing.assert_array_equal(labels, copy)


@pytest.mark.parametrize(
    "class_weights", [(2.0, 3.0), [2, 3], np.array([2.0, 3.0]), {0: 2.0, 1: 3.0}]
)
def test_explicit_class_weights(class_weights):
    labels = np.array([[0, 1, 1], [0, 0, 5]])

    weights = class_weight_map(labels, class_weights=class_weights)

    np.testing.assert_array_equal(weights, [[2, 3, 3], [2, 2, 3]])


def test_balanced_class_weights_average_to_one_and_invert_frequencies(rng):
    labels = touching_cells((30, 50), 7, rng)

    weights = class_weight_map(labels)

    assert math.isclose(weights.mean(dtype=np.float64), 1.0, rel_tol=1e-6)
    frequency = np.mean(labels == 0)
    ratio = weights[labels == 0][0] / weights[labels != 0][0]
    assert math.isclose(ratio, (1 - frequency) / frequency, rel_tol=1e-6)
    np.testing.assert_array_equal(class_weight_map(labels, class_weights=None), 1.0)


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"labels": np.zeros((4, 4), dtype=np.float32)}, TypeError, "labels"),
        ({"labels": np.zeros((4, 4), dtype=bool)}, TypeError, "labels"),
        ({"labels": np.zeros(4, dtype=np.int32)}, ValueError, "labels"),
        ({"labels": np.zeros((2, 2, 2, 2), dtype=np.int32)}, ValueError, "labels"),
        ({"labels": np.zeros((0, 4), dtype=np.int32)}, ValueError, "labels"),
        ({"labels": np.array([[0, -1]])}, ValueError, "labels"),
        ({"w0": -1.0}, ValueError, "w0"),
        ({"w0": float("nan")}, ValueError, "w0"),
        ({"w0": "10"}, TypeError, "w0"),
        ({"sigma": 0.0}, ValueError, "sigma"),
        ({"sigma": None}, TypeError, "sigma"),
        ({"spacing": (1.0, 1.0, 1.0)}, ValueError, "spacing"),
        ({"spacing": -1.0}, ValueError, "spacing"),
        ({"class_weights": "inverse"}, ValueError, "class_weights"),
        ({"class_weights": (1.0,)}, ValueError, "class_weights"),
        ({"class_weights": (1.0, -2.0)}, ValueError, "class_weights"),
        ({"class_weights": {0: 1.0}}, ValueError, "class_weights"),
        ({"class_weights": ("a", "b")}, TypeError, "class_weights"),
    ],
)
def test_invalid_arguments_name_the_parameter(arguments, error, match):
    arguments = {"labels": np.zeros((4, 4), dtype=np.int32), **arguments}
    labels = arguments.pop("labels")

    with pytest.raises(error, match=match):
        weight_map(labels, **arguments)


def face_neighbours(labels, index):
    """The values of the face neighbours of pixel `index` that lie inside the image."""
    for axis in range(labels.ndim):
        for step in (-1, 1):
            neighbour = list(index)
            neighbour[axis] += step
            if 0 <= neighbour[axis] < labels.shape[axis]:
                yield labels[tuple(neighbour)]


def reference_touching_borders(labels):
    """Pixel by pixel: a cell pixel with a face neighbour inside the image of another cell."""
    labels = np.asarray(labels)
    border = np.zeros(labels.shape, bool)
    for index in np.ndindex(labels.shape):
        if labels[index] == 0:
            continue
        for other in face_neighbours(labels, index):
            border[index] |= other != 0 and other != labels[index]
    return border


@pytest.mark.parametrize("shape", [(23, 31), (7, 9, 11)])
def test_touching_borders_equal_the_pixel_loop(shape, rng):
    from biounet.targets import touching_borders

    labels = rng.integers(0, 5, size=shape)  # many contacts, background, and edges
    np.testing.assert_array_equal(touching_borders(labels), reference_touching_borders(labels))


def test_touching_cells_are_separated_in_the_training_target():
    """Sec. 3 / Fig. 3c: a background border between touching cells, stressed by eq. 2."""
    from biounet.config import TrainConfig, UNetConfig
    from biounet.data.dataset import make_training_image

    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 10:30], labels[10:30, 30:50] = 1, 2  # two squares touching along x = 29|30
    image = np.random.default_rng(0).random((1, 40, 60), dtype=np.float32)
    made = make_training_image("pair", image, labels, model_config=UNetConfig(),
                               train_config=TrainConfig())
    assert (made.target[10:30, 29:31] == 0).all() and made.target[10:30, 10:29].all()
    assert made.weights[20, 29] > 5 * made.weights[20, 20]  # the border term lies on the gap
    np.testing.assert_array_equal(made.labels, labels)  # validation sees the instances
    plain = make_training_image("pair", image, labels, model_config=UNetConfig(),
                                train_config=TrainConfig(separate_touching=False))
    np.testing.assert_array_equal(plain.target, labels > 0)


def boundary_classes_reference(labels):
    """Pixel by pixel: a cell pixel is boundary if a face neighbour inside the image differs."""
    classes = (labels > 0).astype(np.int64)
    for index in np.ndindex(labels.shape):
        if labels[index] != 0 and any(other != labels[index] for other in face_neighbours(labels, index)):
            classes[index] = 2
    return classes


@pytest.mark.parametrize("shape", [(23, 31), (7, 9, 11)])
def test_boundary_classes_match_reference(shape, rng):
    labels = ndimage.zoom(rng.integers(0, 5, (4,) * len(shape)), [s / 4 for s in shape], order=0)
    labels = labels[tuple(slice(0, s) for s in shape)].astype(np.int32)
    np.testing.assert_array_equal(boundary_classes(labels), boundary_classes_reference(labels))


def test_touching_cells_get_two_boundary_pixels_between_their_interiors():
    labels = np.zeros((12, 12), np.int32)
    labels[2:10, 2:6], labels[2:10, 6:10] = 1, 2
    classes = boundary_classes(labels)
    assert classes[5].tolist() == [0, 0, 2, 1, 1, 2, 2, 1, 1, 2, 0, 0]
    # a cell cut by the image edge has no boundary there
    assert boundary_classes(np.ones((3, 3), np.int32)).tolist() == [[1] * 3] * 3


def test_balanced_class_map_gives_every_present_class_the_same_total(rng):
    classes = rng.choice(3, size=(40, 50), p=[0.7, 0.25, 0.05])
    weights = balanced_class_map(classes)
    totals = [weights[classes == k].sum() for k in range(3)]
    np.testing.assert_allclose(totals, classes.size / 3, rtol=1e-5)
    assert weights.mean() == pytest.approx(1.0)
    assert balanced_class_map(np.array([2, 2, 0])).tolist() == pytest.approx([0.75, 0.75, 1.5])
    with pytest.raises(ValueError, match="non-negative integers"):
        balanced_class_map(np.array([0.5]))
