"""Step 2 of `biounet.datasets.synthetic`: the microscope image of given labels, and random fields.

Intensities, texture, borders, illumination, blur and noise, drawn from a
`SyntheticConfig` and a generator; `smooth_noise` also bends the cell outlines of step 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from biounet.datasets.synthetic import SyntheticConfig

BORDER_STYLES = ("dark", "bright", "random")

_TEXTURE_SCALE_PX = 2.0


def render_image(
    labels: np.ndarray, nuclei: np.ndarray, config: SyntheticConfig, rng: np.random.Generator
) -> np.ndarray:
    """Intensities of cells, nuclei, texture and borders; illumination, blur and noise."""
    n_cells = int(labels.max())
    low, high = config.cell_intensity_range
    cell_intensity = np.concatenate([[config.background], rng.uniform(low, high, n_cells)])
    image = cell_intensity.astype(np.float32)[labels]
    texture = smooth_noise(labels.shape, _TEXTURE_SCALE_PX, rng)
    # The background gets half the texture: out-of-focus debris, flatter than cytoplasm.
    image *= 1 + config.texture_strength * np.where(labels > 0, texture, 0.5 * texture)
    image[nuclei] *= 1 - config.nucleus_contrast

    style = config.border_style
    if style == "random":
        style = BORDER_STYLES[rng.integers(2)]
    sign = -1.0 if style == "dark" else 1.0
    priority = np.concatenate([[0], rng.permutation(n_cells) + 1])[labels]
    image[_border_mask(labels, priority, config.border_width_px)] *= (
        1 + sign * config.border_contrast
    )

    image *= _illumination(labels.shape, config.illumination_strength, rng)
    if config.blur_sigma_px > 0:
        image = ndimage.gaussian_filter(image, config.blur_sigma_px, truncate=3.0)
    # Poisson-Gaussian noise in its Gaussian approximation: variance = signal / photons
    # + read noise^2 (Foi et al. 2008, eq. 3); faithful above ~10 photons per pixel.
    variance = np.full_like(image, config.read_noise_std**2)
    if config.photon_count is not None:
        variance += np.maximum(image, 0) / np.float32(config.photon_count)
    image += np.sqrt(variance) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 1, out=image)


def _border_mask(labels: np.ndarray, priority: np.ndarray, width: int) -> np.ndarray:
    """Cell pixels on the outline: a 4-neighbour has another id (width 2) or a lower priority.

    With width 1 only the cell of higher priority (background has 0) carries the line
    between two cells, so it is one pixel wide everywhere.
    """
    key = priority if width == 1 else labels
    mask = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        head = (slice(None),) * axis + (slice(None, -1),)
        tail = (slice(None),) * axis + (slice(1, None),)
        if width == 1:
            mask[head] |= key[tail] < key[head]
            mask[tail] |= key[head] < key[tail]
        else:
            differs = key[head] != key[tail]
            mask[head] |= differs
            mask[tail] |= differs
    return mask & (labels > 0)


def _illumination(shape: tuple[int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field in [1 - strength, 1]: a tilted ramp plus broad bumps."""
    angle = rng.uniform(0, 2 * np.pi)
    rows = np.linspace(-0.5, 0.5, shape[0], dtype=np.float32)[:, None]
    columns = np.linspace(-0.5, 0.5, shape[1], dtype=np.float32)[None, :]
    field = np.float32(np.cos(angle)) * rows + np.float32(np.sin(angle)) * columns
    field = field + 0.15 * smooth_noise(shape, max(shape) / 3, rng)
    field -= field.min()
    field /= max(float(field.max()), 1e-6)
    return 1 - strength * field


def smooth_noise(shape: tuple[int, int], scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary Gaussian random field, (Y, X) float32, zero mean, about unit variance.

    White noise filtered by a Gaussian of standard deviation `scale_px`. From 3 px up
    the field is drawn on a grid `step` times coarser (where the Gaussian is 1.5-3
    coarse pixels wide, so the field is smooth between grid points) and linearly
    interpolated, which costs a few passes over the image at any scale.
    """
    step = max(int(scale_px / 1.5), 1)
    sigma = scale_px / step
    pad = max(int(np.ceil(3 * sigma)), 1)  # the filter sees noise everywhere: no edge effects
    coarse_shape = tuple(-(-size // step) + 1 + 2 * pad for size in shape)
    noise = rng.standard_normal(coarse_shape, dtype=np.float32)
    field = ndimage.gaussian_filter(noise, sigma, truncate=3.0, output=noise)[pad:-pad, pad:-pad]
    impulse = np.zeros(2 * pad + 1)
    impulse[pad] = 1
    # White noise filtered by a separable kernel k has variance (sum of k^2) per axis.
    field /= np.float32(np.sum(ndimage.gaussian_filter1d(impulse, sigma, truncate=3.0) ** 2))
    if step == 1:
        return field[: shape[0], : shape[1]]
    for axis in (1, 0):  # the short coarse axis first: the second pass makes the full image
        position = np.arange(shape[axis], dtype=np.float32) / step
        index = position.astype(np.intp)
        fraction = position - index
        if axis == 0:
            fraction = fraction[:, None]
        increment = np.diff(field, axis=axis)
        field, increment = np.take(field, index, axis=axis), np.take(increment, index, axis=axis)
        increment *= fraction
        field += increment
    return field
