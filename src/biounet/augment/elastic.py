"""Elastic deformation from a coarse random displacement grid (Ronneberger et al. 2015, Sec. 3.1).

"We generate smooth deformations using random displacement vectors on a coarse 3 by 3
grid. The displacements are sampled from a Gaussian distribution with 10 pixels standard
deviation. Per-pixel displacements are then computed using bicubic interpolation."

Randomness is split from its use: `sample_displacement` draws the coarse grid,
`upsample_displacement` and `apply_displacement` are deterministic.

Grid placement: the grid points span the array extent, first and last points on the
first and last pixel (``linspace(0, size - 1, n)`` per axis), so a 3x3 grid sits on the
corners, edge midpoints and centre. Between them the displacement is interpolated per
axis with the cubic B-spline (scipy.ndimage, order 3, with its prefilter, so the field
passes exactly through the grid values), mirrored beyond the outer grid points; the field
therefore meets the borders with zero normal slope. Reads beyond the array borders are
mirrored too (`biounet.augment.geometric.BOUNDARY_MODE`), like the paper's overlap-tile
mirroring.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from biounet.augment.geometric import BOUNDARY_MODE, check_warp_input, source_coordinates, warp

PAPER_ORDERS = (3, 0, 1)  # image cubic, labels nearest, weight map linear


def sample_displacement(
    spatial_shape: Sequence[int],
    *,
    grid_shape: int | Sequence[int] = 3,
    sigma: float | Sequence[float] = 10.0,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Draw random displacement vectors on a coarse grid (Ronneberger et al. 2015, Sec. 3.1).

    Args:
        spatial_shape: (Y, X) or (Z, Y, X) shape of the arrays to deform; sets ndim.
        grid_shape: grid points per axis, at least 2; an int applies to every axis
            (3: the paper's 3x3 grid, 3x3x3 in 3-D).
        sigma: standard deviation of each displacement component in pixels (paper: 10);
            a sequence gives one per axis (smaller along Z for anisotropic stacks).
        rng: generator or seed.

    Returns:
        (ndim, *grid_shape) float64 displacements in pixels; entry [d, ...] moves along axis d.

    Example:
        >>> sample_displacement((64, 64), rng=0).shape
        (2, 3, 3)
    """
    ndim = len(spatial_shape)
    if ndim not in (2, 3):
        raise ValueError(f"spatial_shape must have 2 or 3 axes, got {tuple(spatial_shape)}")
    grid = tuple(int(n) for n in np.broadcast_to(grid_shape, (ndim,)))
    if min(grid) < 2:
        raise ValueError(f"grid_shape needs at least 2 points per axis, got {grid_shape!r}")
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (ndim,))
    if (sigmas < 0).any():
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    rng = np.random.default_rng(rng)
    return rng.standard_normal((ndim, *grid)) * sigmas.reshape(ndim, *([1] * ndim))


def upsample_displacement(
    displacement: np.ndarray, spatial_shape: Sequence[int], *, dtype: type = np.float64
) -> np.ndarray:
    """Interpolate a coarse displacement grid to every pixel, per axis with the cubic B-spline.

    The field equals the grid exactly at the grid points (pixel ``k * (size - 1) / (n - 1)``
    for grid point k of n). Separable, so it costs a few small matrix products.

    Args:
        displacement: (ndim, *grid_shape) coarse grid from `sample_displacement`.
        spatial_shape: (Y, X) or (Z, Y, X) output shape.
        dtype: float64 (reference) or float32 (for the float32 grids of grid_sample).

    Returns:
        (ndim, *spatial_shape) per-pixel displacement in pixels, of `dtype`.

    Example:
        >>> grid = np.zeros((2, 3, 3)); grid[0, 1, 1] = 5.0
        >>> float(upsample_displacement(grid, (5, 5))[0, 2, 2])
        5.0
    """
    spatial_shape = tuple(int(size) for size in spatial_shape)
    _check_displacement(displacement, len(spatial_shape))
    grid = np.asarray(displacement, dtype=dtype)
    matrices = [
        _interpolation_matrix(n_points, size).astype(dtype)
        for n_points, size in zip(grid.shape[1:], spatial_shape, strict=True)
    ]
    # field[d, y, x] = sum_ij Wy[y, i] grid[d, i, j] Wx[x, j], one axis at a time, with
    # plain einsum loops (BLAS threads stall when the cores are busy with data loaders);
    # last axis first, so the big contractions run along contiguous pixel rows.
    pixels, points = "zyx"[-len(matrices) :], "ijk"[: len(matrices)]
    field = grid
    for axis in reversed(range(len(matrices))):
        before = "d" + points[: axis + 1] + pixels[axis + 1 :]
        after = "d" + points[:axis] + pixels[axis:]
        field = np.einsum(f"{pixels[axis]}{points[axis]},{before}->{after}", matrices[axis], field)
    return field


def apply_displacement(
    arrays: Sequence[np.ndarray],
    displacement: np.ndarray,
    *,
    orders: int | Sequence[int] = PAPER_ORDERS,
) -> list[np.ndarray]:
    """Deform `arrays` by a coarse displacement grid; deterministic (Ronneberger et al. 2015).

    Output pixel x reads input position ``x + u(x)``, u the upsampled field. All arrays
    share their last ndim (spatial) axes; leading axes (channels) are deformed alike.
    A zero grid returns exact copies.

    Args:
        arrays: e.g. (image, labels, weights), each (..., *spatial_shape).
        displacement: (ndim, *grid_shape) from `sample_displacement`.
        orders: spline order per array (or one for all); default 3, 0, 1 as in the paper:
            cubic image, nearest labels (ids stay ids), linear weight map.

    Returns:
        The deformed arrays, shapes and dtypes unchanged.

    Example:
        >>> labels = np.arange(16).reshape(4, 4)
        >>> out, = apply_displacement([labels], np.zeros((2, 3, 3)), orders=0)
        >>> bool((out == labels).all())
        True
    """
    arrays = list(arrays)
    ndim = np.asarray(displacement).shape[0] if np.ndim(displacement) else 0
    _check_displacement(displacement, ndim)
    order_list = [orders] * len(arrays) if isinstance(orders, int) else list(orders)
    if len(order_list) != len(arrays):
        raise ValueError(f"orders must give one order per array ({len(arrays)}), got {orders!r}")
    if not arrays:
        return []
    spatial_shape = arrays[0].shape[-ndim:]
    for index, (array, order) in enumerate(zip(arrays, order_list, strict=True)):
        check_warp_input(array, ndim, order=order, name=f"arrays[{index}]")
        if array.shape[-ndim:] != spatial_shape:
            raise ValueError(
                f"arrays must share their last {ndim} axes; arrays[0] has {spatial_shape}, "
                f"arrays[{index}] has {array.shape[-ndim:]}"
            )
    if not np.any(displacement):
        return [array.copy() for array in arrays]
    field = upsample_displacement(displacement, spatial_shape)
    coordinates = source_coordinates(spatial_shape, displacement_field=field)
    return [warp(array, coordinates, order=order) for array, order in zip(arrays, order_list)]


@functools.lru_cache(maxsize=64)  # training draws many fields of the same few shapes
def _interpolation_matrix(n_points: int, size: int) -> np.ndarray:
    """(size, n_points) read-only matrix taking n grid values to `size` B-spline samples."""
    # Multiply before dividing so grid points land on exact integers.
    positions = np.arange(size) * (n_points - 1) / max(size - 1, 1)
    columns = [
        ndimage.map_coordinates(unit, positions[np.newaxis], order=3, mode=BOUNDARY_MODE)
        for unit in np.eye(n_points)
    ]
    matrix = np.stack(columns, axis=1)
    # The prefilter leaves ~1e-16 residues at the grid points; make them exact there.
    on_grid = positions == np.round(positions)
    matrix[on_grid] = np.eye(n_points)[positions[on_grid].astype(int)]
    matrix.flags.writeable = False
    return matrix


def _check_displacement(displacement: np.ndarray, ndim: int) -> None:
    shape = np.shape(displacement)
    if ndim not in (2, 3) or len(shape) != ndim + 1 or shape[0] != ndim or min(shape[1:]) < 2:
        raise ValueError(
            f"displacement must have shape (ndim, *grid_shape) with ndim 2 or 3 matching the "
            f"arrays and >= 2 grid points per axis, got shape {shape}"
        )
