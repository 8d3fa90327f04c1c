"""Tests of the synthetic cell generator: label invariants, determinism, appearance, validation."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from biounet.datasets.synthetic import (
    SyntheticConfig,
    generate_dataset,
    generate_sample,
)
from biounet.datasets.synthetic_cells import (
    _greedy_independent_set,
    _keep_largest_components,
    _tessellate,
)
from biounet.datasets.synthetic_image import _border_mask, smooth_noise

# Everything that changes intensities switched off: the image is cell value x border factor.
NOISELESS = SyntheticConfig(
    nucleus_contrast=0.0,
    texture_strength=0.0,
    illumination_strength=0.0,
    blur_sigma_px=0.0,
    photon_count=None,
    read_noise_std=0.0,
)


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for first, second in (
        (labels[:, :-1], labels[:, 1:]),
        (labels[:-1, :], labels[1:, :]),
    ):
        touching = (first != second) & (first > 0) & (second > 0)
        for a, b in zip(first[touching].tolist(), second[touching].tolist()):
            pairs.add((min(a, b), max(a, b)))
    return pairs


@pytest.mark.parametrize("shape", [(64, 64), (100, 37), (1, 1), (3, 200)])
def test_shapes_dtypes_and_range(shape):
    image, labels = generate_sample(shape, rng=0)

    assert image.shape == labels.shape == shape
    assert image.dtype == np.float32 and labels.dtype == np.int32
    assert np.isfinite(image).all()
    assert image.min() >= 0 and image.max() <= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ids_are_consecutive_and_each_one_connected_region(seed):
    _, labels = generate_sample((256, 192), rng=seed)

    n_cells = int(labels.max())
    assert n_cells > 10
    np.testing.assert_array_equal(np.unique(labels), np.arange(n_cells + 1))
    for cell in range(1, n_cells + 1):
        _, n_pieces = ndimage.label(labels == cell)  # 4-connectivity
        assert n_pieces == 1, f"cell {cell} has {n_pieces} pieces"


def test_same_seed_same_arrays_and_different_seeds_differ():
    image, labels = generate_sample((128, 160), rng=7)
    image_again, labels_again = generate_sample((128, 160), rng=np.random.default_rng(7))
    other_image, other_labels = generate_sample((128, 160), rng=8)

    np.testing.assert_array_equal(image, image_again)
    np.testing.assert_array_equal(labels, labels_again)
    assert not np.array_equal(labels, other_labels)
    assert not np.array_equal(image, other_image)


def test_labels_do_not_depend_on_appearance_options():
    dark = SyntheticConfig(border_style="dark", blur_sigma_px=0.0, photon_count=None)
    bright = SyntheticConfig(border_style="bright", texture_strength=0.5, background=0.4)

    image_dark, labels_dark = generate_sample((96, 96), config=dark, rng=3)
    image_bright, labels_bright = generate_sample((96, 96), config=bright, rng=3)

    np.testing.assert_array_equal(labels_dark, labels_bright)
    assert not np.array_equal(image_dark, image_bright)


def test_dataset_is_seeded_per_image_and_independent_of_its_length():
    three = generate_dataset(3, (64, 64), rng=5)
    two = generate_dataset(2, (64, 64), rng=5)

    assert len(three) == 3 and generate_dataset(0, (64, 64), rng=5) == []
    for (image, labels), (image_again, labels_again) in zip(two, three):
        np.testing.assert_array_equal(image, image_again)
        np.testing.assert_array_equal(labels, labels_again)
    assert not np.array_equal(three[0][1], three[1][1])


def test_most_cells_touch_a_neighbour_and_background_remains(rng):
    _, labels = generate_sample((384, 384), rng=rng)

    n_cells = int(labels.max())
    touching = {cell for pair in _touching_pairs(labels) for cell in pair}
    assert len(touching) >= 0.8 * n_cells
    assert 0.2 < np.mean(labels == 0) < 0.8


def test_cell_sizes_follow_the_configured_diameters():
    config = SyntheticConfig(cell_diameter_px=(16.0, 30.0))
    _, labels = generate_sample((384, 384), config=config, rng=11)

    on_edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    areas = np.bincount(labels.ravel())[1:]
    inner = np.setdiff1d(np.arange(1, labels.max() + 1), on_edge)
    diameters = 2 * np.sqrt(areas[inner - 1] / np.pi)
    assert 16 <= np.median(diameters) <= 30
    assert diameters.min() >= 0.4 * 16 and diameters.max() <= 1.3 * 30


def test_cells_differ_from_background_near_their_outline():
    image, labels = generate_sample((256, 256), rng=4)

    cells = labels > 0
    ring_inside = cells & ~ndimage.binary_erosion(cells, iterations=3)
    ring_outside = ndimage.binary_dilation(cells, iterations=3) & ~cells
    assert image[ring_inside].mean() > image[ring_outside].mean() + 0.15


def _marked_border(config: SyntheticConfig, shape: tuple[int, int], seed: int):
    """(labels, pixels whose intensity the border changed, ratio to the borderless image)."""
    image, labels = generate_sample(shape, config=config, rng=seed)
    plain = dataclasses.replace(config, border_contrast=0.0)
    plain_image, plain_labels = generate_sample(shape, config=plain, rng=seed)
    np.testing.assert_array_equal(labels, plain_labels)
    ratio = image / plain_image
    return labels, ~np.isclose(ratio, 1.0), ratio


def _outline(labels: np.ndarray) -> np.ndarray:
    """Cell pixels with a 4-neighbour of another id (the image edge does not count)."""
    padded = np.pad(labels, 1, mode="edge")
    outline = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        outline |= padded[dy : dy + labels.shape[0], dx : dx + labels.shape[1]] != labels
    return outline & (labels > 0)


@pytest.mark.parametrize("style, factor", [("dark", 0.6), ("bright", 1.4)])
def test_width_two_border_covers_every_outline_pixel(style, factor):
    config = dataclasses.replace(
        NOISELESS, border_style=style, border_width_px=2, border_contrast=abs(1 - factor)
    )
    labels, marked, ratio = _marked_border(config, (128, 128), seed=2)

    np.testing.assert_array_equal(marked, _outline(labels))
    np.testing.assert_allclose(ratio[marked], factor, rtol=1e-5)


def test_width_one_border_lies_on_one_side_of_each_contact():
    config = dataclasses.replace(NOISELESS, border_style="dark", border_width_px=1)
    labels, marked, _ = _marked_border(config, (160, 160), seed=9)

    assert not (marked & ~_outline(labels)).any()
    n_contacts = n_both_sides = 0
    for first, second, first_marked, second_marked in (
        (labels[:, :-1], labels[:, 1:], marked[:, :-1], marked[:, 1:]),
        (labels[:-1], labels[1:], marked[:-1], marked[1:]),
    ):
        contact = (first != second) & (first > 0) & (second > 0)
        assert (first_marked | second_marked)[contact].all()
        n_contacts += contact.sum()
        n_both_sides += (first_marked & second_marked & contact).sum()
    # Both sides only where a pixel also borders a third cell or the background.
    assert n_both_sides < 0.25 * n_contacts
    next_to_background = (labels[:, 1:] > 0) & (labels[:, :-1] == 0)
    assert marked[:, 1:][next_to_background].all()  # the outer outline is drawn too


def test_border_mask_matches_a_per_pixel_reference(rng):
    labels = rng.integers(0, 4, (12, 15)).astype(np.int32)
    priority = np.array([0, 3, 1, 2])[labels]
    for width in (1, 2):
        expected = np.zeros(labels.shape, bool)
        for y, x in np.ndindex(*labels.shape):
            if labels[y, x] == 0:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                ny, nx = y + dy, x + dx
                if not (0 <= ny < labels.shape[0] and 0 <= nx < labels.shape[1]):
                    continue
                if width == 1 and priority[ny, nx] < priority[y, x]:
                    expected[y, x] = True
                if width == 2 and labels[ny, nx] != labels[y, x]:
                    expected[y, x] = True
        np.testing.assert_array_equal(_border_mask(labels, priority, width), expected)


def test_tessellation_matches_a_per_pixel_reference(rng):
    shape = (40, 56)
    centres = rng.uniform(-5, 60, (9, 2))
    radii = rng.uniform(5, 12, 9)
    nucleus_centres = centres + rng.normal(0, 1, (9, 2))
    rows, columns = np.meshgrid(
        np.arange(shape[0], dtype=np.float32), np.arange(shape[1], dtype=np.float32), indexing="ij"
    )
    rows = rows + rng.normal(0, 1.0, shape).astype(np.float32)
    columns = columns + rng.normal(0, 1.0, shape).astype(np.float32)

    labels, nuclei = _tessellate(rows, columns, centres, radii, nucleus_centres, slack=10.0)

    expected_labels = np.zeros(shape, np.int32)
    expected_nuclei = np.zeros(shape, bool)
    for y, x in np.ndindex(*shape):
        best = np.inf
        for index, ((row, column), (n_row, n_column), radius) in enumerate(
            zip(centres.tolist(), nucleus_centres.tolist(), radii.tolist()), 1
        ):
            distance = np.hypot(rows[y, x] - row, columns[y, x] - column)
            weighted = distance - np.float32(0.6 * radius)
            if distance <= 1.1 * radius and weighted < best:
                best = weighted
                expected_labels[y, x] = index
                in_nucleus = np.hypot(rows[y, x] - n_row, columns[y, x] - n_column)
                expected_nuclei[y, x] = in_nucleus <= 0.4 * radius
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(nuclei, expected_nuclei)


def test_keep_largest_components_matches_a_per_id_reference(rng):
    labels = rng.integers(0, 5, (30, 30)).astype(np.int32)
    labels = ndimage.median_filter(labels, 3)  # fewer, larger pieces per id

    result = _keep_largest_components(labels)

    expected = np.zeros_like(labels)
    new_id = 0
    for cell in range(1, labels.max() + 1):
        pieces, n_pieces = ndimage.label(labels == cell)
        if n_pieces == 0:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        largest = np.flatnonzero(sizes == sizes.max())[-1] + 1  # ties: the last in raster order
        new_id += 1
        expected[pieces == largest] = new_id
    np.testing.assert_array_equal(result, expected)


def test_greedy_independent_set_matches_the_sequential_greedy(rng):
    n_nodes = 60
    edges = rng.integers(0, n_nodes, (150, 2))
    edges = edges[edges[:, 0] != edges[:, 1]]

    kept = _greedy_independent_set(n_nodes, edges[:, 0], edges[:, 1])

    neighbours = {node: set() for node in range(n_nodes)}
    for a, b in edges.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    expected = []
    for node in range(n_nodes):
        if not neighbours[node] & set(expected):
            expected.append(node)
    np.testing.assert_array_equal(kept, expected)


@pytest.mark.parametrize("scale_px", [2.0, 8.0, 40.0])
def testsmooth_noise_has_zero_mean_unit_variance_and_its_scale(scale_px):
    fields = np.stack(
        [smooth_noise((300, 260), scale_px, np.random.default_rng(seed)) for seed in range(8)]
    )

    assert fields.shape == (8, 300, 260) and fields.dtype == np.float32
    assert abs(fields.mean()) < 0.15
    assert 0.85 < fields.std() < 1.1  # linear interpolation loses a few percent of variance
    # Correlation at a lag of scale_px: exp(-1/4) ~ 0.78 for Gaussian-filtered white noise.
    lag = int(scale_px)
    correlation = np.mean(fields[:, :, :-lag] * fields[:, :, lag:]) / fields.var()
    assert 0.65 < correlation < 0.9


def test_noise_follows_the_poisson_gaussian_variance():
    config = dataclasses.replace(
        NOISELESS, background=0.2, photon_count=100.0, read_noise_std=0.01, fill_fraction=0.05
    )
    image, labels = generate_sample((256, 256), config=config, rng=1)

    background = image[ndimage.binary_erosion(labels == 0, iterations=2)]
    expected_std = np.sqrt(0.2 / 100 + 0.01**2)
    assert abs(background.mean() - 0.2) < 0.002
    assert abs(background.std() - expected_std) < 0.05 * expected_std


def test_config_round_trips_through_json():
    config = SyntheticConfig(cell_diameter_px=(10.0, 12.0), border_style="dark", photon_count=None)

    assert SyntheticConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "changes, error, name",
    [
        ({"cell_diameter_px": (30.0, 20.0)}, ValueError, "cell_diameter_px"),
        ({"cell_diameter_px": (2.0, 20.0)}, ValueError, "cell_diameter_px"),
        ({"cell_diameter_px": [20.0, 30.0]}, TypeError, "cell_diameter_px"),
        ({"fill_fraction": 0.0}, ValueError, "fill_fraction"),
        ({"fill_fraction": 1.5}, ValueError, "fill_fraction"),
        ({"clump_size_px": -1.0}, ValueError, "clump_size_px"),
        ({"shape_irregularity": 0.8}, ValueError, "shape_irregularity"),
        ({"border_style": "grey"}, ValueError, "border_style"),
        ({"border_width_px": 3}, ValueError, "border_width_px"),
        ({"border_contrast": 2.0}, ValueError, "border_contrast"),
        ({"cell_intensity_range": (0.5, 1.5)}, ValueError, "cell_intensity_range"),
        ({"background": "dark"}, TypeError, "background"),
        ({"nucleus_contrast": -2.0}, ValueError, "nucleus_contrast"),
        ({"texture_strength": float("nan")}, ValueError, "texture_strength"),
        ({"illumination_strength": 1.5}, ValueError, "illumination_strength"),
        ({"blur_sigma_px": -0.5}, ValueError, "blur_sigma_px"),
        ({"photon_count": 0.0}, ValueError, "photon_count"),
        ({"read_noise_std": -0.1}, ValueError, "read_noise_std"),
    ],
)
def test_config_rejects_bad_values_naming_the_parameter(changes, error, name):
    with pytest.raises(error, match=name) as info:
        SyntheticConfig(**changes)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape", [(0, 10), (10,), (10, 10, 10), (10.0, 10), "ab"])
def test_bad_shapes_are_rejected(shape):
    with pytest.raises(ValueError, match="shape"):
        generate_sample(shape, rng=0)


def test_bad_arguments_are_rejected():
    with pytest.raises(TypeError, match="config"):
        generate_sample((32, 32), config={"fill_fraction": 0.5})
    with pytest.raises(ValueError, match="n_images"):
        generate_dataset(-1, (32, 32))
    with pytest.raises(TypeError, match="n_images"):
        generate_dataset(2.0, (32, 32))
