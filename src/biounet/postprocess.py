"""Foreground probabilities -> instance labels: threshold, fill holes, size filter, watershed.

The U-Net separates touching cells by predicting a thin background border between them
and by the weight map that stresses those borders (Ronneberger et al. 2015, Sec. 3,
eq. 2). Where the border is predicted, connected components of the thresholded map
already separate the objects; where it is not (touching nuclei), a seeded watershed
splits them. Its seeds are either the maxima of the smoothed distance to the background,
kept when they rise at least `min_seed_prominence_px` above the saddle towards any higher
maximum of the same component (h-maxima; suits round nuclei whose contact is a neck of
the mask), or the connected regions where the probability exceeds `seed_threshold`
(suits cells whose predicted border dips in probability without falling below
`threshold`), or, for a three-class network (`UNetConfig.boundary_class`), the regions
its interior class covers (`instances_from_probabilities` passes that map on).

The defaults were chosen on the 126 training images of the project's DSB 2018 split,
with the reference masks as foreground: where touching nuclei are merged in the mask the
watershed lifts the DSB 2018 score from 0.75 (components only) to 0.85; where a 1-px
border separates them it costs 0.012 against components only (0.953 vs 0.965).
For membrane-like predictions of large irregular cells prefer `watershed=False` or
`seeds="probability"`: on the 20 ISBI 2012 training labels, blurred (sigma 1 px) as
foreground, AP at IoU 0.5 is 0.96 with components only, 0.93 with probability seeds and
0.81 with the default distance seeds, which split non-convex cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from skimage import measure

from biounet.config import check_spacing
from biounet.watershed import split_touching_objects

SEED_METHODS = ("distance", "probability", "interior")


@dataclass(frozen=True)
class PostprocessConfig:
    """How `probabilities_to_labels` turns a foreground map into instances.

    Attributes:
        threshold: a pixel is foreground if its probability is above this.
        min_size: objects, and watershed basins, of fewer pixels (voxels) are dropped;
            a dropped basin is flooded by its neighbours instead of becoming background.
        fill_holes: fill background fully enclosed by foreground before splitting.
        watershed: split touching objects with a seeded watershed; if False, every
            connected component is one object.
        seeds: "distance" (h-maxima of the distance transform), "probability"
            (connected regions above `seed_threshold`) or "interior" (connected regions
            where the interior probability of a three-class network, passed as
            `interior`, exceeds `interior_threshold`; see `UNetConfig.boundary_class`).
        min_seed_prominence_px: for "distance" seeds, how far (px) a maximum of the smoothed
            distance must rise above the saddle to a higher one to seed its own object;
            larger merges more.
        distance_sigma_px: Gaussian smoothing of the distance transform before its maxima
            are taken; it removes spurious maxima of ragged outlines.
        seed_threshold: for "probability" seeds, the probability seeds must exceed.
        interior_threshold: for "interior" seeds, the interior probability seeds must exceed.
        connectivity: neighbourhood of objects: 1 = faces only (4 in 2-D, 6 in 3-D), up to
            ndim = all neighbours (8 / 26). Holes use the complementary neighbourhood.
        spacing: pixel (voxel) size per axis in the unit of the `_px` fields, for the
            distance seeds of anisotropic volumes: with (4, 1, 1) a section counts as 4
            in-plane pixels in the distance transform, its smoothing and the prominence.
            None is 1 on every axis.
    """

    threshold: float = 0.5
    min_size: int = 16
    fill_holes: bool = True
    watershed: bool = True
    seeds: str = "distance"
    min_seed_prominence_px: float = 1.5
    distance_sigma_px: float = 1.0
    seed_threshold: float = 0.9
    interior_threshold: float = 0.5
    connectivity: int = 1
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must lie in [0, 1), got {self.threshold}")
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, int):
            raise TypeError(f"min_size must be an integer, got {type(self.min_size).__name__}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")
        if self.seeds not in SEED_METHODS:
            raise ValueError(f"seeds must be one of {list(SEED_METHODS)}, got {self.seeds!r}")
        if self.min_seed_prominence_px <= 0:
            raise ValueError(
                f"min_seed_prominence_px must be > 0, got {self.min_seed_prominence_px}"
            )
        if self.distance_sigma_px < 0:
            raise ValueError(f"distance_sigma_px must be >= 0, got {self.distance_sigma_px}")
        if not 0.0 < self.seed_threshold < 1.0:
            raise ValueError(f"seed_threshold must lie in (0, 1), got {self.seed_threshold}")
        if not 0.0 < self.interior_threshold < 1.0:
            raise ValueError(
                f"interior_threshold must lie in (0, 1), got {self.interior_threshold}"
            )
        if self.seeds == "probability" and self.seed_threshold <= self.threshold:
            raise ValueError(
                f"seed_threshold must exceed threshold={self.threshold} for probability "
                f"seeds, got {self.seed_threshold}"
            )
        if self.connectivity not in (1, 2, 3):
            raise ValueError(f"connectivity must be 1, 2 or 3, got {self.connectivity}")
        object.__setattr__(self, "spacing", check_spacing(self.spacing))


def probabilities_to_labels(
    foreground: ArrayLike,
    *,
    config: PostprocessConfig | None = None,
    interior: ArrayLike | None = None,
) -> np.ndarray:
    """Turn a foreground probability map into an instance label image.

    Steps: threshold; fill holes; remove components smaller than `min_size`; split touching
    objects with a seeded watershed; number the objects 1..n.

    Args:
        foreground: (Y, X) or (Z, Y, X) float probabilities in [0, 1], e.g. the softmax
            channel of the foreground class.
        config: the options; `PostprocessConfig()` (the defaults) if None.
        interior: for ``config.seeds == "interior"`` only: the interior probabilities of
            a three-class network, of the shape of `foreground`.

    Returns:
        int32 labels of the same shape: 0 = background, objects numbered 1..n.

    Example:
        >>> foreground = np.zeros((8, 12))
        >>> foreground[1:7, 1:5] = 0.9
        >>> foreground[1:7, 7:11] = 0.8
        >>> labels = probabilities_to_labels(foreground, config=PostprocessConfig(min_size=4))
        >>> labels.dtype, int(labels.max()), np.bincount(labels.ravel()).tolist()
        (dtype('int32'), 2, [48, 24, 24])

    Raises:
        TypeError: if `foreground` is not a floating-point array.
        ValueError: if it is not 2-D or 3-D, or holds values outside [0, 1] or NaN.
    """
    config = PostprocessConfig() if config is None else config
    foreground = check_foreground(foreground, config)
    if (interior is None) != (config.seeds != "interior"):
        raise ValueError(
            "interior must be given exactly when config.seeds is 'interior', got "
            f"seeds={config.seeds!r} and interior {'given' if interior is not None else None}"
        )
    if interior is not None:
        interior = check_foreground(interior, config, name="interior")
        if interior.shape != foreground.shape:
            raise ValueError(
                f"interior must have the shape of foreground {foreground.shape}, "
                f"got {interior.shape}"
            )
    mask = foreground > config.threshold
    if config.fill_holes:
        mask = _fill_holes(mask, config.connectivity)
    components = measure.label(mask, connectivity=config.connectivity)
    components = _remove_small_objects(components, config.min_size)
    if config.watershed and components.any():
        labels = split_touching_objects(foreground, components, config, interior)
    else:
        labels = components
    return _relabel_consecutive(labels)


def instances_from_probabilities(
    probabilities: ArrayLike,
    *,
    boundary_class: bool = False,
    config: PostprocessConfig | None = None,
) -> np.ndarray:
    """Instance labels from a network's (K, *spatial) softmax output.

    The foreground is 1 - P(background). With `boundary_class` (the classes of a
    `UNetConfig(boundary_class=True)` network: background, interior, boundary) the
    default config seeds the watershed with the predicted interiors
    (``seeds="interior"``); a `config` with other seeds uses the foreground alone.
    Without it, ``seeds="interior"`` is refused: there is no interior class.

    Example:
        >>> p = np.zeros((3, 1, 7), np.float32); p[0] = 1
        >>> p[:, 0, 1:6] = [[0, 0, 0, 0, 0], [0.1, 0.8, 0.2, 0.8, 0.1], [0.9, 0.2, 0.8, 0.2, 0.9]]
        >>> instances_from_probabilities(
        ...     p, boundary_class=True, config=PostprocessConfig(seeds="interior", min_size=1)
        ... ).tolist()
        [[0, 1, 1, 1, 2, 2, 0]]
    """
    probabilities = np.asarray(probabilities)
    if probabilities.dtype.kind != "f":
        raise TypeError(
            f"probabilities must be floating-point softmax output, got dtype "
            f"{probabilities.dtype}"
        )
    if probabilities.ndim not in (3, 4) or len(probabilities) < 2:
        raise ValueError(
            f"probabilities must be (K, Y, X) or (K, Z, Y, X) with K >= 2 classes, got "
            f"shape {probabilities.shape}"
        )
    foreground = np.clip(1.0 - probabilities[0], 0.0, 1.0)
    if not boundary_class:
        if config is not None and config.seeds == "interior":
            raise ValueError(
                "seeds='interior' needs the interior class of a boundary_class network; "
                "this output has none"
            )
        return probabilities_to_labels(foreground, config=config)
    if probabilities.shape[0] != 3:
        raise ValueError(
            f"boundary_class needs (3, ...) probabilities (background, interior, boundary), "
            f"got shape {probabilities.shape}"
        )
    config = PostprocessConfig(seeds="interior") if config is None else config
    interior = probabilities[1] if config.seeds == "interior" else None
    return probabilities_to_labels(foreground, config=config, interior=interior)


def check_foreground(
    foreground: ArrayLike, config: PostprocessConfig, name: str = "foreground"
) -> np.ndarray:
    """Return `foreground` as an array after checking it is a (Y, X) or (Z, Y, X) float map
    in [0, 1] (a few ulps of rounding outside allowed) without NaN; errors name `name`."""
    array = np.asarray(foreground)
    if array.dtype.kind != "f":
        raise TypeError(
            f"{name} must be floating-point probabilities in [0, 1], got dtype "
            f"{array.dtype}; scale integer images, e.g. image / 255"
        )
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be (Y, X) or (Z, Y, X), got shape {array.shape}; "
            f"select the foreground channel of (C, ...) probabilities first"
        )
    if config.spacing is not None and len(config.spacing) != array.ndim:
        raise ValueError(
            f"spacing must have one size per axis of the {array.ndim}-D {name}, "
            f"got {list(config.spacing)}"
        )
    if config.connectivity > array.ndim:
        raise ValueError(
            f"config.connectivity must be <= {name}.ndim={array.ndim}, "
            f"got {config.connectivity}"
        )
    if np.isnan(array).any():
        raise ValueError(f"{name} must not contain NaN, got NaN values")
    # Rounding (1 - p, averaged tiles) may step a few float32 ulps outside [0, 1].
    tolerance = 1e-4
    if array.size and not (array.min() >= -tolerance and array.max() <= 1.0 + tolerance):
        raise ValueError(
            f"{name} must lie in [0, 1], got range [{array.min()}, {array.max()}]"
        )
    return array


def _fill_holes(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Fill the background regions that do not reach the image border."""
    if mask.size == 0:
        return mask
    # Digital topology: face-connected objects pair with fully connected background and
    # vice versa, so a hole is exactly what the objects' neighbourhood encloses.
    background_connectivity = mask.ndim if connectivity == 1 else 1
    structure = ndimage.generate_binary_structure(mask.ndim, background_connectivity)
    background, n_regions = ndimage.label(~mask, structure=structure)
    # Labelling and a lookup beat scipy's binary_fill_holes, an iterated dilation.
    is_hole = np.ones(n_regions + 1, dtype=bool)
    is_hole[0] = False
    for axis in range(mask.ndim):
        is_hole[np.take(background, [0, -1], axis=axis)] = False
    return mask | is_hole[background]


def _remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel(), minlength=1)
    is_small = sizes < min_size
    is_small[0] = False
    if not is_small.any():
        return labels
    return np.where(is_small[labels], 0, labels)


def _relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    is_present = np.bincount(labels.ravel(), minlength=1) > 0
    is_present[0] = True
    lookup = (np.cumsum(is_present) - 1).astype(np.int32)
    return lookup[labels]
