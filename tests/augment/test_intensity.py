"""Tests of grey-value variations (Ronneberger et al. 2015, Sec. 3.1)."""

import math

import numpy as np
import pytest

from biounet.augment.intensity import (
    IntensityChange,
    add_gaussian_noise,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    apply_intensity_change,
    sample_intensity_change,
)


def reference_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma on the image rescaled to [0, 1], one pixel at a time in float64."""
    low, high = float(image.min()), float(image.max())
    out = np.empty(image.shape)
    for index, value in np.ndenumerate(image):
        out[index] = low + (high - low) * ((float(value) - low) / (high - low)) ** gamma
    return out


@pytest.fixture
def image(rng):
    return (rng.random((2, 24, 31)) * 3 - 1).astype(np.float32)


@pytest.mark.parametrize(
    "transform",
    [
        lambda x: adjust_brightness(x, 0.3),
        lambda x: adjust_contrast(x, 1.4),
        lambda x: adjust_gamma(x, 0.7),
        lambda x: add_gaussian_noise(x, sigma=0.1, rng=0),
        lambda x: apply_intensity_change(x, sample_intensity_change(noise_sigma=0.05, rng=0)),
    ],
)
def test_keeps_float32_and_shape_and_input(transform, image):
    before = image.copy()
    out = transform(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_array_equal(image, before)
    assert not np.array_equal(out, image)


def test_neutral_settings_are_exact_identities(image):
    for out in (
        adjust_brightness(image, 0.0),
        adjust_contrast(image, 1.0),
        adjust_gamma(image, 1.0),
        add_gaussian_noise(image, sigma=0.0, rng=0),
        apply_intensity_change(image, IntensityChange()),
        apply_intensity_change(image, IntensityChange(contrast=1.0, brightness=0.0, gamma=1.0)),
    ):
        np.testing.assert_array_equal(out, image)
        assert out is not image


@pytest.mark.parametrize("gamma", [0.5, 0.8, 1.25, 2.0])
def test_gamma_equals_reference_and_keeps_range(gamma, image):
    out = adjust_gamma(image, gamma)
    np.testing.assert_allclose(out, reference_gamma(image, gamma), atol=2e-6)
    assert out.min() == pytest.approx(image.min(), abs=1e-6)
    assert out.max() == pytest.approx(image.max(), abs=1e-6)
    order = np.argsort(image, axis=None)
    assert np.all(np.diff(out.ravel()[order]) >= -1e-6)  # monotonic grey-value curve


def test_gamma_of_a_constant_image_is_the_image():
    flat = np.full((4, 4), 0.3, np.float32)
    np.testing.assert_array_equal(adjust_gamma(flat, 2.0), flat)


def test_contrast_keeps_mean_and_scales_spread(image):
    out = adjust_contrast(image, 1.5)
    assert out.mean(dtype=np.float64) == pytest.approx(image.mean(dtype=np.float64), abs=1e-5)
    assert out.std(dtype=np.float64) == pytest.approx(1.5 * image.std(dtype=np.float64), rel=1e-5)


def test_noise_has_requested_sigma_and_follows_the_seed():
    zeros = np.zeros((256, 256), np.float32)
    noisy = add_gaussian_noise(zeros, sigma=0.2, rng=5)
    assert noisy.std() == pytest.approx(0.2, rel=0.02)
    assert abs(noisy.mean()) < 0.01
    np.testing.assert_array_equal(noisy, add_gaussian_noise(zeros, sigma=0.2, rng=5))
    assert not np.array_equal(noisy, add_gaussian_noise(zeros, sigma=0.2, rng=6))


def test_sampled_parameters_stay_in_range_and_are_log_uniform(rng):
    changes = [sample_intensity_change(noise_sigma=0.1, rng=rng) for _ in range(4000)]
    brightness = np.array([c.brightness for c in changes])
    contrast = np.array([c.contrast for c in changes])
    gamma = np.array([c.gamma for c in changes])
    assert brightness.min() >= -0.1 and brightness.max() <= 0.1
    assert contrast.min() >= 0.8 and contrast.max() <= 1.25
    assert gamma.min() >= 0.8 and gamma.max() <= 1.25
    # log-uniform on a range symmetric in ratio: as many factors below 1 as above
    assert abs(np.mean(np.log(contrast))) < 0.01 and abs(np.mean(np.log(gamma))) < 0.01
    assert np.std(np.log(gamma)) == pytest.approx(math.log(1.25) / math.sqrt(3), rel=0.05)
    assert all(c.noise_sigma == 0.1 for c in changes)


def test_sample_and_apply_are_deterministic(image):
    first = sample_intensity_change(noise_sigma=0.05, rng=11)
    assert first == sample_intensity_change(noise_sigma=0.05, rng=11)
    assert first != sample_intensity_change(noise_sigma=0.05, rng=12)
    np.testing.assert_array_equal(
        apply_intensity_change(image, first), apply_intensity_change(image, first)
    )


def test_apply_equals_the_individual_steps(image):
    change = IntensityChange(brightness=0.05, contrast=1.2, gamma=0.9)
    expected = adjust_brightness(adjust_contrast(adjust_gamma(image, 0.9), 1.2), 0.05)
    np.testing.assert_allclose(apply_intensity_change(image, change), expected, atol=1e-6)


def test_errors():
    with pytest.raises(TypeError, match="floating"):
        adjust_gamma(np.zeros((4, 4), np.uint8), 2.0)
    with pytest.raises(ValueError, match="gamma"):
        adjust_gamma(np.zeros((4, 4), np.float32), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        add_gaussian_noise(np.zeros((4, 4), np.float32), sigma=-1.0)
    with pytest.raises(ValueError, match="contrast_range"):
        sample_intensity_change(contrast_range=(0.0, 1.2))
    with pytest.raises(ValueError, match="brightness_range"):
        sample_intensity_change(brightness_range=(0.1, -0.1))
