"""Grey-value variations: brightness, contrast, gamma, Gaussian noise (Ronneberger 2015, Sec. 3.1).

The paper names "gray value variations" without parameters; the ranges here are ours
(see `sample_intensity_change`). Images are expected intensity-normalised
(`biounet.data.normalize`, roughly [0, 1] or zero mean, unit spread), so offsets and the
noise level are in those units. Every function keeps shape and floating dtype, never
modifies its input, and is exactly the identity at its neutral setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IntensityChange:
    """One draw of grey-value parameters; `apply_intensity_change` is deterministic in it."""

    brightness: float = 0.0  # added offset
    contrast: float = 1.0  # factor about the image mean
    gamma: float = 1.0  # exponent on the image rescaled to [0, 1]
    noise_sigma: float = 0.0  # standard deviation of added Gaussian noise
    noise_seed: int = 0  # seeds the noise, so applying twice gives the same image


def adjust_brightness(image: np.ndarray, offset: float) -> np.ndarray:
    """Add `offset` to every pixel.

    Example:
        >>> adjust_brightness(np.array([0.0, 0.5], np.float32), 0.25)
        array([0.25, 0.75], dtype=float32)
    """
    _check_float_image(image)
    return image + offset


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale the deviations from the image mean by `factor` (the mean is kept).

    Example:
        >>> adjust_contrast(np.array([0.0, 1.0], np.float32), 2.0)
        array([-0.5,  1.5], dtype=float32)
    """
    _check_float_image(image)
    mean = float(image.mean(dtype=np.float64))
    # image * 1 + mean * 0 is exactly image, unlike (image - mean) * 1 + mean.
    return image * factor + mean * (1.0 - factor)


def adjust_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """Apply ``t ** gamma`` to the image rescaled to t in [0, 1]; min and max stay fixed.

    Rescaling by the image's own range makes this a monotonic grey-value curve for any
    intensity normalisation; gamma < 1 brightens the mid-tones, gamma > 1 darkens them.

    Example:
        >>> adjust_gamma(np.array([0.0, 0.25, 1.0], np.float32), 0.5)
        array([0. , 0.5, 1. ], dtype=float32)
    """
    _check_float_image(image)
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if gamma == 1.0 or image.size == 0:
        return image.copy()
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return image.copy()
    result = image - low
    result *= 1.0 / (high - low)
    np.clip(result, 0.0, 1.0, out=result)  # rounding may step just outside [0, 1]
    # exp(gamma * log t) is ~3x faster than np.power in float32; log(0) = -inf gives 0.
    with np.errstate(divide="ignore"):
        np.log(result, out=result)
    result *= gamma
    np.exp(result, out=result)
    result *= high - low
    result += low
    return result


def add_gaussian_noise(
    image: np.ndarray, *, sigma: float, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Add independent zero-mean Gaussian noise of standard deviation `sigma` to each pixel.

    Example:
        >>> image = np.zeros(3, np.float32)
        >>> bool((add_gaussian_noise(image, sigma=0.0, rng=0) == image).all())
        True
    """
    _check_float_image(image)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return image.copy()
    rng = np.random.default_rng(rng)
    noise_dtype = image.dtype if image.dtype in (np.float32, np.float64) else np.float32
    noise = rng.standard_normal(image.shape, dtype=noise_dtype)
    noise *= sigma
    return (image + noise).astype(image.dtype, copy=False)


def sample_intensity_change(
    *,
    brightness_range: Sequence[float] = (-0.1, 0.1),
    contrast_range: Sequence[float] = (0.8, 1.25),
    gamma_range: Sequence[float] = (0.8, 1.25),
    noise_sigma: float = 0.0,
    rng: np.random.Generator | int | None = None,
) -> IntensityChange:
    """Draw grey-value variation parameters (Ronneberger et al. 2015, Sec. 3.1).

    Brightness is uniform in `brightness_range`; contrast and gamma are log-uniform in
    their ranges, so a range symmetric about 1 in ratio (0.8, 1.25) darkens as often as
    it brightens. Defaults (ours; the paper gives none): +-0.1 offset and factors within
    1.25 keep a normalised image recognisable, like the mild variations of the training
    data. Noise is off by default (the paper lists none); set `noise_sigma` to add it.

    Example:
        >>> change = sample_intensity_change(brightness_range=(0, 0), contrast_range=(1, 1),
        ...                                  gamma_range=(1, 1), rng=0)
        >>> (change.brightness, change.contrast, change.gamma)
        (0.0, 1.0, 1.0)
    """
    _check_range("brightness_range", brightness_range, positive=False)
    _check_range("contrast_range", contrast_range, positive=True)
    _check_range("gamma_range", gamma_range, positive=True)
    if noise_sigma < 0:
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
    rng = np.random.default_rng(rng)
    return IntensityChange(
        brightness=float(rng.uniform(*brightness_range)),
        contrast=float(np.exp(rng.uniform(*np.log(contrast_range)))),
        gamma=float(np.exp(rng.uniform(*np.log(gamma_range)))),
        noise_sigma=float(noise_sigma),
        noise_seed=int(rng.integers(2**63)),
    )


def apply_intensity_change(image: np.ndarray, change: IntensityChange) -> np.ndarray:
    """Apply gamma, then contrast, then brightness, then noise; deterministic in `change`.

    Gamma comes first so it acts on the image's own grey-value range; noise comes last so
    it stays white and unscaled.

    Example:
        >>> image = np.linspace(0, 1, 5, dtype=np.float32)
        >>> bool((apply_intensity_change(image, IntensityChange()) == image).all())
        True
    """
    result = adjust_gamma(image, change.gamma)  # a new array: the rest works in place
    if change.contrast != 1.0 or change.brightness != 0.0:
        # adjust_contrast then adjust_brightness, fused into two passes.
        mean = float(result.mean(dtype=np.float64))
        result *= change.contrast
        result += mean * (1.0 - change.contrast) + change.brightness
    if change.noise_sigma > 0:
        result = add_gaussian_noise(result, sigma=change.noise_sigma, rng=change.noise_seed)
    return result


def _check_float_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"image must be floating (normalise it first), got dtype {image.dtype}")


def _check_range(name: str, bounds: Sequence[float], *, positive: bool) -> None:
    if len(bounds) != 2 or bounds[0] > bounds[1] or (positive and bounds[0] <= 0):
        requirement = "0 < low <= high" if positive else "low <= high"
        raise ValueError(f"{name} must be (low, high) with {requirement}, got {tuple(bounds)!r}")
