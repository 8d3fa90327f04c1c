"""Seeded synthetic microscopy images of touching cells, with instance ground truth.

The generator needs no data and no network, so `biounet demo` and the tests can train
and evaluate a U-Net anywhere. An image is made in two steps:

1. Labels. Cell centres and radii are packed as non-overlapping disks (greedy random
   sequential packing, larger disks first) inside clumps, the regions where a smooth
   random field exceeds its `fill_fraction` quantile. A pixel joins the cell whose core
   disk is nearest (an additively weighted Voronoi tessellation, so big and small cells
   share curved borders) if it lies within reach of that cell's centre; distances are
   taken at smoothly displaced coordinates, which makes the outlines irregular.
   Touching cells share their boundary: the ground truth has no background gap between
   them, like manual instance annotations; the U-Net learns to separate them through
   the border weights of Ronneberger et al. 2015, eq. 2. Every id is one 4-connected
   region and the ids are 1..N.
2. Image. Background and a random intensity per cell, a darker or brighter nucleus,
   smooth texture, a thin dark or bright border, uneven illumination, Gaussian blur
   (the optics) and Poisson-Gaussian noise. The border is drawn on cell pixels next to
   another cell or the background, so the labels own it.

Sizes are in pixels. A 2048x2048 image takes about a second on two cores, a 256x256
one about 20 ms; nothing uses BLAS, whose threads are slow on small machines.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from biounet.config import _JsonConfig
from biounet.datasets.synthetic_cells import sample_labels
from biounet.datasets.synthetic_image import BORDER_STYLES, render_image


@dataclass(frozen=True)
class SyntheticConfig(_JsonConfig):
    """Appearance of synthetic cell images; the defaults resemble a stained cell culture.

    Attributes:
        cell_diameter_px: (min, max) diameter of the cells; drawn uniformly per cell.
        fill_fraction: fraction of the image inside clumps, where cell centres lie; cells
            cover a little more, since peripheral cells reach out of their clump.
        clump_size_px: correlation length of the random field whose excursions are the
            clumps; clumps are a few times this across.
        shape_irregularity: standard deviation of the smooth displacement that bends
            the outlines, relative to the mean cell radius (0: polygons with round edges;
            at most 0.5, beyond which the displacement folds cells into pieces).
        border_style: "dark", "bright", or "random" (one of the two per image).
        border_width_px: 1 (one line between touching cells, drawn on one of them) or 2
            (a line on each side).
        border_contrast: relative intensity change of a cell on its border.
        cell_intensity_range: (min, max) mean intensity of a cell, drawn per cell.
        background: intensity of the background.
        nucleus_contrast: relative intensity change of the nucleus, a disk near the cell
            centre (positive: darker, negative: brighter, 0: no nucleus).
        texture_strength: standard deviation of the relative intensity texture of cells.
        illumination_strength: the illumination falls by this fraction across the image.
        blur_sigma_px: standard deviation of the Gaussian blur (0: none).
        photon_count: photons at intensity 1, setting the shot noise (None: no shot noise).
        read_noise_std: standard deviation of the additive Gaussian (read-out) noise.
    """

    cell_diameter_px: tuple[float, float] = (20.0, 45.0)
    fill_fraction: float = 0.5
    clump_size_px: float = 60.0
    shape_irregularity: float = 0.15
    border_style: str = "random"
    border_width_px: int = 2
    border_contrast: float = 0.5
    cell_intensity_range: tuple[float, float] = (0.4, 0.75)
    background: float = 0.15
    nucleus_contrast: float = 0.25
    texture_strength: float = 0.12
    illumination_strength: float = 0.35
    blur_sigma_px: float = 1.0
    photon_count: float | None = 200.0
    read_noise_std: float = 0.015

    def __post_init__(self) -> None:
        _check_range("cell_diameter_px", self.cell_diameter_px, 4.0, None)
        _check_range("cell_intensity_range", self.cell_intensity_range, 0.0, 1.0)
        for name, low, high in (
            ("fill_fraction", 0.0, 1.0),
            ("clump_size_px", 0.0, None),
            ("shape_irregularity", 0.0, 0.5),
            ("border_contrast", 0.0, 1.0),
            ("background", 0.0, 1.0),
            ("nucleus_contrast", -1.0, 1.0),
            ("texture_strength", 0.0, None),
            ("illumination_strength", 0.0, 1.0),
            ("blur_sigma_px", 0.0, None),
            ("read_noise_std", 0.0, None),
        ):
            _check_number(name, getattr(self, name), low, high)
        if self.fill_fraction == 0 or self.clump_size_px == 0:
            raise ValueError(
                f"fill_fraction and clump_size_px must be positive, got "
                f"{self.fill_fraction} and {self.clump_size_px}"
            )
        if self.border_style not in BORDER_STYLES:
            raise ValueError(
                f"border_style must be one of {list(BORDER_STYLES)}, got {self.border_style!r}"
            )
        if self.border_width_px not in (1, 2) or isinstance(self.border_width_px, bool):
            raise ValueError(f"border_width_px must be 1 or 2, got {self.border_width_px!r}")
        if self.photon_count is not None:
            _check_number("photon_count", self.photon_count, 0.0, None)
            if self.photon_count == 0:
                raise ValueError("photon_count must be positive or None (no shot noise), got 0")


def generate_sample(
    shape: Sequence[int],
    *,
    config: SyntheticConfig | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic image of touching cells and its instance labels.

    Args:
        shape: (Y, X) size of the image.
        config: appearance; `SyntheticConfig()` if None.
        rng: generator or seed; the same seed gives identical arrays.

    Returns:
        image: (Y, X) float32 in [0, 1].
        labels: (Y, X) int32, 0 = background, cells 1..N, each one 4-connected region;
            touching cells share their boundary without a background gap.

    Example:
        >>> image, labels = generate_sample((64, 96), rng=0)
        >>> image.shape, image.dtype.name, labels.dtype.name
        ((64, 96), 'float32', 'int32')
        >>> bool(np.array_equal(np.unique(labels), np.arange(labels.max() + 1)))
        True
    """
    shape = _check_shape(shape)
    config = SyntheticConfig() if config is None else config
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    rng = np.random.default_rng(rng)
    labels, nuclei = sample_labels(shape, config, rng)
    image = render_image(labels, nuclei, config, rng)
    return image, labels


def generate_dataset(
    n_images: int,
    shape: Sequence[int],
    *,
    config: SyntheticConfig | None = None,
    rng: np.random.Generator | int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Draw `n_images` independent (image, labels) pairs, as `generate_sample` does.

    Image i comes from the i-th child stream of `rng` (`Generator.spawn`), so the first
    images of a seeded data set do not depend on `n_images`.

    Example:
        >>> pairs = generate_dataset(2, (48, 48), rng=1)
        >>> [image.shape for image, _ in pairs]
        [(48, 48), (48, 48)]
    """
    if isinstance(n_images, bool) or not isinstance(n_images, numbers.Integral):
        raise TypeError(f"n_images must be an integer, got {type(n_images).__name__}")
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    shape = _check_shape(shape)
    streams = np.random.default_rng(rng).spawn(int(n_images))
    return [generate_sample(shape, config=config, rng=stream) for stream in streams]


def _check_shape(shape: Any) -> tuple[int, int]:
    if not isinstance(shape, Sequence) or len(shape) != 2:
        raise ValueError(f"shape must be a (Y, X) pair of sizes, got {shape!r}")
    if not all(isinstance(size, numbers.Integral) and size > 0 for size in shape):
        raise ValueError(f"shape must hold two positive integers, got {tuple(shape)!r}")
    return int(shape[0]), int(shape[1])


def _check_number(name: str, value: Any, low: float, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not np.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def _check_range(name: str, value: Any, low: float, high: float | None) -> None:
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"{name} must be a (min, max) tuple, got {value!r}")
    for bound in value:
        _check_number(name, bound, low, high)
    if value[0] > value[1]:
        raise ValueError(f"{name} must be (min, max) with min <= max, got {value}")
