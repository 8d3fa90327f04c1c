"""Tests of rigid coordinate maps and resampling, numpy reference and torch grid_sample path."""

import itertools

import numpy as np
import pytest
import torch

from biounet.augment import torch_backend
from biounet.augment.geometric import (
    RigidTransform,
    rotation_matrix,
    sample_rigid_transform,
    source_coordinates,
    warp,
)


def reference_coordinates(spatial_shape, transform, field):
    """Source position of every output pixel, one pixel at a time."""
    centre = (np.asarray(spatial_shape) - 1) / 2
    out = np.empty((len(spatial_shape), *spatial_shape))
    for index in itertools.product(*map(range, spatial_shape)):
        position = np.asarray(index, dtype=float)
        rigid = transform.matrix.T @ (position - centre - transform.shift) / transform.zoom + centre
        out[(slice(None), *index)] = rigid + field[(slice(None), *index)]
    return out


def mirror_reference(array, coordinates):
    """Nearest sampling with mirror boundaries via np.pad(mode="reflect") and rounding."""
    pad = int(np.abs(coordinates).max()) + max(array.shape)
    padded = np.pad(array, pad, mode="reflect")
    index = np.floor(coordinates + 0.5).astype(int) + pad
    return padded[tuple(index)]


def smooth_image(shape, wavelength=32.0):
    axes = np.meshgrid(*[np.arange(size, dtype=float) for size in shape], indexing="ij")
    return np.prod([np.cos(2 * np.pi * axis / wavelength + k) for k, axis in enumerate(axes)], 0)


# --- rotation matrices and transforms -------------------------------------------------


@pytest.mark.parametrize(("angles", "ndim"), [(37.0, 2), ((10.0, -70.0, 123.0), 3)])
def test_rotation_matrix_is_a_proper_rotation(angles, ndim):
    matrix = rotation_matrix(angles, ndim=ndim)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(ndim), atol=1e-12)
    assert np.isclose(np.linalg.det(matrix), 1.0)


def test_sample_rigid_transform_respects_bounds_and_seed(rng):
    for _ in range(50):
        transform = sample_rigid_transform(
            2, max_rotation_deg=10.0, max_shift_px=(2.0, 5.0), flip_probability=0.0, rng=rng
        )
        angle = np.rad2deg(np.arctan2(transform.matrix[1, 0], transform.matrix[0, 0]))
        assert abs(angle) <= 10.0
        assert np.all(np.abs(transform.shift) <= [2.0, 5.0])
    first = sample_rigid_transform(3, max_tilt_deg=20.0, rng=3)
    again = sample_rigid_transform(3, max_tilt_deg=20.0, rng=3)
    other = sample_rigid_transform(3, max_tilt_deg=20.0, rng=4)
    np.testing.assert_array_equal(first.matrix, again.matrix)
    np.testing.assert_array_equal(first.shift, again.shift)
    assert not np.array_equal(first.matrix, other.matrix)


def test_zoom_is_log_uniform_and_draws_after_the_rest(rng):
    zooms = [sample_rigid_transform(2, scale_range=(0.5, 2.0), rng=seed).zoom for seed in range(2000)]
    assert min(zooms) >= 0.5 and max(zooms) <= 2.0
    # log-uniform: as many draws below 1 as above it
    assert abs(np.mean(np.array(zooms) < 1.0) - 0.5) < 0.05
    plain, zoomed = (sample_rigid_transform(3, max_tilt_deg=20.0, scale_range=r, rng=9)
                     for r in [(1.0, 1.0), (0.7, 1.4)])
    np.testing.assert_array_equal(plain.matrix, zoomed.matrix)  # old seeds keep their draws
    np.testing.assert_array_equal(plain.shift, zoomed.shift)
    assert plain.zoom == 1.0 and zoomed.zoom != 1.0
    with pytest.raises(ValueError, match="scale_range must"):
        sample_rigid_transform(2, scale_range=(1.2, 0.8))


def test_zoom_moves_content_away_from_the_centre():
    image = np.zeros((21, 21))
    image[10 - 3, 10 + 2] = 1.0  # 3 up and 2 right of the centre
    transform = RigidTransform(np.eye(2), np.zeros(2), zoom=2.0)
    out = warp(image, source_coordinates(image.shape, transform=transform), order=0)
    assert out[10 - 6, 10 + 4] == 1.0 and out[10 - 3, 10 + 2] == 0.0


def test_flip_probability_one_flips_every_axis(rng):
    transform = sample_rigid_transform(
        2, max_rotation_deg=0.0, max_shift_px=0.0, flip_probability=1.0, rng=rng
    )
    image = rng.random((9, 12))
    coordinates = source_coordinates(image.shape, transform=transform)
    np.testing.assert_array_equal(warp(image, coordinates, order=1), image[::-1, ::-1])


@pytest.mark.parametrize("spatial_shape", [(5, 7), (3, 4, 6)])
@pytest.mark.parametrize("scale_range", [(1.0, 1.0), (0.6, 1.5)])
def test_source_coordinates_equals_reference(spatial_shape, scale_range, rng):
    ndim = len(spatial_shape)
    transform = sample_rigid_transform(ndim, max_tilt_deg=30.0, scale_range=scale_range, rng=rng)
    field = rng.normal(0, 2, (ndim, *spatial_shape))
    expected = reference_coordinates(spatial_shape, transform, field)
    np.testing.assert_allclose(
        source_coordinates(spatial_shape, transform=transform, displacement_field=field),
        expected,
        atol=1e-12,
    )
    fast = source_coordinates(
        spatial_shape, transform=transform, displacement_field=field, dtype=np.float32
    )
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, expected, atol=1e-5)


@pytest.mark.parametrize("spatial_shape", [(17, 12), (5, 8, 7)])
@pytest.mark.parametrize("order", [0, 1, 3])
def test_identity_transform_is_exact_identity(spatial_shape, order, rng):
    ndim = len(spatial_shape)
    identity = RigidTransform.identity(ndim)
    assert identity.is_identity
    coordinates = source_coordinates(spatial_shape, transform=identity)
    np.testing.assert_array_equal(coordinates, source_coordinates(spatial_shape))
    image = rng.random(spatial_shape).astype(np.float32)
    np.testing.assert_array_equal(warp(image, coordinates, order=order), image)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_integer_shift_equals_slicing_in_the_interior(order, rng):
    image = rng.random((30, 40))
    transform = RigidTransform(np.eye(2), np.array([3.0, -5.0]))  # content moves down, left
    out = warp(image, source_coordinates(image.shape, transform=transform), order=order)
    np.testing.assert_allclose(out[3:, :-5], image[:-3, 5:], atol=1e-10)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_rotation_by_90_degrees_equals_rot90(order, rng):
    image = rng.random((24, 24))
    transform = RigidTransform(rotation_matrix(90.0, ndim=2), np.zeros(2))
    out = warp(image, source_coordinates(image.shape, transform=transform), order=order)
    np.testing.assert_allclose(out, np.rot90(image), atol=1e-9)


@pytest.mark.parametrize(
    ("angles", "axes"), [((90.0, 0.0, 0.0), (1, 2)), ((0.0, 90.0, 0.0), (0, 2))]
)
def test_3d_rotation_by_90_degrees_equals_rot90(angles, axes, rng):
    volume = rng.random((10, 10, 10))
    transform = RigidTransform(rotation_matrix(angles, ndim=3), np.zeros(3))
    out = warp(volume, source_coordinates(volume.shape, transform=transform), order=1)
    np.testing.assert_allclose(out, np.rot90(volume, axes=axes), atol=1e-9)


def test_rotation_preserves_a_centred_disc():
    yy, xx = np.mgrid[:41, :41]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2).astype(np.uint8)
    transform = RigidTransform(rotation_matrix(33.0, ndim=2), np.zeros(2))
    out = warp(disc, source_coordinates(disc.shape, transform=transform), order=0)
    assert np.count_nonzero(out != disc) <= 12  # only rim pixels may flip


def test_reads_outside_are_mirrored(rng):
    image = rng.random((7, 9))
    coordinates = rng.uniform(-12, 20, (2, 15, 15))
    coordinates[np.abs(coordinates - np.round(coordinates)) > 0.45] += 0.1  # no rounding ties
    np.testing.assert_array_equal(
        warp(image, coordinates, order=0), mirror_reference(image, coordinates)
    )


def test_warp_keeps_dtypes(rng):
    coordinates = source_coordinates((8, 8)) + rng.normal(0, 1, (2, 8, 8))
    for dtype in (np.bool_, np.uint16, np.int64):
        labels = rng.integers(0, 2, (8, 8)).astype(dtype)
        assert warp(labels, coordinates, order=0).dtype == dtype
    with pytest.raises(TypeError, match="order 0"):
        warp(np.zeros((8, 8), np.int32), coordinates, order=3)
    with pytest.raises(ValueError, match="order"):
        warp(np.zeros((8, 8)), coordinates, order=6)


# --- torch grid_sample path against the numpy reference -------------------------------


def random_coordinates(rng, shape, low, high):
    coordinates = rng.uniform(low, high, shape)
    # Keep clear of half-pixel ties, where torch rounds half to even and scipy half up.
    fraction = coordinates - np.floor(coordinates)
    coordinates[np.abs(fraction - 0.5) < 1e-3] += 0.01
    return coordinates


@pytest.mark.parametrize("spatial_shape", [(20, 27), (9, 11, 13)])
def test_torch_nearest_and_linear_equal_reference_everywhere(spatial_shape, rng):
    ndim = len(spatial_shape)
    coordinates = random_coordinates(rng, (ndim, 16, 15, 5)[: ndim + 1], -8, max(spatial_shape) + 8)
    labels = rng.integers(0, 1000, spatial_shape).astype(np.int32)
    weights = rng.random((2, *spatial_shape))  # float64 grid: no float32 rounding
    fast_labels, fast_weights = torch_backend.warp_arrays(
        [labels, weights], coordinates, orders=[0, 1]
    )
    np.testing.assert_array_equal(fast_labels, warp(labels, coordinates, order=0))
    np.testing.assert_allclose(fast_weights, warp(weights, coordinates, order=1), atol=1e-12)
    assert fast_labels.dtype == np.int32


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
def test_torch_row_split_over_threads_changes_nothing(n_threads, rng):
    image = rng.random((3, 20, 20))  # 12 output rows: 1, 2, 3 or 4 row blocks
    coordinates = random_coordinates(rng, (2, 12, 17), -3, 23)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(n_threads)
        (fast,) = torch_backend.warp_arrays([image], coordinates, orders=[3])
    finally:
        torch.set_num_threads(before)
    (single,) = torch_backend.warp_arrays([image], coordinates, orders=[3])  # rows split or not
    np.testing.assert_allclose(fast, single, rtol=0, atol=1e-12)
    reference = np.stack(
        [torch_backend.warp_arrays([c], coordinates, orders=[3])[0] for c in image]
    )
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-12)


def test_torch_float32_linear_within_grid_rounding(rng):
    weights = rng.random((64, 64)).astype(np.float32)
    coordinates = random_coordinates(rng, (2, 64, 64), -5, 68)
    (fast,) = torch_backend.warp_arrays([weights], coordinates, orders=[1])
    np.testing.assert_allclose(fast, warp(weights, coordinates, order=1), atol=1e-4)


def test_torch_cubic_is_close_to_bspline_on_smooth_images(rng):
    image = smooth_image((64, 64))
    coordinates = random_coordinates(rng, (2, 64, 64), -10, 74)
    (fast,) = torch_backend.warp_arrays([image], coordinates, orders=[3])
    reference = warp(image, coordinates, order=3)
    # Keys cubic convolution vs cubic B-spline: both O(h^3)-accurate on a 32 px wave.
    np.testing.assert_allclose(fast, reference, atol=0.03)
    assert np.abs(fast - reference).mean() < 0.005


def test_torch_cubic_at_integer_positions_returns_pixels(rng):
    image = rng.random((16, 16))
    transform = RigidTransform(np.eye(2), np.array([2.0, -3.0]))
    coordinates = source_coordinates(image.shape, transform=transform)
    (fast,) = torch_backend.warp_arrays([image], coordinates, orders=[3])
    np.testing.assert_allclose(fast[2:, :-3], image[:-2, 3:], atol=1e-12)


def test_torch_3d_cubic_falls_back_to_reference(rng):
    volume = rng.random((6, 7, 8))
    coordinates = random_coordinates(rng, (3, 6, 7, 8), -2, 9)
    (fast,) = torch_backend.warp_arrays([volume], coordinates, orders=[3])
    np.testing.assert_array_equal(fast, warp(volume, coordinates, order=3))


def test_torch_keeps_large_ids_and_dtypes(rng):
    labels = np.array([[0, 2**40 + 3], [7, 2**40 + 5]], dtype=np.int64)
    mask = np.array([[True, False], [False, True]])
    coordinates = source_coordinates((2, 2))[:, ::-1, ::-1].copy()
    fast_labels, fast_mask = torch_backend.warp_arrays([labels, mask], coordinates, orders=[0, 0])
    np.testing.assert_array_equal(fast_labels, labels[::-1, ::-1])
    np.testing.assert_array_equal(fast_mask, mask[::-1, ::-1])
    assert fast_labels.dtype == np.int64 and fast_mask.dtype == np.bool_
