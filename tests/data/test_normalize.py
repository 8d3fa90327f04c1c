"""Tests of biounet.data.normalize against direct NumPy references."""

import warnings

import numpy as np
import pytest

from biounet.data.normalize import (
    bright_background,
    normalize_percentile,
    normalize_zscore,
    to_float_image,
)


def reference_percentile(image, low, high, eps=1e-20, axis=None):
    """CSBDeep's formula written out in float64."""
    values = np.asarray(image, dtype=np.float64)
    bottom = np.percentile(values, low, axis=axis, keepdims=True)
    top = np.percentile(values, high, axis=axis, keepdims=True)
    return (values - bottom) / (top - bottom + eps)


def reference_zscore(image, axis=None):
    values = np.asarray(image, dtype=np.float64)
    mean = values.mean(axis=axis, keepdims=True)
    std = values.std(axis=axis, keepdims=True)
    return (values - mean) / std


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize(("low", "high"), [(1.0, 99.8), (0.0, 100.0), (3.0, 50.0)])
def test_percentile_matches_reference(rng, dtype, low, high):
    image = (rng.random((37, 53)) * 250).astype(dtype)
    result = normalize_percentile(image, low=low, high=high)
    assert result.dtype == np.float32 and result.shape == image.shape
    np.testing.assert_allclose(result, reference_percentile(image, low, high), rtol=1e-5, atol=1e-5)


def test_percentile_per_channel_equals_channel_loop(rng):
    image = rng.normal(size=(3, 20, 30)) * np.array([1.0, 10.0, 100.0])[:, None, None]
    result = normalize_percentile(image, axis=(-2, -1))
    for channel in range(3):
        expected = normalize_percentile(image[channel])
        np.testing.assert_allclose(result[channel], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result, reference_percentile(image, 1.0, 99.8, axis=(1, 2)),
                               rtol=1e-5, atol=1e-5)


def test_percentile_single_int_axis_matches_reference(rng):
    image = rng.random((4, 5, 6))
    np.testing.assert_allclose(normalize_percentile(image, axis=0),
                               reference_percentile(image, 1.0, 99.8, axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("scale", "offset"), [(1.0, 0.0), (3.5, -20.0), (1e-3, 1e4)])
def test_percentile_is_invariant_to_affine_intensity_change(rng, scale, offset):
    image = rng.random((32, 32))
    np.testing.assert_allclose(normalize_percentile(scale * image + offset),
                               normalize_percentile(image), atol=2e-3)


def test_percentile_maps_percentiles_to_zero_and_one(rng):
    image = rng.random((64, 64)) * 1000
    result = normalize_percentile(image, low=5, high=95)
    assert np.percentile(result, 5) == pytest.approx(0.0, abs=1e-5)
    assert np.percentile(result, 95) == pytest.approx(1.0, abs=1e-5)
    assert result.min() < 0 and result.max() > 1  # no clipping by default


def test_percentile_clip_equals_clipped_reference(rng):
    image = rng.random((40, 40))
    result = normalize_percentile(image, low=10, high=90, clip=True)
    expected = np.clip(reference_percentile(image, 10, 90), 0, 1)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    assert result.min() == 0.0 and result.max() == 1.0


@pytest.mark.parametrize("normalize", [normalize_percentile, normalize_zscore])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, bool])
def test_constant_image_gives_zeros_without_warnings(normalize, dtype):
    image = np.full((8, 9), 7).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = normalize(image)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, np.zeros((8, 9), np.float32))


def test_constant_channel_is_zero_while_others_are_scaled(rng):
    image = np.stack([np.full((10, 10), 3.0), rng.random((10, 10))])
    result = normalize_percentile(image, axis=(1, 2))
    np.testing.assert_array_equal(result[0], 0.0)
    np.testing.assert_allclose(result[1], reference_percentile(image[1], 1.0, 99.8), atol=1e-5)


def test_zero_percentile_range_subtracts_offset_only():
    image = np.zeros((100, 100), dtype=np.uint16)
    image[0, 0] = 500  # below 0.2 % of pixels: p_low == p_high == 0
    result = normalize_percentile(image)
    assert result[0, 0] == 500.0 and np.count_nonzero(result) == 1


def test_input_is_not_modified_and_result_is_a_new_array(rng):
    image = rng.random((16, 16)).astype(np.float32)
    original = image.copy()
    for result in (normalize_percentile(image), normalize_zscore(image)):
        assert not np.shares_memory(result, image)
    np.testing.assert_array_equal(image, original)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float64])
def test_zscore_matches_reference(rng, dtype):
    image = (rng.random((30, 41)) * 200 - (0 if dtype == np.uint8 else 100)).astype(dtype)
    result = normalize_zscore(image)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, reference_zscore(image), rtol=1e-5, atol=1e-5)
    assert abs(result.mean()) < 1e-5 and result.std() == pytest.approx(1.0, abs=1e-5)


def test_zscore_per_channel(rng):
    image = rng.normal(size=(2, 15, 15)) * np.array([0.1, 50.0])[:, None, None] + 7
    result = normalize_zscore(image, axis=(1, 2))
    np.testing.assert_allclose(result, reference_zscore(image, axis=(1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"low": 50, "high": 50}, "percentiles"),
        ({"low": -1}, "percentiles"),
        ({"high": 100.5}, "percentiles"),
        ({"eps": -1.0}, "eps"),
        ({"axis": 2}, "axis 2 is out of range"),
        ({"axis": (0, -2)}, "repeats"),
    ],
)
def test_percentile_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        normalize_percentile(np.zeros((4, 4)), **options)


@pytest.mark.parametrize("normalize", [normalize_percentile, normalize_zscore])
def test_normalizers_reject_bad_images(normalize):
    with pytest.raises(ValueError, match="empty"):
        normalize(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        normalize(np.array([[1.0, np.nan]]))
    with pytest.raises(TypeError, match="complex"):
        normalize(np.ones((2, 2), dtype=complex))


def test_zscore_rejects_bad_axis():
    with pytest.raises(ValueError, match="axis -3"):
        normalize_zscore(np.zeros((4, 4)), axis=-3)


@pytest.mark.parametrize(
    ("dtype", "values"),
    [(np.uint8, [0, 17, 255]), (np.uint16, [0, 4095, 65535]), (np.float64, [-1.5, 0.25, 3e6]),
     (bool, [False, True, True])],
)
def test_grey_values_are_kept(dtype, values):
    image = np.array([values, values[::-1]], dtype=dtype)
    result = to_float_image(image)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, image.astype(np.float64))


def test_rgb_is_channels_first_and_alpha_is_dropped(rng):
    rgba = rng.integers(0, 256, size=(5, 7, 4), dtype=np.uint8)
    result = to_float_image(rgba, channels="rgb")
    assert result.shape == (3, 5, 7) and result.dtype == np.float32
    for channel in range(3):
        np.testing.assert_array_equal(result[channel], rgba[..., channel])
    other_alpha = rgba.copy()
    other_alpha[..., 3] = 0
    for channels in ("rgb", "grey"):
        np.testing.assert_array_equal(to_float_image(other_alpha, channels=channels),
                                      to_float_image(rgba, channels=channels))


def test_grey_from_colour_is_bt601_luma(rng):
    rgb = rng.integers(0, 65536, size=(6, 4, 3), dtype=np.uint16)
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(to_float_image(rgb), expected, rtol=1e-6)


def test_grey_stored_as_rgba_comes_back_exactly(rng):
    grey = rng.integers(0, 256, size=(9, 8), dtype=np.uint8)
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    np.testing.assert_array_equal(to_float_image(rgba), grey)


def test_grey_becomes_three_equal_channels():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    result = to_float_image(grey, channels="rgb")
    assert result.shape == (3, 3, 4)
    for channel in result:
        np.testing.assert_array_equal(channel, grey)


@pytest.mark.parametrize("n_samples", [1, 2])
def test_single_sample_and_grey_alpha_give_grey(n_samples, rng):
    image = rng.integers(0, 256, size=(4, 5, n_samples), dtype=np.uint8)
    np.testing.assert_array_equal(to_float_image(image), image[..., 0])


def test_volume_is_grey_without_samples_axis(rng):
    volume = rng.random((3, 10, 12))
    assert to_float_image(volume).shape == (3, 10, 12)


def test_to_float_image_rejects_bad_input():
    with pytest.raises(ValueError, match="channels must be one of"):
        to_float_image(np.zeros((2, 2)), channels="bgr")
    with pytest.raises(ValueError, match=r"at least 2 axes .* shape \(5,\)"):
        to_float_image(np.zeros(5))
    with pytest.raises(TypeError, match="dtype"):
        to_float_image(np.array([["a", "b"]]))


def slow_percentile(values, q):
    """np.percentile's linear interpolation written out over a sorted Python list."""
    ordered = sorted(float(value) for value in np.ravel(values))
    position = q / 100 * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def slow_is_bright(values):
    low, median, high = (slow_percentile(values, q) for q in (1.0, 50.0, 99.8))
    return median > (low + high) / 2


def nuclei_image(rng, *, bright_background):
    """Blobs on a background, 20% of the pixels objects, plus noise."""
    image = rng.normal(20.0, 3.0, (48, 64))
    yy, xx = np.mgrid[:48, :64]
    objects = np.zeros(image.shape, bool)
    for y, x in rng.integers(6, 42, (6, 2)):
        objects |= (yy - y) ** 2 + (xx - x) ** 2 < 16
    image[objects] += 150.0  # values stay within 0-200
    return (200.0 - image) if bright_background else image


@pytest.mark.parametrize("bright", [False, True])
def test_bright_background_follows_the_median_rule(rng, bright):
    image = nuclei_image(rng, bright_background=bright)
    assert bool(bright_background(image)) == slow_is_bright(image) == bright
    assert bright_background(image).shape == ()


def test_bright_background_per_channel(rng):
    image = np.stack([nuclei_image(rng, bright_background=b) for b in (True, False, True)])
    flags = bright_background(image, axis=(1, 2))
    assert flags.shape == (3, 1, 1)
    assert flags.ravel().tolist() == [slow_is_bright(channel) for channel in image]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_bright_objects_percentile_matches_reference(rng, dtype):
    image = np.stack(
        [nuclei_image(rng, bright_background=b) for b in (True, False)]
    ).astype(dtype)
    result = normalize_percentile(image, axis=(1, 2), polarity="bright_objects")
    for channel, values in enumerate(image):
        # a bright background: normalised as the negated image would be
        values = values.astype(np.float64) * (-1 if slow_is_bright(values) else 1)
        low, high = slow_percentile(values, 1.0), slow_percentile(values, 99.8)
        expected = (values - low) / (high - low)
        np.testing.assert_allclose(result[channel], expected, rtol=1e-5, atol=1e-5)
    assert slow_is_bright(image[0]) and not slow_is_bright(image[1])


def test_bright_objects_makes_an_inverted_image_look_like_the_original(rng):
    dark = nuclei_image(rng, bright_background=False)
    inverted = 200.0 - dark
    np.testing.assert_allclose(
        normalize_percentile(inverted, polarity="bright_objects"),
        normalize_percentile(dark), atol=1e-5,
    )
    np.testing.assert_allclose(
        normalize_zscore(inverted, polarity="bright_objects"),
        normalize_zscore(dark), atol=1e-5,
    )
    # the dark-background image itself is left as it is
    np.testing.assert_array_equal(
        normalize_percentile(dark, polarity="bright_objects"), normalize_percentile(dark)
    )


@pytest.mark.parametrize("normalize", [normalize_percentile, normalize_zscore])
def test_unknown_polarity_is_refused(normalize):
    with pytest.raises(ValueError, match=r"polarity must be one of \['as_is', 'bright_objects'\], got 'dark'"):
        normalize(np.zeros((4, 4)), polarity="dark")
