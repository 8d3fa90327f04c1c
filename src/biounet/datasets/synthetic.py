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
from scipy import ndimage, spatial
from skimage import measure

from biounet.config import _JsonConfig

BORDER_STYLES = ("dark", "bright", "random")

_CORE_FRACTION = 0.6  # core disk radius / cell radius: the weight of the Voronoi tessellation
_PACKING_FRACTION = 0.75  # packed disks have this fraction of the cell radius, so cells touch
_REACH = 1.1  # farthest a cell reaches from its centre, in cell radii
_CANDIDATES_PER_CELL = 6  # oversampling of the greedy packing; more gives denser clumps
_NUCLEUS_FRACTION = 0.4  # nucleus radius / cell radius
_WARP_SCALE = 0.5  # correlation length of the outline displacement / mean cell radius
_TEXTURE_SCALE_PX = 2.0


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
    labels, nuclei = _sample_labels(shape, config, rng)
    image = _render_image(labels, nuclei, config, rng)
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


def _sample_labels(
    shape: tuple[int, int], config: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tessellate clumps into cells; return (labels int32, nuclei bool), both (Y, X).

    A pixel belongs to the cell minimising its distance to the centre minus the core
    radius (additively weighted Voronoi), among the cells within reach; distances are
    taken at smoothly displaced coordinates, which bends the outlines.
    """
    mean_radius = sum(config.cell_diameter_px) / 4
    amplitude = config.shape_irregularity * mean_radius
    slack = 2.5 * amplitude  # only the far rim of a cell can be displaced farther
    # Cells centred outside the image reach into it, so the image edge cuts cells.
    margin = _REACH * config.cell_diameter_px[1] / 2 + slack
    centres, radii = _pack_cells(shape, margin, config, rng)
    nucleus_centres = centres + rng.normal(0, 0.1, centres.shape) * radii[:, None]  # off-centre
    rows = np.arange(shape[0], dtype=np.float32)[:, None]
    columns = np.arange(shape[1], dtype=np.float32)[None, :]
    if amplitude > 0:
        scale = _WARP_SCALE * mean_radius
        rows = rows + np.float32(amplitude) * _smooth_noise(shape, scale, rng)
        columns = columns + np.float32(amplitude) * _smooth_noise(shape, scale, rng)
    rows, columns = np.broadcast_to(rows, shape), np.broadcast_to(columns, shape)

    labels, nuclei = _tessellate(rows, columns, centres, radii, nucleus_centres, slack)
    labels = _keep_largest_components(labels)
    return labels, nuclei & (labels > 0)


def _tessellate(
    rows: np.ndarray,
    columns: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
    nucleus_centres: np.ndarray,
    slack: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint cells into (labels, nuclei) at the (displaced) pixel coordinates rows, columns.

    Each cell is evaluated in its bounding box only (enlarged by `slack`, the largest
    expected displacement), keeping per pixel the smallest weighted distance so far.
    """
    shape = rows.shape
    labels = np.zeros(shape, np.int32)
    nuclei = np.zeros(shape, bool)
    nearest = np.full(shape, np.inf, np.float32)
    cells = zip(centres.tolist(), nucleus_centres.tolist(), radii.tolist())
    for index, ((row, column), (nucleus_row, nucleus_column), radius) in enumerate(cells, 1):
        reach = _REACH * radius
        top, left = max(int(row - reach - slack), 0), max(int(column - reach - slack), 0)
        bottom = min(int(row + reach + slack) + 2, shape[0])
        right = min(int(column + reach + slack) + 2, shape[1])
        if top >= bottom or left >= right:
            continue
        box = (slice(top, bottom), slice(left, right))
        box_rows, box_columns = rows[box], columns[box]
        distance = np.hypot(box_rows - row, box_columns - column)
        claimed = distance <= reach
        distance -= _CORE_FRACTION * radius  # additive weight: big cells push borders outwards
        claimed &= distance < nearest[box]
        np.copyto(nearest[box], distance, where=claimed)
        np.copyto(labels[box], index, where=claimed)
        in_nucleus = np.hypot(box_rows - nucleus_row, box_columns - nucleus_column)
        np.copyto(nuclei[box], in_nucleus <= _NUCLEUS_FRACTION * radius, where=claimed)
    return labels, nuclei


def _pack_cells(
    shape: tuple[int, int], margin: float, config: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (N, 2) and radii (N,): disks packed in clumps, larger disks first.

    Centres may lie up to `margin` outside the image, so that clumps continue past its edge.
    """
    pad = int(np.ceil(margin))
    shape = (shape[0] + 2 * pad, shape[1] + 2 * pad)
    clumps = _smooth_noise(shape, config.clump_size_px, rng)
    threshold = np.quantile(clumps[::4, ::4], 1 - config.fill_fraction)
    inside = np.flatnonzero(clumps > threshold)
    low, high = (diameter / 2 for diameter in config.cell_diameter_px)
    mean_area = np.pi * (low**2 + low * high + high**2) / 3
    n_candidates = int(np.ceil(_CANDIDATES_PER_CELL * inside.size / mean_area))
    if inside.size == 0 or n_candidates == 0:
        return np.zeros((0, 2)), np.zeros(0)
    picked = inside[rng.integers(0, inside.size, n_candidates)]
    centres = (
        np.stack(np.unravel_index(picked, shape), axis=1)
        - pad
        + rng.uniform(-0.5, 0.5, (n_candidates, 2))
    )
    radii = np.sort(rng.uniform(low, high, n_candidates))[::-1]
    exclusion = _PACKING_FRACTION * radii
    pairs = spatial.cKDTree(centres).query_pairs(2 * exclusion[0], output_type="ndarray")
    first, second = pairs[:, 0], pairs[:, 1]
    overlapping = np.hypot(*(centres[first] - centres[second]).T) < (
        exclusion[first] + exclusion[second]
    )
    kept = _greedy_independent_set(n_candidates, first[overlapping], second[overlapping])
    return centres[kept], radii[kept]


def _greedy_independent_set(n_nodes: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Nodes taken in index order, skipping those joined by an edge to a taken one.

    Computed in parallel rounds: a node whose earlier neighbours are all gone is taken
    and its neighbours are dropped; this gives exactly the sequential greedy result.
    """
    earlier, later = np.minimum(first, second), np.maximum(first, second)
    undecided = np.ones(n_nodes, bool)
    taken = np.zeros(n_nodes, bool)
    while undecided.any():
        live = undecided[earlier] & undecided[later]
        earlier, later = earlier[live], later[live]
        waiting = np.zeros(n_nodes, bool)
        waiting[later] = True
        newly_taken = undecided & ~waiting
        taken |= newly_taken
        undecided &= ~newly_taken
        undecided[later[newly_taken[earlier]]] = False
    return np.flatnonzero(taken)


def _keep_largest_components(labels: np.ndarray) -> np.ndarray:
    """Keep the largest 4-connected piece of every id (others become background); ids 1..N."""
    components = measure.label(labels, background=0, connectivity=1)
    owner = np.zeros(components.max() + 1, np.int64)
    owner[components.ravel()] = labels.ravel()
    sizes = np.bincount(components.ravel())
    order = np.lexsort((sizes, owner))  # per owner, its largest component comes last
    is_last = np.append(owner[order][1:] != owner[order][:-1], True)
    largest = order[is_last & (owner[order] > 0)]
    new_ids = np.zeros(components.max() + 1, np.int32)
    new_ids[largest] = np.arange(1, largest.size + 1, dtype=np.int32)
    return new_ids[components]


def _render_image(
    labels: np.ndarray, nuclei: np.ndarray, config: SyntheticConfig, rng: np.random.Generator
) -> np.ndarray:
    """Intensities of cells, nuclei, texture and borders; illumination, blur and noise."""
    n_cells = int(labels.max())
    low, high = config.cell_intensity_range
    cell_intensity = np.concatenate([[config.background], rng.uniform(low, high, n_cells)])
    image = cell_intensity.astype(np.float32)[labels]
    texture = _smooth_noise(labels.shape, _TEXTURE_SCALE_PX, rng)
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
    field = field + 0.15 * _smooth_noise(shape, max(shape) / 3, rng)
    field -= field.min()
    field /= max(float(field.max()), 1e-6)
    return 1 - strength * field


def _smooth_noise(shape: tuple[int, int], scale_px: float, rng: np.random.Generator) -> np.ndarray:
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
