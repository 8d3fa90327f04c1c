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

from biounet.cell_distances import two_nearest_distances

_NEGLIGIBLE_BORDER_WEIGHT = 1e-6

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
    labels = check_labels(labels)
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
    labels = check_labels(labels)
    return _class_weight_map(labels, _check_class_weights(class_weights))


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
    labels = check_labels(labels)
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
    nearest, second = two_nearest_distances(labels, cutoff, spacing)
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


def check_labels(labels: np.ndarray) -> np.ndarray:
    """Return `labels` as an array after checking it is a 2-D or 3-D map of ids >= 0."""
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
