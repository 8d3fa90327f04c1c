"""Training targets from instance labels: the separation border and the three-class target.

`touching_borders` gives the background border between touching cells of Ronneberger et
al. 2015, Fig. 3c; `boundary_classes` the background / interior / boundary target of a
`UNetConfig(boundary_class=True)` network.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from biounet.weights import check_labels


def boundary_classes(labels: np.ndarray) -> np.ndarray:
    """Return the three-class target of instance labels: 0 background, 1 interior, 2 boundary.

    A boundary pixel is a cell pixel with a face neighbour (4 in 2-D, 6 in 3-D) of another
    value, background or a different cell; the image edge is no boundary, since the cell
    may go on beyond it. Two touching cells so get two boundary pixels between their
    interiors, which is what lets interior seeds split them (`UNetConfig.boundary_class`).

    Example:
        >>> boundary_classes(np.array([[1, 1, 1, 2, 2, 0]]))
        array([[1, 1, 2, 2, 2, 0]])

    Raises:
        TypeError: if `labels` is not an integer array.
        ValueError: for a bad shape or negative ids.
    """
    labels = check_labels(labels)
    faces = ndimage.generate_binary_structure(labels.ndim, 1)
    highest = ndimage.maximum_filter(labels, footprint=faces, mode="nearest")
    lowest = ndimage.minimum_filter(labels, footprint=faces, mode="nearest")
    is_cell = labels > 0
    classes = is_cell.astype(np.int64)
    classes[is_cell & ((highest != labels) | (lowest != labels))] = 2
    return classes


def touching_borders(labels: np.ndarray, *, connectivity: int = 1) -> np.ndarray:
    """Return the cell pixels that touch a different cell: the separation border.

    Ronneberger et al. 2015, Sec. 3 and Fig. 3c: touching cells of one class are
    separated by a background border, on which the border term of eq. 2 then lies.
    Instance masks of touching cells (Cell Tracking Challenge, DSB 2018) have no such
    gap, so the pixels on both sides of every contact are returned, a 2-px border.
    Pixels next to background only are not, so isolated cells keep their outline.

    Args:
        labels: (*spatial) integer instance ids, 0 = background.
        connectivity: neighbourhood of a contact, 1 = faces only (4 in 2-D, 6 in 3-D).

    Returns:
        (*spatial) bool mask.

    Example:
        >>> touching_borders(np.array([[1, 1, 2, 2, 0, 3]])).astype(int).tolist()
        [[0, 1, 1, 0, 0, 0]]
    """
    labels = np.asarray(labels).astype(np.int64, copy=False)
    footprint = ndimage.generate_binary_structure(labels.ndim, connectivity)
    highest = ndimage.maximum_filter(labels, footprint=footprint, mode="nearest")
    beyond = np.iinfo(np.int64).max  # background must never be the lowest neighbour
    lowest = ndimage.minimum_filter(
        np.where(labels > 0, labels, beyond), footprint=footprint, mode="nearest"
    )
    return (labels > 0) & ((highest != labels) | (lowest != labels))
