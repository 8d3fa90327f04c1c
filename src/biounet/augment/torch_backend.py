"""Resample arrays at a coordinate map with torch `grid_sample`: the fast path of `biounet.augment`.

A thin adapter (layer 1) over the numpy reference `biounet.augment.geometric.warp`: the
same coordinate maps, numpy arrays in and out, run on CPU with torch's current thread
setting (the caller decides `torch.set_num_threads`).

Differences from the reference, by order:
    * 0 (nearest): identical, except at half-pixel ties (scipy rounds half up, torch
      rounds half to even after normalising the grid, which moves a tie by float rounding),
      a set of measure zero for random transforms.
    * 1 (linear): identical up to float rounding; float32 grids carry ~1e-5 px error.
    * 3 (cubic): torch's bicubic is cubic *convolution* (Keys 1981 kernel with a = -0.75,
      the OpenCV choice), applied to the pixel values directly; scipy's is the cubic
      *B-spline* interpolant (prefiltered). Both pass through the pixel values at integer
      positions and are C1 smooth (the B-spline C2); between pixels they differ by a small
      fraction of the local second differences (~1e-2 of the amplitude of a sine of 32 px
      wavelength).
      3-D bicubic does not exist in `grid_sample`, so 3-D cubic (and orders 2, 4, 5)
      falls back to the scipy reference.
Borders: ``padding_mode="reflection"`` with ``align_corners=True`` mirrors about the first and
last pixel centres, which is scipy's ``mode="mirror"`` used by the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from biounet.augment.geometric import check_coordinates, check_warp_input, warp

_MODES = {0: "nearest", 1: "bilinear", 3: "bicubic"}


def coordinates_to_grid(
    coordinates: np.ndarray, input_shape: Sequence[int], *, dtype: type = np.float32
) -> torch.Tensor:
    """Convert input positions in pixels to a `grid_sample` grid (align_corners=True).

    Args:
        coordinates: (ndim, *output_shape) input positions, axis order (Y, X) or (Z, Y, X),
            as from `biounet.augment.geometric.source_coordinates`.
        input_shape: spatial shape of the arrays to be sampled.
        dtype: np.float32 or np.float64, the grid's dtype (grid_sample needs the input's).

    Returns:
        (1, *output_shape, ndim) grid, -1 and 1 at the first and last pixel centres;
        last axis in grid_sample's order (x, y[, z]).

    Example:
        >>> coordinates = np.array([[[0.0, 4.0]], [[2.0, 0.0]]])  # (y, x) of two pixels
        >>> coordinates_to_grid(coordinates, (5, 3))[0].tolist()
        [[[1.0, -1.0], [-1.0, 1.0]]]
    """
    ndim = coordinates.shape[0]
    if len(input_shape) != ndim:
        raise ValueError(f"input_shape must have {ndim} axes, got {tuple(input_shape)}")
    grid = np.empty((*coordinates.shape[1:], ndim), dtype=dtype)
    for axis, size in enumerate(input_shape):
        # A length-1 axis has a single position, which align_corners maps from any value.
        scale = 2.0 / (size - 1) if size > 1 else 0.0
        component = grid[..., ndim - 1 - axis]
        np.multiply(coordinates[axis], scale, out=component, casting="unsafe")
        component -= 1.0
    return torch.from_numpy(grid)[None]


def warp_arrays(
    arrays: Sequence[np.ndarray], coordinates: np.ndarray, *, orders: Sequence[int]
) -> list[np.ndarray]:
    """Resample each array at `coordinates` with its order; `geometric.warp` via grid_sample.

    Args:
        arrays: each (..., *input_shape); leading axes (channels) are resampled alike.
        coordinates: (ndim, *output_shape) input positions per output pixel.
        orders: per array, 0 nearest, 1 linear or 3 cubic (see the module notes).

    Returns:
        The resampled arrays, (..., *output_shape), dtypes unchanged.
    """
    ndim = check_coordinates(coordinates)
    grids: dict[tuple[tuple[int, ...], type], torch.Tensor] = {}
    results = []
    for index, (array, order) in enumerate(zip(arrays, orders, strict=True)):
        check_warp_input(array, ndim, order=order, name=f"arrays[{index}]")
        if order not in _MODES or (order == 3 and ndim == 3):
            results.append(warp(array, coordinates, order=order))
            continue
        compute_dtype = _compute_dtype(array)
        input_shape = array.shape[array.ndim - ndim :]
        key = (input_shape, compute_dtype)
        if key not in grids:  # one grid serves every array of that shape and dtype
            grids[key] = coordinates_to_grid(coordinates, input_shape, dtype=compute_dtype)
        sampled = _sample(array.astype(compute_dtype, copy=False), grids[key], order=order)
        results.append(sampled.astype(array.dtype, copy=False))
    return results


def _compute_dtype(array: np.ndarray) -> type:
    if array.dtype in (np.float32, np.float16, np.bool_):
        return np.float32
    if np.issubdtype(array.dtype, np.integer) and array.size:
        # float32 holds integers exactly up to 2**24; beyond, float64 (exact to 2**53).
        if -(2**24) <= int(array.min()) and int(array.max()) <= 2**24:
            return np.float32
    return np.float64


def _sample(array: np.ndarray, grid: torch.Tensor, *, order: int) -> np.ndarray:
    """Resample a float32/float64 `array` (..., *spatial) on a grid of its dtype."""
    ndim = grid.shape[-1]
    spatial_shape = array.shape[array.ndim - ndim :]
    leading_shape = array.shape[: array.ndim - ndim]
    values = torch.from_numpy(np.ascontiguousarray(array).reshape(1, -1, *spatial_shape))
    # grid_sample's CPU kernel parallelises over the batch only: split the output rows
    # into one batch item per torch thread, all reading the same (expanded) input.
    n_parts = _n_row_parts(grid.shape[1], torch.get_num_threads())
    sampled = F.grid_sample(
        values.expand(n_parts, *values.shape[1:]),
        grid.reshape(n_parts, grid.shape[1] // n_parts, *grid.shape[2:]),
        mode=_MODES[order],
        padding_mode="reflection",
        align_corners=True,
    )
    # (parts, C, rows/parts, ...) -> (C, rows, ...)
    sampled = sampled.transpose(0, 1).reshape(values.shape[1], *grid.shape[1:-1])
    return sampled.numpy().reshape(*leading_shape, *grid.shape[1:-1])


def _n_row_parts(n_rows: int, n_threads: int) -> int:
    """Largest number of equal row blocks, at most `n_threads`."""
    return max(parts for parts in range(1, max(n_threads, 1) + 1) if n_rows % parts == 0)
