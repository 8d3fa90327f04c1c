"""Pixel-wise loss weights: class balance plus border term, eq. 2 of Ronneberger et al. 2015.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

The paper leaves some details open; this module fixes them as follows.

* Cells are the instances of an integer label image, 0 = background. An instance
  need not be connected; all pixels with the same id form one cell.
* ``d_i(x)`` is the Euclidean distance from the centre of pixel ``x`` to the nearest
  pixel centre of cell ``i`` (0 inside cell ``i``), in units of ``spacing`` (pixels by
  default). ``d1(x) <= d2(x)`` are the two smallest ``d_i(x)`` over all cells: the
  distances to the nearest and the second-nearest cell.
* The border term is applied to background pixels only: the paper's "separation
  border ... between touching cells" is the background gap drawn between them. Cell
  pixels get ``w_c`` alone, as does every pixel of an image with fewer than two cells
  (``d2`` is infinite there).
* ``w_c`` weighs the two classes background (0) and foreground (any cell).

The border term is set to 0 where d1 + d2 exceeds the cut-off distance at which it
falls to ``_NEGLIGIBLE_BORDER_WEIGHT`` (1e-6; the cut-off is sigma * sqrt(2 ln(w0 / 1e-6)),
28.4 px for the paper's w0 = 10, sigma = 5), so the result equals the exact definition
to within 1e-6 plus float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real

import numpy as np
from scipy import ndimage

_NEGLIGIBLE_BORDER_WEIGHT = 1e-6
# Touching cells are separated by gaps of a few pixels, where d2 <= gap width; a
# first pass with this small radius resolves them without the full cut-off radius.
_FIRST_PASS_RADIUS_PX = 4.0

ClassWeights = str | Mapping[int, float] | Sequence[float] | None


def weight_map(
    labels: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: ClassWeights = "balanced",
    spacing: float | Sequence[float] = 1.0,
) -> np.ndarray:
    """Return the weight map w = w_c + border term of Ronneberger et al. 2015, eq. 2.

    The border term lies on background pixels only; the module docstring defines d1,
    d2 and the cut-off exactly.

    Args:
        labels: (Y, X) or (Z, Y, X) integer instance ids, 0 = background.
        w0: height of the border term (paper: 10).
        sigma: width of the border term in units of `spacing` (paper: 5 px).
        class_weights: see `class_weight_map`.
        spacing: pixel size along each axis (one number or one per axis); distances
            and `sigma` are measured in this unit.

    Returns:
        float32 array of the shape of `labels`.

    Example:
        >>> print(np.round(weight_map(np.array([[1, 0, 2]])), 3))
        [[ 0.75  10.731  0.75 ]]

    Raises:
        TypeError: if `labels` is not an integer array or a parameter has the wrong type.
        ValueError: for a bad shape, negative ids or an out-of-range parameter.
    """
    labels = _check_labels(labels)
    w0, sigma = _check_border_parameters(w0, sigma)
    spacing = _check_spacing(spacing, labels.ndim)
    weights = _class_weight_map(labels, _check_class_weights(class_weights))
    weights += _border_weight_map(labels, w0, sigma, spacing)
    return weights


def class_weight_map(labels: np.ndarray, *, class_weights: ClassWeights = "balanced") -> np.ndarray:
    """Return w_c of Ronneberger et al. 2015, eq. 2: one weight per class, background or cell.

    Args:
        labels: (Y, X) or (Z, Y, X) integer instance ids, 0 = background.
        class_weights: ``"balanced"``: the weight of a class is ``n / (k * n_class)``
            with ``n`` pixels, ``k`` classes present and ``n_class`` pixels of that
            class, so the map averages to 1 and an image holding one class only is
            all ones. ``None``: all ones. A pair ``(background, foreground)`` or a
            mapping ``{0: background, 1: foreground}`` of non-negative weights.

    Returns:
        float32 array of the shape of `labels`.

    Example:
        >>> class_weight_map(np.array([[0, 0, 0, 0, 1], [0, 0, 0, 0, 2]]))
        array([[0.625, 0.625, 0.625, 0.625, 2.5  ],
               [0.625, 0.625, 0.625, 0.625, 2.5  ]], dtype=float32)

    Raises:
        TypeError: if `labels` is not an integer array or `class_weights` has the wrong type.
        ValueError: for a bad shape, negative ids or bad `class_weights` values.
    """
    labels = _check_labels(labels)
    return _class_weight_map(labels, _check_class_weights(class_weights))


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
    labels = _check_labels(labels)
    faces = ndimage.generate_binary_structure(labels.ndim, 1)
    highest = ndimage.maximum_filter(labels, footprint=faces, mode="nearest")
    lowest = ndimage.minimum_filter(labels, footprint=faces, mode="nearest")
    is_cell = labels > 0
    classes = is_cell.astype(np.int64)
    classes[is_cell & ((highest != labels) | (lowest != labels))] = 2
    return classes


def balanced_class_map(classes: np.ndarray) -> np.ndarray:
    """Return the weight n / (k * n_c) of each pixel's class c (k classes present, n pixels).

    `class_weight_map`'s "balanced" for any number of classes: the map averages to 1.

    Example:
        >>> balanced_class_map(np.array([0, 0, 1, 2]))
        array([0.6666667, 0.6666667, 1.3333334, 1.3333334], dtype=float32)
    """
    classes = np.asarray(classes)
    if classes.dtype.kind not in "iu" or (classes.size and classes.min() < 0):
        raise ValueError("classes must be non-negative integers")
    counts = np.bincount(classes.ravel())
    n_present = int(np.count_nonzero(counts))
    # an absent class gets weight 0, which no pixel uses: avoids dividing by 0
    weights = np.zeros(counts.shape, dtype=np.float64)
    weights[counts > 0] = classes.size / (n_present * counts[counts > 0])
    return weights[classes].astype(np.float32)


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


def border_weight_map(
    labels: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    spacing: float | Sequence[float] = 1.0,
) -> np.ndarray:
    """Return the border term w0 * exp(-(d1 + d2)**2 / (2 sigma**2)) of eq. 2 on background.

    See the module docstring for the definitions of d1, d2 and of the pixels that get
    the term (Ronneberger et al. 2015, Sec. 3).

    Args:
        labels: (Y, X) or (Z, Y, X) integer instance ids, 0 = background.
        w0: height of the border term (paper: 10).
        sigma: width of the border term in units of `spacing` (paper: 5 px).
        spacing: pixel size along each axis (one number or one per axis).

    Returns:
        float32 array of the shape of `labels`, 0 on cells.

    Example:
        >>> border = border_weight_map(np.array([[1, 0, 2]]))  # d1 = d2 = 1 in the gap
        >>> round(float(border[0, 1]), 4), float(border[0, 0])
        (9.2312, 0.0)

    Raises:
        TypeError: if `labels` is not an integer array or a parameter is not a number.
        ValueError: for a bad shape, negative ids, w0 < 0, sigma <= 0 or bad `spacing`.
    """
    labels = _check_labels(labels)
    w0, sigma = _check_border_parameters(w0, sigma)
    spacing = _check_spacing(spacing, labels.ndim)
    return _border_weight_map(labels, w0, sigma, spacing)


def _class_weight_map(
    labels: np.ndarray, class_weights: tuple[float, float] | str | None
) -> np.ndarray:
    if class_weights is None:
        return np.ones(labels.shape, dtype=np.float32)
    is_foreground = labels != 0
    if class_weights == "balanced":
        return balanced_class_map(is_foreground.astype(np.int64))
    background_weight, foreground_weight = class_weights
    return np.where(is_foreground, foreground_weight, background_weight).astype(np.float32)


def _border_weight_map(
    labels: np.ndarray, w0: float, sigma: float, spacing: tuple[float, ...]
) -> np.ndarray:
    border = np.zeros(labels.shape, dtype=np.float32)
    cutoff = _cutoff_distance(w0, sigma)
    if cutoff == 0.0:
        return border
    nearest, second = _two_nearest_distances(labels, cutoff, spacing)
    background = labels == 0
    total = nearest[background].astype(np.float64) + second[background]
    term = w0 * np.exp(-(total**2) / (2.0 * sigma**2))
    # beyond the cut-off the distances are not exact; a clean 0 keeps far pixels unweighted
    border[background] = np.where(total <= cutoff, term, 0.0)
    return border


def _cutoff_distance(w0: float, sigma: float) -> float:
    """Return D beyond which w0 * exp(-D**2 / (2 sigma**2)) < _NEGLIGIBLE_BORDER_WEIGHT."""
    if w0 <= _NEGLIGIBLE_BORDER_WEIGHT:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / _NEGLIGIBLE_BORDER_WEIGHT))


def _two_nearest_distances(
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


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"labels must be an integer array of instance ids, got dtype {labels.dtype}"
        )
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2-D (Y, X) or 3-D (Z, Y, X), got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError(f"labels must not be empty, got shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ValueError(
            f"labels must be non-negative (0 = background), got minimum {labels.min()}"
        )
    return labels


def _check_border_parameters(w0: float, sigma: float) -> tuple[float, float]:
    for name, value in (("w0", w0), ("sigma", sigma)):
        if not isinstance(value, Real) or isinstance(value, bool):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(w0) and w0 >= 0):
        raise ValueError(f"w0 must be a finite number >= 0, got {w0}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    return float(w0), float(sigma)


def _check_spacing(spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    try:
        values = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,))
    except (TypeError, ValueError):
        raise ValueError(
            f"spacing must be a positive number or {ndim} positive numbers (one per axis), "
            f"got {spacing!r}"
        ) from None
    if not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"spacing must be finite and > 0 on every axis, got {spacing!r}")
    return tuple(float(value) for value in values)


def _check_class_weights(class_weights: ClassWeights) -> tuple[float, float] | str | None:
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f"class_weights must be 'balanced', None or (background, foreground) "
                f"weights, got {class_weights!r}"
            )
        return class_weights
    if isinstance(class_weights, Mapping):
        if set(class_weights) != {0, 1}:
            raise ValueError(
                f"class_weights mapping must have keys 0 (background) and 1 (foreground), "
                f"got keys {sorted(class_weights, key=str)}"
            )
        class_weights = (class_weights[0], class_weights[1])
    try:
        values = np.asarray(class_weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"class_weights must be 'balanced', None, a pair or a mapping of numbers, "
            f"got {class_weights!r}"
        ) from None
    if values.shape != (2,):
        raise ValueError(
            f"class_weights must hold 2 weights (background, foreground), got {class_weights!r}"
        )
    if not np.all(np.isfinite(values) & (values >= 0)):
        raise ValueError(f"class_weights must be finite and >= 0, got {class_weights!r}")
    return float(values[0]), float(values[1])
