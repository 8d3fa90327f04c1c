"""Tests of the one-pass augmentation pipeline and its two backends."""

import dataclasses

import numpy as np
import pytest

from biounet.augment.elastic import apply_displacement, sample_displacement
from biounet.augment.pipeline import AugmentConfig, augment

OFF = AugmentConfig(
    elastic_sigma_px=0.0,
    max_rotation_deg=0.0,
    max_shift_px=0.0,
    flip_probability=0.0,
    brightness_range=(0.0, 0.0),
    contrast_range=(1.0, 1.0),
    gamma_range=(1.0, 1.0),
)
BACKENDS = ["torch", "scipy"]


def sample(rng, spatial_shape, channels=()):
    image = rng.random((*channels, *spatial_shape)).astype(np.float32)
    labels = rng.choice(np.array([0, 1, 5, 9], dtype=np.int32), spatial_shape)
    weights = (1 + 9 * rng.random(spatial_shape)).astype(np.float32)
    return image, labels, weights


def smooth_image(shape, wavelength=32.0):
    yy, xx = np.meshgrid(*[np.arange(size) for size in shape], indexing="ij")
    return (np.cos(2 * np.pi * yy / wavelength) * np.sin(2 * np.pi * xx / wavelength + 1)).astype(
        np.float32
    )


def test_defaults_follow_the_paper():
    config = AugmentConfig()
    assert config.elastic_grid_shape == 3 and config.elastic_sigma_px == 10.0
    assert config.image_order == 3 and config.ndim == 2
    assert config.max_rotation_deg == 180.0


def test_config_json_round_trip_and_validation():
    config = AugmentConfig(ndim=3, elastic_grid_shape=(2, 3, 3), elastic_sigma_px=(2.0, 10.0, 10.0))
    assert AugmentConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="ndim"):
        AugmentConfig(ndim=4)
    with pytest.raises(ValueError, match="image_order"):
        AugmentConfig(image_order=2)
    with pytest.raises(ValueError, match="flip_probability"):
        AugmentConfig(flip_probability=1.5)
    with pytest.raises(ValueError, match="gamma_range"):
        AugmentConfig(gamma_range=(0.0, 2.0))
    with pytest.raises(ValueError, match="unknown"):
        AugmentConfig.from_dict({"sigma": 10})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("ndim", "spatial_shape"), [(2, (30, 41)), (3, (6, 13, 11))])
def test_everything_off_is_exact_identity(backend, ndim, spatial_shape, rng):
    image, labels, weights = sample(rng, spatial_shape, channels=(2,))
    config = dataclasses.replace(OFF, ndim=ndim)
    out = augment(image, labels, weights, config=config, rng=rng, backend=backend)
    for result, original in zip(out, (image, labels, weights)):
        np.testing.assert_array_equal(result, original)
        assert result.dtype == original.dtype and result is not original


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_result_other_seed_other_result(backend, rng):
    image, labels, weights = sample(rng, (48, 40))
    first = augment(image, labels, weights, rng=3, backend=backend)
    again = augment(image, labels, weights, rng=3, backend=backend)
    other = augment(image, labels, weights, rng=4, backend=backend)
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("config", "spatial_shape"),
    [(AugmentConfig(), (64, 64)), (AugmentConfig(ndim=3, max_tilt_deg=20.0), (8, 24, 24))],
)
def test_labels_keep_ids_and_weights_keep_range(backend, config, spatial_shape, rng):
    image, labels, weights = sample(rng, spatial_shape)
    for seed in range(3):
        out_image, out_labels, out_weights = augment(
            image, labels, weights, config=config, rng=seed, backend=backend
        )
        assert out_labels.dtype == np.int32 and out_labels.shape == labels.shape
        assert set(np.unique(out_labels)) <= {0, 1, 5, 9}
        assert out_weights.min() >= weights.min() and out_weights.max() <= weights.max()
        assert out_image.dtype == np.float32 and out_image.shape == image.shape
        assert not np.array_equal(out_labels, labels)


def test_elastic_only_equals_apply_displacement(rng):
    image, labels, weights = sample(rng, (40, 36))
    config = dataclasses.replace(OFF, elastic_sigma_px=10.0)
    out = augment(image, labels, weights, config=config, rng=9, backend="scipy")
    grid = sample_displacement((40, 36), rng=np.random.default_rng(9))  # drawn first
    expected = apply_displacement([image, labels, weights], grid, orders=(3, 0, 1))
    for result, reference in zip(out, expected):
        np.testing.assert_allclose(result, reference, atol=1e-6)


def test_backends_agree(rng):
    image = smooth_image((64, 64))
    _, labels, weights = sample(rng, (64, 64))
    for seed in range(3):
        fast = augment(image, labels, weights, rng=seed, backend="torch")
        reference = augment(image, labels, weights, rng=seed, backend="scipy")
        # Nearest may differ only within float32 grid rounding of a half-pixel tie.
        assert np.mean(fast[1] != reference[1]) < 1e-3
        np.testing.assert_allclose(fast[2], reference[2], atol=1e-3)
        # Keys cubic convolution vs cubic B-spline on a 32 px wave (see torch_backend).
        np.testing.assert_allclose(fast[0], reference[0], atol=0.05)


def test_optional_labels_and_weights(rng):
    image, labels, _ = sample(rng, (32, 32), channels=(3,))
    out_image, out_labels, out_weights = augment(image, None, None, rng=1)
    assert out_labels is None and out_weights is None and out_image.shape == image.shape
    _, only_labels, _ = augment(image, labels, None, rng=1)
    np.testing.assert_array_equal(only_labels, augment(image, labels, labels * 1.0, rng=1)[1])


def test_errors(rng):
    image, labels, weights = sample(rng, (16, 16))
    with pytest.raises(ValueError, match="backend"):
        augment(image, labels, weights, backend="cuda")
    with pytest.raises(ValueError, match="weights"):
        augment(image, labels, weights[:-1], rng=0)
    with pytest.raises(TypeError, match="labels"):
        augment(image, labels.astype(np.float32), weights, rng=0)
    with pytest.raises(TypeError, match="image"):
        augment(labels, labels, weights, rng=0)
