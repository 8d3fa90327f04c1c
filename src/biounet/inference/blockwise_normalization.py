"""Whole-image normalisation for `predict_blockwise`, from statistics gathered block by block.

"percentile" finds, per channel, the order statistics `np.percentile` interpolates
between, by radix selection: every value is mapped to an unsigned key of its width
that sorts as the value does (IEEE bits for floats), and each pass over the blocks
histograms the next 16 bits of the keys that share the prefixes found so far. One
pass settles 8- and 16-bit sources, two 32-bit ones, four 64-bit ones; in each pass a
region returns at most four 65536-bin histograms (2 MB) per channel. "zscore" gathers
each block's count, mean and sum of squared deviations, combined pairwise after Chan
et al. The result is one affine map per channel, applied to every window, so each
block is normalised with the whole image's statistics as data.normalize does in memory.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import numpy as np

from biounet.data.normalize import (
    POLARITY_PERCENTILES,
    check_polarity,
    polarity_rule,
    working_dtype,
)
from biounet.inference.blockwise_source import _SourceReference
from biounet.inference.order_keys import key_dtype, key_value, lerp, order_keys

NORMALIZATIONS = ("percentile", "zscore")
_PERCENTILES = (1.0, 99.8)  # as data.normalize.normalize_percentile and the predict CLI
_DIGIT_BITS = 16
_REGION_PIXELS = 2048 * 2048  # at most, as the default blocks
_REGION_BYTES = 32 * 2**20  # of source data per statistics task
_BATCH = 16  # statistics tasks whose results are held at once before they are summed,
_MAX_BATCH = 64  # or two per cluster thread up to this: 64 x 2 MB histograms per channel

Normalization = str | Callable[[np.ndarray], np.ndarray] | None


def _check_normalization(normalization: Normalization, polarity: str = "as_is") -> None:
    check_polarity(polarity, normalization if isinstance(normalization, str) else None)
    if normalization is None or callable(normalization):
        return
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be None, one of {list(NORMALIZATIONS)} or a function, got "
            f"{normalization!r}"
        )


def _make_normalizer(
    normalization: Normalization, opened, spatial_shape, executor, polarity: str = "as_is"
):
    """Return a per-window function applying `normalization` with whole-image statistics.

    `polarity` "bright_objects" inverts the channels with a bright background, as
    `biounet.data.normalize` does in memory.

    A float source fed as it is (None) is read once to refuse NaN, infinity and values
    float32 cannot hold, which would otherwise fail a block after the target exists.
    """
    if callable(normalization):
        return normalization
    if normalization is None and np.dtype(opened.array.dtype).kind != "f":
        return None
    # statistics need no tile alignment: cubes of at most 4 Mpx and 32 MiB of source data
    shape = opened.array.shape
    n_channels = shape[0] if len(shape) > len(spatial_shape) else 1
    item_bytes = n_channels * np.dtype(opened.array.dtype).itemsize
    pixels = max(1, min(_REGION_PIXELS, _REGION_BYTES // item_bytes))
    side = max(1, int(pixels ** (1 / len(spatial_shape))))
    regions = [
        tuple(slice(i * side, (i + 1) * side) for i in index)
        for index in itertools.product(*(range(-(-extent // side)) for extent in spatial_shape))
    ]
    if normalization is None:
        arguments = [(region,) for region in regions]
        _gathered(executor, _region_check, opened, arguments, reduce=lambda *_: None)
        return None
    if normalization == "percentile":
        return _percentile_affine(opened, regions, executor, polarity)
    parts = _gathered(executor, _region_moments, opened, [(region,) for region in regions])
    affine = _zscore_affine(parts, working_dtype(opened.array.dtype))
    if polarity == "as_is":
        return affine
    flips = [
        bool(polarity_rule(*values))
        for values in _percentiles(opened, regions, executor, POLARITY_PERCENTILES)
    ]
    return _Affine(affine.offset, np.where(flips, -affine.inverse, affine.inverse))


def _gathered(executor, function, opened, arguments, *, reduce=None):
    """Run `function` on every argument tuple in batches; sum the results if `reduce`.

    Batches bound what is held at once: with `reduce`, _BATCH results, or two per
    thread of a larger cluster (at most _MAX_BATCH) so that its threads have work,
    whatever the image size.
    """
    results, total = [], None
    size = min(max(_BATCH, 2 * executor.parallelism), _MAX_BATCH)
    for first in range(0, len(arguments), size):
        batch = executor.map(
            function,
            opened.reference(),
            arguments[first : first + size],
            name="biounet-statistics",
        )
        if reduce is None:
            results += batch
            continue
        for part in batch:
            total = part if total is None else reduce(total, part)
    return results if reduce is None else total


def _region_moments(source: _SourceReference, region) -> np.ndarray:
    """Per channel: (count, mean, sum of squared deviations) of the region's values."""
    values = _region_values(source, region).astype(np.float64)
    means = values.mean(axis=1)
    squares = ((values - means[:, None]) ** 2).sum(axis=1)
    return np.stack([np.full_like(means, values.shape[1]), means, squares], axis=1)


def _region_check(source: _SourceReference, region) -> None:
    """Refuse values float32 cannot hold: NaN, infinity, and float64 beyond its range."""
    block = np.asarray(source.open()[(Ellipsis, *region)])
    values = _region_values(source, region, block=block)
    too_large = np.abs(values) > np.finfo(np.float32).max
    if values.dtype.itemsize > 4 and too_large.any():
        position = _first_position(too_large, block, region)
        raise ValueError(
            f"source has values beyond float32's range, the first at {position}; pass a "
            "normalisation ('percentile' or 'zscore') or rescale the source"
        )


def _region_values(source: _SourceReference, region, *, block=None) -> np.ndarray:
    """The region's values as (channels, pixels), refusing NaN and infinity."""
    if block is None:
        block = np.asarray(source.open()[(Ellipsis, *region)])
    values = block.reshape(block.shape[0] if block.ndim > len(region) else 1, -1)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        position = _first_position(~np.isfinite(values), block, region)
        raise ValueError(
            f"source has NaN or infinite values, the first at {position}; prediction "
            "needs finite values"
        )
    return values


def _first_position(mask: np.ndarray, block: np.ndarray, region) -> str:
    """Where the first pixel flagged in the (channels, pixels) `mask` is: its image
    coordinates, and its channel for a multi-channel source."""
    first = int(np.flatnonzero(mask.any(axis=0))[0])
    where = np.unravel_index(first, block.shape[-len(region) :])
    position = str(tuple(int(part.start + offset) for part, offset in zip(region, where)))
    if mask.shape[0] > 1:
        position += f" of channel {int(np.flatnonzero(mask[:, first])[0])}"
    return position


def _percentile_affine(opened, regions, executor, polarity: str = "as_is") -> _Affine:
    """Map each channel's 1st and 99.8th percentiles to 0 and 1, as normalize_percentile.

    With `polarity` "bright_objects" a channel with a bright background (its median
    above the midpoint of the two) is normalised as its negative would be, as in memory.
    """
    low, high = _PERCENTILES
    flipping = polarity == "bright_objects"
    # the percentiles of -source are the negated mirrored ones; the rule's come last
    mirrored = (100 - high, 100 - low, *POLARITY_PERCENTILES) if flipping else ()
    offsets, inverses = [], []
    for values in _percentiles(opened, regions, executor, (low, high, *mirrored)):
        flip = flipping and bool(polarity_rule(*values[4:]))
        bottom, top = values[2:4] if flip else values[:2]
        divisor = top - bottom + 1e-20 if top > bottom else 1.0
        offsets.append(top if flip else bottom)
        inverses.append(-1.0 / divisor if flip else 1.0 / divisor)
    # cast as normalize_percentile casts np.percentile's float64 figures
    copy = working_dtype(opened.array.dtype)
    return _Affine(np.array(offsets).astype(copy), np.array(inverses).astype(copy))


def _percentiles(opened, regions, executor, percentiles) -> list[list[float]]:
    """Per channel, `percentiles` of the whole source, as `np.percentile` gives them."""
    shape = opened.array.shape
    n_channels = shape[0] if len(shape) > len(regions[0]) else 1
    n_values = math.prod(shape[-len(regions[0]) :])
    positions = [q / 100 * (n_values - 1) for q in percentiles]
    neighbours = [(math.floor(p), min(math.floor(p) + 1, n_values - 1)) for p in positions]
    ranks = sorted({rank for pair in neighbours for rank in pair})
    copy = working_dtype(opened.array.dtype)
    return [
        [lerp(values[low], values[high], p, copy) for (low, high), p in zip(neighbours, positions)]
        for values in _order_statistics(opened, regions, executor, n_channels, ranks)
    ]


def _order_statistics(opened, regions, executor, n_channels: int, ranks: list[int]):
    """Per channel, {rank: value} of the 0-based order statistics `ranks`, by radix selection.

    Values come back as data.normalize's float copy holds them (float32, or float64 for
    64-bit floats and integers wider than 16 bits), so a conversion that rounds (int64
    to float64) is applied after the selection, which it cannot reorder.
    """
    dtype = np.dtype(opened.array.dtype)
    width = 8 * key_dtype(dtype).itemsize
    digit = min(width, _DIGIT_BITS)
    # per channel and rank: [key prefix found so far, rank among the keys sharing it]
    state = [{rank: [0, rank] for rank in ranks} for _ in range(n_channels)]
    for shift in range(width - digit, -1, -digit):
        prefixes = tuple(tuple(sorted({p for p, _ in channel.values()})) for channel in state)
        arguments = [(region, shift, digit, prefixes) for region in regions]
        counts = _gathered(executor, _region_digit_histograms, opened, arguments, reduce=np.add)
        for c, channel in enumerate(state):
            for entry in channel.values():
                prefix, within = entry
                cumulative = np.cumsum(counts[c, prefixes[c].index(prefix)])
                value = int(np.searchsorted(cumulative, within, side="right"))
                below = int(cumulative[value - 1]) if value else 0
                entry[:] = (prefix << digit) | value, within - below
    copy_dtype = working_dtype(dtype)
    return [
        {
            rank: float(key_value(key, dtype).astype(copy_dtype))
            for rank, (key, _) in entries.items()
        }
        for entries in state
    ]


def _region_digit_histograms(
    source: _SourceReference, region, shift: int, digit: int, prefixes: tuple
) -> np.ndarray:
    """(channels, prefixes, 2**digit) counts of key bits [shift, shift + digit) by prefix."""
    keys = order_keys(_region_values(source, region))
    width = 8 * keys.dtype.itemsize
    n_prefixes = max(map(len, prefixes))
    counts = np.zeros((keys.shape[0], n_prefixes, 2**digit), dtype=np.int64)
    mask = keys.dtype.type(2**digit - 1)
    for c, (row, channel_prefixes) in enumerate(zip(keys, prefixes)):
        digits = (row >> keys.dtype.type(shift)) & mask
        if shift + digit >= width:  # the first pass: no prefix yet
            counts[c, 0] = np.bincount(digits.astype(np.intp), minlength=2**digit)
            continue
        high = row >> keys.dtype.type(shift + digit)
        for p, prefix in enumerate(channel_prefixes):
            counts[c, p] = np.bincount(digits[high == prefix].astype(np.intp), minlength=2**digit)
    return counts


@dataclasses.dataclass(frozen=True)
class _Affine:
    """Per channel ``(window - offset) * inverse``, as data.normalize computes it.

    The arithmetic runs in the dtype of `offset`, float64 for sources that float32 would
    round (a large common offset must cancel first), and the result is float32. The
    window is the raw (C, *spatial) source window.
    """

    offset: np.ndarray
    inverse: np.ndarray

    def __call__(self, window: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * (window.ndim - 1)
        result = np.asarray(window).astype(self.offset.dtype)
        result -= self.offset.reshape(shape)
        result *= self.inverse.reshape(shape)
        return result.astype(np.float32, copy=False)


def _zscore_affine(parts: list[np.ndarray], dtype: type) -> _Affine:
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
    return _Affine(mean.astype(dtype), (1.0 / divisor).astype(dtype))
