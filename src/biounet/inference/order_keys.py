"""Sortable integer keys of numeric values, and `np.percentile`'s interpolation.

The radix selection of `biounet.inference.blockwise_normalization` finds order
statistics of an out-of-core image on these keys: `order_keys` maps every value to an
unsigned integer of its width that sorts as the value does (IEEE bits for floats),
`key_value` maps a key back, and `lerp` interpolates between neighbouring order
statistics exactly as `np.percentile` does.
"""

from __future__ import annotations

import math

import numpy as np


def key_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.uint8) if dtype.kind == "b" else np.dtype(f"u{dtype.itemsize}")


def order_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned integers of the same width that sort as `values` do.

    Example:
        >>> values = np.array([-2.5, -0.0, 0.0, 1e-30, 3.0], dtype=np.float32)
        >>> bool(np.all(np.diff(order_keys(values).astype(np.int64)) > 0))
        True
    """
    key = key_dtype(values.dtype)
    bits = np.ascontiguousarray(values).view(key)
    if values.dtype.kind in "bu":
        return bits
    sign = key.type(1 << (8 * key.itemsize - 1))
    if values.dtype.kind == "i":
        return bits ^ sign
    # IEEE floats: negative values sort in reverse, so all their bits flip
    return np.where(bits & sign, ~bits, bits | sign)


def key_value(key: int, dtype: np.dtype) -> np.ndarray:
    """The value of `dtype` whose `order_keys` key is `key` (a 0-d array)."""
    kind = key_dtype(dtype)
    bits = np.array(key, dtype=kind)
    if dtype.kind == "b":
        return bits.astype(bool)
    if dtype.kind == "u":
        return bits
    sign = kind.type(1 << (8 * kind.itemsize - 1))
    if dtype.kind == "i":
        return (bits ^ sign).view(dtype)
    return (bits ^ sign if bits & sign else ~bits).view(dtype)


def lerp(lower: float, upper: float, position: float, dtype: type) -> float:
    """np.percentile's interpolation between neighbouring order statistics of `dtype`.

    As numpy's `lerp`: the difference is taken in the array's dtype (float32 rounds it),
    the rest in float64, from the lower value below the midpoint and the upper one above.

    Example:
        >>> values = np.array([34.558418, 821.61816, 0.00033043706], np.float32)
        >>> low, high = (float(value) for value in np.sort(values)[:2])
        >>> bool(lerp(low, high, 1 / 100 * 2, np.float32) == np.percentile(values, [1.0])[0])
        True
    """
    fraction = position - math.floor(position)
    difference = float(dtype(upper) - dtype(lower))
    if fraction >= 0.5:
        return float(upper - difference * (1 - fraction))
    return float(lower + difference * fraction)
