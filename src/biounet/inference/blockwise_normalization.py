"""Whole-image normalisation for `predict_blockwise`, from statistics gathered block by block.

Every block contributes, per channel, a histogram of its values ("percentile", exact
for integer sources of up to 16 bits) or its count, mean and sum of squared
deviations ("zscore", combined pairwise after Chan et al.). The result is one affine
map per channel, applied to every window, so each block is normalised with the
whole image's statistics as data.normalize does in memory.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import numpy as np

from biounet.inference.blockwise_source import _SourceReference

NORMALIZATIONS = ("percentile", "zscore")
_PERCENTILES = (1.0, 99.8)  # as data.normalize.normalize_percentile and the predict CLI

Normalization = str | Callable[[np.ndarray], np.ndarray] | None


def _check_normalization(normalization: Normalization, dtype: np.dtype) -> None:
    if normalization is None or callable(normalization):
        return
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be None, one of {list(NORMALIZATIONS)} or a function, got "
            f"{normalization!r}"
        )
    if normalization == "percentile" and not (
        dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize <= 2)
    ):
        raise ValueError(
            f"normalization='percentile' is exact only for integer sources of up to 16 bits, "
            f"got dtype {dtype}; use 'zscore' (biounet predict --normalization zscore), "
            "normalise the source beforehand or pass a function"
        )


def _make_normalizer(normalization: Normalization, opened, grid, blocks, executor):
    """Return a per-window function applying `normalization` with whole-image statistics."""
    if normalization is None or callable(normalization):
        return normalization
    dtype = np.dtype(opened.array.dtype)
    regions = [
        tuple(slice(i * size, (i + 1) * size) for i, size in zip(index, blocks))
        for index in itertools.product(
            *(range(-(-extent // size)) for extent, size in zip(grid.image_shape, blocks))
        )
    ]
    parts = executor.map(
        _region_statistics,
        opened.reference(),
        [(region, normalization) for region in regions],
        name="biounet-statistics",
    )
    if normalization == "percentile":
        return _percentile_affine(np.sum(parts, axis=0), dtype)
    return _zscore_affine(parts)


def _region_statistics(source: _SourceReference, region, normalization: str) -> np.ndarray:
    """Per channel: a histogram of all values, or (count, mean, sum of squared deviations)."""
    values = np.asarray(source.open()[(Ellipsis, *region)])
    values = values.reshape(values.shape[0] if values.ndim > len(region) else 1, -1)
    if normalization == "percentile":
        low = 0 if values.dtype.kind == "b" else int(np.iinfo(values.dtype).min)
        n_values = 2 ** (8 * values.dtype.itemsize) if values.dtype.kind != "b" else 2
        shifted = values.astype(np.int64) - low
        return np.stack([np.bincount(row, minlength=n_values) for row in shifted])
    values = values.astype(np.float64)
    means = values.mean(axis=1)
    squares = ((values - means[:, None]) ** 2).sum(axis=1)
    return np.stack([np.full_like(means, values.shape[1]), means, squares], axis=1)


@dataclasses.dataclass(frozen=True)
class _Affine:
    """Per channel ``(window - offset) * inverse`` in float32, as data.normalize computes it."""

    offset: np.ndarray
    inverse: np.ndarray

    def __call__(self, window: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * (window.ndim - 1)
        result = window - self.offset.reshape(shape)
        result *= self.inverse.reshape(shape)
        return result


def _percentile_affine(histograms: np.ndarray, dtype: np.dtype) -> _Affine:
    # float64 statistics cast at the end, as normalize_percentile's np.percentile gives them
    first_value = 0 if dtype.kind == "b" else int(np.iinfo(dtype).min)
    offsets, inverses = [], []
    for counts in histograms:
        bottom, top = (
            _histogram_percentile(counts, q, first_value=first_value) for q in _PERCENTILES
        )
        divisor = top - bottom + 1e-20 if top > bottom else 1.0
        offsets.append(bottom)
        inverses.append(1.0 / divisor)
    return _Affine(np.array(offsets, np.float32), np.array(inverses, np.float32))


def _histogram_percentile(counts: np.ndarray, q: float, *, first_value: int = 0) -> float:
    """The `q`-th percentile of the values whose histogram is `counts`.

    Bin i counts the value ``first_value + i``. Linear interpolation between order
    statistics, computed as `np.percentile` does (including its symmetric lerp).

    Example:
        >>> values = np.array([3, 7, 7, 1, 9])
        >>> _histogram_percentile(np.bincount(values), 40.0)  # 3 + 0.6 * (7 - 3)
        5.4
        >>> np.percentile(values, [40.0]).item()
        5.4
    """
    cumulative = np.cumsum(counts)
    n_values = int(cumulative[-1])
    position = q / 100 * (n_values - 1)
    below = math.floor(position)
    ranks = [below, min(below + 1, n_values - 1)]
    lower, upper = np.searchsorted(cumulative, ranks, side="right") + float(first_value)
    fraction = position - below
    if fraction >= 0.5:
        return float(upper - (upper - lower) * (1 - fraction))
    return float(lower + (upper - lower) * fraction)


def _zscore_affine(parts: list[np.ndarray]) -> _Affine:
    # Chan et al.'s pairwise combination of per-block means and squared deviations
    count, mean, squares = (column.astype(np.float64) for column in np.moveaxis(parts[0], 1, 0))
    for part in parts[1:]:
        other_count, other_mean, other_squares = np.moveaxis(part, 1, 0)
        total = count + other_count
        delta = other_mean - mean
        squares = squares + other_squares + delta**2 * count * other_count / total
        mean = mean + delta * other_count / total
        count = total
    std = np.sqrt(squares / count)
    divisor = np.where(std > 0, std + 1e-20, 1.0)
    return _Affine(mean.astype(np.float32), (1.0 / divisor).astype(np.float32))
