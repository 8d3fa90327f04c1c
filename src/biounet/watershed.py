"""The seeded watershed of `biounet.postprocess`: split touching objects of a thresholded map.

Seeds come from the smoothed distance to the background (h-maxima), from the foreground
probability or from a three-class network's interiors, as `PostprocessConfig.seeds`
says; the module docstring of `biounet.postprocess` says when each suits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from skimage import measure, morphology, segmentation

if TYPE_CHECKING:
    from biounet.postprocess import PostprocessConfig


def split_touching_objects(
    foreground: np.ndarray,
    components: np.ndarray,
    config: PostprocessConfig,
    interior: np.ndarray | None = None,
) -> np.ndarray:
    """Return `components` (labelled objects of the thresholded map) split by seeded watershed.

    Basins smaller than `config.min_size` are flooded by their neighbours; a component
    without a seed stays one object. Ids are not consecutive (`postprocess` renumbers).
    """
    mask = components > 0
    # All neighbours for seeds, so a maximum plateau touching diagonally stays one seed;
    # interiors of touching cells may meet at a corner, so those keep the objects' own.
    seed_connectivity = mask.ndim
    if config.seeds == "distance":
        distance, is_seed = distance_seeds(components, config)
        landscape = -distance
    elif config.seeds == "interior":
        landscape = -interior
        is_seed = interior > config.interior_threshold
        seed_connectivity = config.connectivity
    else:
        landscape = -foreground
        is_seed = foreground > config.seed_threshold
    markers = measure.label(is_seed & mask, connectivity=seed_connectivity)
    labels = segmentation.watershed(
        landscape, markers, mask=mask, connectivity=config.connectivity
    )
    basin_sizes = np.bincount(labels.ravel(), minlength=markers.max() + 1)
    is_small_basin = basin_sizes < config.min_size
    is_small_basin[0] = False
    if is_small_basin.any():
        # Flooding again without their seeds lets the neighbours absorb small basins;
        # basins only grow, so one pass leaves none too small except lone components.
        markers = np.where(is_small_basin[markers], 0, markers)
        labels = segmentation.watershed(
            landscape, markers, mask=mask, connectivity=config.connectivity
        )
    # A component without any seed (e.g. thinner than the prominence) stays one object.
    is_unseeded = mask & (labels == 0)
    return np.where(is_unseeded, components + labels.max(), labels)


def distance_seeds(
    components: np.ndarray, config: PostprocessConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Return the smoothed distance to the background and its h-maxima, object by object."""
    # One component at a time, in its bounding box framed by one background pixel: this
    # skips the background (h-maxima sorts every pixel it gets) and keeps neighbouring
    # components, even diagonal ones, out of each other's distances and maxima.
    distance = np.zeros(components.shape)
    is_seed = np.zeros(components.shape, dtype=bool)
    spacing = config.spacing or (1.0,) * components.ndim
    for label, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        is_object = np.pad(components[box] == label, 1)
        local = ndimage.distance_transform_edt(is_object, sampling=spacing)
        if config.distance_sigma_px > 0:
            sigma = [config.distance_sigma_px / size for size in spacing]
            local = ndimage.gaussian_filter(local, sigma, mode="constant")
        maxima = morphology.h_maxima(local, config.min_seed_prominence_px).astype(bool)
        inside = (slice(1, -1),) * local.ndim
        is_inside_object = is_object[inside]
        distance[box][is_inside_object] = local[inside][is_inside_object]
        is_seed[box] |= maxima[inside] & is_inside_object
    return distance, is_seed
