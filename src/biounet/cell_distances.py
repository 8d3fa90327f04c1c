"""d1 and d2 of Ronneberger et al. 2015, eq. 2: each pixel's distances to its nearest two cells.

Exact wherever d1 + d2 is within a cut-off distance, at the cost of one distance
transform per cell in a box around it; `biounet.weights` builds the border term on them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# Touching cells are separated by gaps of a few pixels, where d2 <= gap width; a
# first pass with this small radius resolves them without the full cut-off radius.
_FIRST_PASS_RADIUS_PX = 4.0


def two_nearest_distances(
    labels: np.ndarray, cutoff: float, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Return (d1, d2), exact at background pixels with d1 + d2 <= cutoff.

    Elsewhere the values are >= the exact ones, so the border term there stays below
    its value at the cut-off. Each cell's distance is computed only in its bounding box
    dilated by a radius r, which is exact for every pixel with d_i <= r (see _dilate).
    A first pass with a small r finds d1 and d2 wherever the second cell is within r;
    only the remaining background pixels that may still lie within the cut-off are
    redone with r = cutoff, so touching cells cost little. The pixels with fewer than
    two cells within reach keep d2 = inf.
    """
    labels, cells = _cell_boxes(labels)
    if len(cells) < 2:
        return np.full(labels.shape, np.inf), np.full(labels.shape, np.inf)
    radius = min(cutoff, _FIRST_PASS_RADIUS_PX * max(spacing))
    crops = [(cell, _dilate(box, radius, spacing, labels.shape)) for cell, box in cells]
    nearest, second = _accumulate_two_smallest(labels, crops, spacing)

    # With every d_i <= radius exact: d2 <= radius is exact, and otherwise
    # d1 + d2 > min(d1, radius) + radius, which may still be within the cut-off.
    unresolved = (labels == 0) & (second > radius) & (np.minimum(nearest, radius) + radius < cutoff)
    if not unresolved.any():
        return nearest, second
    crops = [(cell, _dilate(box, cutoff, spacing, labels.shape)) for cell, box in cells]
    # a cell is farther than the cut-off from every unresolved pixel outside its crop
    crops = [(cell, crop) for cell, crop in crops if unresolved[crop].any()]
    redone_nearest, redone_second = _accumulate_two_smallest(labels, crops, spacing)
    nearest[unresolved] = redone_nearest[unresolved]
    second[unresolved] = redone_second[unresolved]
    return nearest, second


def _accumulate_two_smallest(
    labels: np.ndarray, crops: list[tuple[int, tuple[slice, ...]]], spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    # float32 halves the memory of large volumes; its rounding moves the term by < 1e-6 * w0
    nearest = np.full(labels.shape, np.inf, dtype=np.float32)
    second = np.full(labels.shape, np.inf, dtype=np.float32)
    for cell, crop in crops:
        # Exact in the whole crop, because every crop contains all pixels of its cell.
        distance = ndimage.distance_transform_edt(labels[crop] != cell, sampling=spacing)
        nearest_view, second_view = nearest[crop], second[crop]
        # a new smallest distance pushes the old smallest into second place
        np.minimum(second_view, np.maximum(nearest_view, distance), out=second_view)
        np.minimum(nearest_view, distance, out=nearest_view)
    return nearest, second


def _cell_boxes(labels: np.ndarray) -> tuple[np.ndarray, list[tuple[int, tuple[slice, ...]]]]:
    """Return labels with ids find_objects can index, and (id, bounding box) per cell."""
    if labels.max() > labels.size:  # sparse ids: find_objects would list every id up to max
        ids, inverse = np.unique(labels, return_inverse=True)
        labels = (inverse.reshape(labels.shape) + (ids[0] != 0)).astype(np.intp)
    boxes = ndimage.find_objects(labels)
    return labels, [(cell, box) for cell, box in enumerate(boxes, start=1) if box is not None]


def _dilate(
    box: tuple[slice, ...], radius: float, spacing: tuple[float, ...], shape: tuple[int, ...]
) -> tuple[slice, ...]:
    """Grow `box` so it holds every pixel within `radius` of it, cropped to `shape`.

    A pixel outside the grown box differs from every pixel of the box by more than
    ceil(radius / step) pixels along some axis, so its distance to the cell exceeds
    `radius`: every pixel with d_i <= radius is inside. Cropping to the image removes
    no pixel of the cell, so the distances computed in the crop are exact.
    """
    grown = []
    for axis, step, size in zip(box, spacing, shape, strict=True):
        margin = math.ceil(radius / step)
        grown.append(slice(max(axis.start - margin, 0), min(axis.stop + margin, size)))
    return tuple(grown)
