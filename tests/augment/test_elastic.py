"""Tests of the coarse-grid elastic deformation (Ronneberger et al. 2015, Sec. 3.1)."""

import numpy as np
import pytest
from scipy import ndimage

from biounet.augment.elastic import apply_displacement, sample_displacement, upsample_displacement


def reference_field(grid: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Per-pixel field, the obvious way: evaluate the N-D spline of the grid at each pixel."""
    positions = [
        np.arange(size) * (n - 1) / (size - 1) for n, size in zip(grid.shape[1:], spatial_shape)
    ]
    points = np.stack(np.meshgrid(*positions, indexing="ij")).reshape(len(spatial_shape), -1)
    return np.stack(
        [
            ndimage.map_coordinates(component, points, order=3, mode="mirror").reshape(
                spatial_shape
            )
            for component in grid
        ]
    )


def test_sample_displacement_shapes():
    assert sample_displacement((64, 48), rng=0).shape == (2, 3, 3)
    assert sample_displacement((8, 64, 48), rng=0).shape == (3, 3, 3, 3)
    assert sample_displacement((64, 48), grid_shape=(5, 4), rng=0).shape == (2, 5, 4)


def test_sample_displacement_has_requested_standard_deviation(rng):
    grids = np.stack([sample_displacement((100, 100), rng=rng) for _ in range(2000)])
    assert abs(grids.std() - 10.0) < 0.3  # 36,000 draws: standard error ~0.04
    assert abs(grids.mean()) < 0.3


def test_sample_displacement_sigma_per_axis(rng):
    grids = np.stack(
        [sample_displacement((8, 100, 100), sigma=(2.0, 10.0, 10.0), rng=rng) for _ in range(500)]
    )
    per_axis = grids.std(axis=(0, 2, 3, 4))
    np.testing.assert_allclose(per_axis, [2.0, 10.0, 10.0], rtol=0.05)


def test_sample_displacement_is_deterministic_per_seed():
    first = sample_displacement((64, 64), rng=7)
    np.testing.assert_array_equal(first, sample_displacement((64, 64), rng=7))
    assert not np.array_equal(first, sample_displacement((64, 64), rng=8))


@pytest.mark.parametrize(
    ("spatial_shape", "grid_shape"),
    [((65, 33), (3, 3)), ((61, 31), (5, 4)), ((9, 17, 33), (3, 3, 3))],
)
def test_field_passes_exactly_through_grid_points(spatial_shape, grid_shape, rng):
    grid = rng.normal(0, 10, (len(spatial_shape), *grid_shape))
    field = upsample_displacement(grid, spatial_shape)
    assert field.shape == (len(spatial_shape), *spatial_shape)
    # Grid point k of n sits on pixel k * (size - 1) / (n - 1): integers for these shapes.
    index = np.ix_(
        range(len(spatial_shape)),
        *[np.arange(n) * (size - 1) // (n - 1) for n, size in zip(grid_shape, spatial_shape)],
    )
    np.testing.assert_array_equal(field[index], grid)


@pytest.mark.parametrize(
    ("spatial_shape", "grid_shape"), [((40, 23), (3, 3)), ((7, 12, 9), (3, 4, 2))]
)
def test_field_equals_reference_spline(spatial_shape, grid_shape, rng):
    grid = rng.normal(0, 10, (len(spatial_shape), *grid_shape))
    np.testing.assert_allclose(
        upsample_displacement(grid, spatial_shape), reference_field(grid, spatial_shape), atol=1e-12
    )


def test_constant_grid_gives_constant_field():
    grid = np.full((2, 3, 3), 4.5)
    np.testing.assert_allclose(upsample_displacement(grid, (30, 20)), 4.5, atol=1e-12)


@pytest.mark.parametrize("spatial_shape", [(24, 19), (6, 11, 9)])
@pytest.mark.parametrize("order", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_displacement_is_exact_identity(spatial_shape, order, dtype, rng):
    ndim = len(spatial_shape)
    image = rng.random((2, *spatial_shape)).astype(dtype)  # with a channel axis
    labels = rng.integers(0, 9, spatial_shape).astype(np.int32)
    out_image, out_labels = apply_displacement(
        [image, labels], np.zeros((ndim,) + (3,) * ndim), orders=(order, 0)
    )
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_labels, labels)
    assert out_image.dtype == dtype and out_labels.dtype == np.int32
    assert out_image is not image


@pytest.mark.parametrize("order", [0, 1, 3])
def test_constant_integer_displacement_is_a_shift(order, rng):
    image = rng.random((20, 30))
    grid = np.zeros((2, 3, 3))
    grid[0], grid[1] = 2.0, -3.0  # output pixel (y, x) reads input (y + 2, x - 3)
    (out,) = apply_displacement([image], grid, orders=order)
    np.testing.assert_allclose(out[:-2, 3:], image[2:, :-3], atol=1e-10)


def test_deformed_labels_keep_ids_and_weights_keep_range(rng):
    image = rng.random((48, 48)).astype(np.float32)
    labels = rng.choice(np.array([0, 3, 17, 250], dtype=np.uint8), (48, 48))
    weights = (1 + 9 * rng.random((48, 48))).astype(np.float32)
    grid = sample_displacement((48, 48), rng=rng)
    out_image, out_labels, out_weights = apply_displacement([image, labels, weights], grid)
    assert out_labels.dtype == np.uint8
    assert set(np.unique(out_labels)) <= {0, 3, 17, 250}
    assert out_weights.min() >= weights.min() - 1e-6
    assert out_image.dtype == np.float32
    assert not np.array_equal(out_labels, labels)


def test_channels_are_deformed_alike(rng):
    image = rng.random((3, 32, 32))
    grid = sample_displacement((32, 32), rng=rng)
    (together,) = apply_displacement([image], grid, orders=3)
    for channel in range(3):
        (alone,) = apply_displacement([image[channel]], grid, orders=3)
        np.testing.assert_array_equal(together[channel], alone)


def test_apply_is_deterministic(rng):
    image = rng.random((32, 32))
    grid = sample_displacement((32, 32), rng=rng)
    first = apply_displacement([image], grid, orders=3)[0]
    np.testing.assert_array_equal(first, apply_displacement([image], grid, orders=3)[0])


def test_errors():
    image = np.zeros((16, 16), np.float32)
    with pytest.raises(ValueError, match="displacement"):
        apply_displacement([image], np.zeros((3, 3, 3)), orders=3)
    with pytest.raises(ValueError, match="orders"):
        apply_displacement([image, image], np.zeros((2, 3, 3)), orders=(3,))
    with pytest.raises(TypeError, match="order 0"):
        apply_displacement([np.zeros((16, 16), np.int32)], np.ones((2, 3, 3)), orders=1)
    with pytest.raises(ValueError, match="share"):
        apply_displacement([image, np.zeros((15, 16))], np.ones((2, 3, 3)), orders=1)
    with pytest.raises(ValueError, match="grid_shape"):
        sample_displacement((16, 16), grid_shape=1, rng=0)
    with pytest.raises(ValueError, match="sigma"):
        sample_displacement((16, 16), sigma=-1.0, rng=0)


def test_3d_deformation_of_an_anisotropic_stack_keeps_integer_labels(rng):
    # 3x3x3 grid (Cicek et al. 2016 deform volumes alike), smaller displacements along Z
    labels = np.zeros((8, 30, 30), np.uint16)
    labels[1:6, 3:15, 3:15] = 7
    labels[2:8, 15:27, 8:24] = 300  # touches cell 7
    image = labels.astype(np.float32) / 300 + rng.normal(0, 0.05, labels.shape).astype(np.float32)
    (same_image, same_labels) = apply_displacement([image, labels], np.zeros((3, 3, 3, 3)),
                                                   orders=(3, 0))
    np.testing.assert_array_equal(same_image, image)
    np.testing.assert_array_equal(same_labels, labels)
    grid = sample_displacement(labels.shape, sigma=(1.0, 4.0, 4.0), rng=rng)
    out_image, out_labels = apply_displacement([image, labels], grid, orders=(3, 0))
    assert out_labels.dtype == np.uint16 and out_labels.shape == labels.shape
    assert set(np.unique(out_labels)) == {0, 7, 300}
    assert not np.array_equal(out_labels, labels) and out_image.dtype == np.float32
