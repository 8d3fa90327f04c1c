"""Intensity normalisation of image arrays: float conversion, percentile and z-score scaling.

Typical use on an image as read from disk (no file access here, layer 0)::

    image = to_float_image(raw, channels="grey")      # (Y, X) float32, values unchanged
    image = normalize_percentile(image)               # 1st -> 0, 99.8th percentile -> 1

With ``polarity="bright_objects"`` an image (channel) whose background is brighter than
its objects, as in brightfield or H&E images of nuclei, is normalised as its negative
would be, so that objects are bright in every image a network sees; see
`bright_background` for the rule.

All functions return new float32 arrays and never modify their input. A statistic of
zero spread (a constant image, or one where the low and high percentiles coincide)
is replaced by 1, so the result is ``image - offset`` there (``offset - image`` for an
image normalised as its negative): all zeros for a constant image, never a division by
zero or a blow-up by ``1 / eps``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CHANNEL_MODES = ("grey", "rgb")
POLARITIES = ("as_is", "bright_objects")
# percentiles of the polarity rule: median against the midpoint of these two
POLARITY_PERCENTILES = (1.0, 50.0, 99.8)
# ITU-R BT.601 luma weights, the ones Pillow's convert("L") uses.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_MAX_SAMPLES = 4  # a last axis of 1-4 samples is read as colour (Y, X, S)

Axis = int | Sequence[int] | None


def to_float_image(image: np.ndarray, *, channels: str = "grey") -> np.ndarray:
    """Return `image` as float32 with colour samples resolved, intensities unchanged.

    Input may be grey (Y, X), or have 1-4 colour samples last as PNG and TIFF
    readers give them: (Y, X, 1), grey + alpha (Y, X, 2), RGB (Y, X, 3) or RGBA
    (Y, X, 4). Alpha is dropped. Volumes work the same way ((Z, Y, X) grey,
    (Z, Y, X, S) colour); any other array of two or more axes counts as grey.
    Values keep their scale (uint8 stays 0-255, uint16 0-65535, bool becomes 0/1),
    since a normaliser such as `normalize_percentile` follows; integers above
    2**24 lose precision in float32.

    Args:
        image: (Y, X) or (Y, X, S) array of bool, integer or float dtype.
        channels: ``"grey"`` returns (Y, X): colour becomes BT.601 luma
            0.299 R + 0.587 G + 0.114 B, except that an image with R = G = B (grey
            stored as RGB) returns its first channel exactly. ``"rgb"`` returns
            (3, Y, X) channels first; grey input is repeated into all three.

    Returns:
        float32 array (Y, X) for ``"grey"`` or (3, Y, X) for ``"rgb"``.

    Raises:
        TypeError: if `image` is not of bool, integer or float dtype.
        ValueError: if `channels` is unknown or `image` has fewer than 2 axes.

    Example:
        >>> rgba = np.zeros((2, 2, 4), dtype=np.uint8)
        >>> rgba[..., 0] = 255  # pure red, opaque
        >>> rgba[..., 3] = 255
        >>> round(to_float_image(rgba)[0, 0].item(), 3)
        76.245
        >>> to_float_image(rgba, channels="rgb").shape
        (3, 2, 2)
        >>> to_float_image(np.array([[0, 65535]], dtype=np.uint16))
        array([[    0., 65535.]], dtype=float32)
    """
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be one of {CHANNEL_MODES}, got {channels!r}")
    image = np.asarray(image)
    _check_real_dtype(image)
    if image.ndim < 2:
        raise ValueError(f"image must have at least 2 axes (Y, X), got shape {image.shape}")
    has_samples = image.ndim >= 3 and image.shape[-1] <= _MAX_SAMPLES
    if not has_samples:
        grey = image.astype(np.float32)
        return grey if channels == "grey" else np.stack([grey] * 3)
    n_samples = image.shape[-1]
    if n_samples <= 2:  # grey, or grey + alpha
        return to_float_image(image[..., 0], channels=channels)
    if channels == "rgb":
        return np.moveaxis(image[..., :3], -1, 0).astype(np.float32)
    red, green, blue = (image[..., channel] for channel in range(3))
    if np.array_equal(red, green) and np.array_equal(red, blue):
        return red.astype(np.float32)
    grey = np.multiply(red, _LUMA_WEIGHTS[0], dtype=np.float32)
    grey += np.multiply(green, _LUMA_WEIGHTS[1], dtype=np.float32)
    grey += np.multiply(blue, _LUMA_WEIGHTS[2], dtype=np.float32)
    return grey


def normalize_percentile(
    image: np.ndarray,
    *,
    low: float = 1.0,
    high: float = 99.8,
    axis: Axis = None,
    eps: float = 1e-20,
    clip: bool = False,
    polarity: str = "as_is",
) -> np.ndarray:
    """Map the `low` and `high` percentiles of `image` (of -image, see `polarity`) to 0 and 1.

    Computes ``(image - p_low) / (p_high - p_low + eps)``, the normalisation of
    CSBDeep and StarDist (defaults 1 and 99.8; percentiles by
    linear interpolation as `np.percentile`). Without `clip`, values outside the
    two percentiles fall below 0 or above 1; that is intended, the network sees
    the outliers. Where ``p_high == p_low`` the divisor is 1 instead, so a
    constant image becomes all zeros. Arithmetic runs in float64 for float64 and
    wider-than-16-bit integer input, so a large common offset cancels exactly.

    Args:
        image: array of bool, integer or float dtype, any shape; finite values.
        low: lower percentile in [0, 100).
        high: upper percentile in (low, 100].
        axis: axes the percentiles are taken over; None takes one pair over the
            whole array. For a channels-first (C, Y, X) image, ``axis=(-2, -1)``
            normalises each channel on its own.
        eps: added to the divisor, as in CSBDeep; must be >= 0.
        clip: clip the result to [0, 1].
        polarity: "as_is", or "bright_objects": where `bright_background` holds (per
            `axis` group, as the percentiles) the image is normalised as its negative
            would be, ``(p_{100-low} - image) / (p_{100-low} - p_{100-high})``, so that
            objects come out bright as in a dark-background image.

    Returns:
        float32 array of the shape of `image`.

    Raises:
        TypeError: if `image` is not of bool, integer or float dtype.
        ValueError: if `image` is empty or not finite, the percentiles are out of
            order or range, `eps` is negative, `axis` is out of range, or `polarity`
            is unknown.

    Example:
        >>> image = np.arange(101, dtype=np.uint8)
        >>> normalize_percentile(image, low=10, high=90)[[10, 50, 90, 100]]
        array([0.   , 0.5  , 1.   , 1.125], dtype=float32)
        >>> normalize_percentile(np.full((2, 2), 7)).max().item()
        0.0
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    _check_polarity(polarity)
    values = _float_copy(image)
    axes = _normalize_axes(axis, values.ndim)
    if polarity == "as_is":
        bottom, top = np.percentile(values, [low, high], axis=axes, keepdims=True)
        result = _scale(values, bottom, top - bottom, eps=eps)
    else:
        # one selection for all: the percentiles of -image are the negated mirrored ones
        # of image, and the rule's three come last
        bottom, top, mirror_bottom, mirror_top, *rule = np.percentile(
            values,
            [low, high, 100 - high, 100 - low, *POLARITY_PERCENTILES],
            axis=axes,
            keepdims=True,
        )
        flip = polarity_rule(*rule)
        offset = np.where(flip, mirror_top, bottom)
        spread = np.where(flip, mirror_top - mirror_bottom, top - bottom)
        result = _scale(values, offset, spread, eps=eps, flip=flip)
    return np.clip(result, 0.0, 1.0, out=result) if clip else result


def normalize_zscore(
    image: np.ndarray, *, axis: Axis = None, eps: float = 1e-20, polarity: str = "as_is"
) -> np.ndarray:
    """Return ``(image - mean) / (std + eps)`` in float32: zero mean, unit variance.

    Mean and (population) standard deviation are accumulated in float64. Where the
    standard deviation is zero the divisor is 1 instead, so a constant image
    becomes all zeros.

    Args:
        image: array of bool, integer or float dtype, any shape; finite values.
        axis: axes the statistics are taken over; None uses the whole array, and
            ``axis=(-2, -1)`` normalises each channel of a (C, Y, X) image.
        eps: added to the divisor; must be >= 0.
        polarity: "as_is", or "bright_objects": where `bright_background` holds (per
            `axis` group) ``(mean - image) / (std + eps)``, the z-score of -image.

    Returns:
        float32 array of the shape of `image`.

    Raises:
        TypeError: if `image` is not of bool, integer or float dtype.
        ValueError: if `image` is empty or not finite, `eps` is negative, `axis` is
            out of range, or `polarity` is unknown.

    Example:
        >>> normalize_zscore(np.array([1, 3], dtype=np.uint8))
        array([-1.,  1.], dtype=float32)
    """
    _check_polarity(polarity)
    values = _float_copy(image)
    axes = _normalize_axes(axis, values.ndim)
    mean = values.mean(axis=axes, dtype=np.float64, keepdims=True)
    std = values.std(axis=axes, dtype=np.float64, keepdims=True)
    return _scale(values, mean, std, eps=eps, flip=_flips(values, axes, polarity))


def bright_background(image: np.ndarray, *, axis: Axis = None) -> np.ndarray:
    """Tell whether `image` has a brighter background than objects, from intensities alone.

    True where the median lies above the midpoint of the 1st and 99.8th percentiles
    (`POLARITY_PERCENTILES`, whatever percentiles a normaliser scales by; one decision
    per channel with `axis`, so an RGB image may turn some channels and not others, while
    a grey network sees its luma). Microscopy objects such as nuclei
    cover less than half of an image, so the median is a background value: close to the
    dark end for fluorescence, close to the bright end for brightfield and H&E. On the
    166 DSB 2018 images, as grey (BT.601 luma), it agrees with their annotations (the
    nuclei darker on average than the background) on every one.

    Args:
        image: array of bool, integer or float dtype; finite values.
        axis: axes the statistics are taken over, as for `normalize_percentile`; None
            judges the whole array at once.

    Returns:
        bool array with the reduced axes kept as size 1 (0-d for ``axis=None``).

    Example:
        >>> fluorescence = np.zeros((8, 8)); fluorescence[2:4, 2:4] = 100
        >>> bool(bright_background(fluorescence)), bool(bright_background(100 - fluorescence))
        (False, True)
    """
    values = _float_copy(image)
    flips = _flips(values, _normalize_axes(axis, values.ndim), "bright_objects")
    return flips if axis is not None else flips.reshape(())


def _flips(values: np.ndarray, axes: tuple[int, ...] | None, polarity: str) -> np.ndarray | None:
    """Where (per `axes` group, reduced axes kept) "bright_objects" inverts; None for as_is."""
    if polarity == "as_is":
        return None
    return polarity_rule(*np.percentile(values, POLARITY_PERCENTILES, axis=axes, keepdims=True))


def polarity_rule(low, median, high):
    """`bright_background` from the image's `POLARITY_PERCENTILES`: median > mid-range.

    Compared in float64, on arrays or on numbers (the out-of-core statistics), so that
    both paths decide alike on the same figures.
    """
    return np.asarray(median, np.float64) > (np.asarray(low, np.float64) + high) / 2


def _check_polarity(polarity: str) -> None:
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {list(POLARITIES)}, got {polarity!r}")


def check_polarity(polarity: str, normalization, *, source: str = "polarity") -> None:
    """Refuse an unknown `polarity`, or "bright_objects" without a normalisation.

    `normalization` is what the image is normalised with ("percentile", "zscore", or
    None / "none" / a function for none of them); `source` names where the polarity
    came from in the message.
    """
    _check_polarity(polarity)
    if polarity != "as_is" and normalization not in ("percentile", "zscore"):
        raise ValueError(
            f"{source} {polarity!r} normalises bright-background images as their negatives: "
            f"it needs normalization 'percentile' or 'zscore', got {normalization!r}"
        )


def _scale(
    values: np.ndarray,
    offset: np.ndarray,
    spread: np.ndarray,
    *,
    eps: float,
    flip: np.ndarray | None = None,
) -> np.ndarray:
    """Return ``(values - offset) / (spread + eps)`` as float32, with 1 where spread is 0.

    Where `flip` is True the factor is negated, so the image comes out inverted.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    divisor = np.where(spread > 0, spread + eps, 1.0)
    factor = 1.0 / divisor
    if flip is not None:
        factor = np.where(flip, -factor, factor)
    values -= offset.astype(values.dtype)
    values *= factor.astype(values.dtype)
    return values.astype(np.float32, copy=False)


def working_dtype(dtype: np.dtype) -> type:
    """The float type normalisation computes in: float64 where float32 would round the input.

    A large offset (1e4 + 1e-3 * x) must be subtracted before rounding to float32, so
    64-bit floats and integers wider than 16 bits are scaled in float64.
    """
    dtype = np.dtype(dtype)
    return np.float64 if dtype.itemsize > (4 if dtype.kind == "f" else 2) else np.float32


def _float_copy(image: np.ndarray) -> np.ndarray:
    """Return a float copy of `image` in its `working_dtype`."""
    image = np.asarray(image)
    _check_real_dtype(image)
    if image.size == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    values = image.astype(working_dtype(image.dtype))  # a copy, scaled in place
    if not np.isfinite(values).all():
        raise ValueError(f"image of shape {image.shape} contains NaN or infinite values")
    return values


def _check_real_dtype(image: np.ndarray) -> None:
    if image.dtype.kind not in "biuf":
        raise TypeError(f"image must have a bool, integer or float dtype, got {image.dtype}")


def _normalize_axes(axis: Axis, ndim: int) -> tuple[int, ...] | None:
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    for value in axes:
        if not -ndim <= value < ndim:
            raise ValueError(f"axis {axis} is out of range for an image of {ndim} axes")
    normalized = tuple(sorted({int(value) % ndim for value in axes}))
    if len(normalized) != len(axes):
        raise ValueError(f"axis {axis} repeats an axis")
    return normalized
