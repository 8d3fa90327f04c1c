"""Rigid transforms (rotation, shift, flip, optional zoom) as coordinate maps, and resampling.

Shift and rotation augmentation of Ronneberger et al. 2015, Sec. 3.1; the isotropic zoom
is not in the paper (it is nnU-Net's scaling augmentation) and is off by default. Every geometric
augmentation in `biounet.augment` is a *coordinate map*: for each output pixel x, the
position in the input to read from. A rigid transform and an elastic displacement field
compose into one map (`source_coordinates`), so each array is interpolated once.

Conventions:
    * Positions are pixel indices; axis order is (Y, X) or (Z, Y, X).
    * A `RigidTransform` describes how the *content* moves:
      ``y = zoom * matrix @ (x - c) + c + shift`` with c the centre of the array,
      ``(size - 1) / 2`` per axis. A rotation by +90 degrees
      in the (Y, X) plane equals ``np.rot90(image)`` (from the first towards the second axis).
    * Reads beyond the borders are mirrored about the first and last pixel without
      repeating them (scipy's ``mode="mirror"``, numpy's ``"reflect"``), the mirroring of the
      paper's overlap-tile strategy (Fig. 2) and of `biounet.inference.tiling`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# scipy.ndimage's name; torch grid_sample's "reflection" with align_corners=True does the same.
BOUNDARY_MODE = "mirror"

# (first, second) axes of each rotation plane, rotating from first towards second; in 3-D
# the first plane is (Y, X), the in-plane rotation of an anisotropic stack.
_ROTATION_PLANES = {2: ((0, 1),), 3: ((1, 2), (0, 2), (0, 1))}


@dataclass(frozen=True, eq=False)
class RigidTransform:
    """Rotation/flip `matrix` (ndim, ndim), `shift` (ndim,) in pixels and `zoom` moving the content.

    The content at input position x appears at ``zoom * matrix @ (x - c) + c + shift`` in
    the output, c being the array centre. `matrix` is orthogonal; `zoom` > 1 magnifies.
    """

    matrix: np.ndarray
    shift: np.ndarray
    zoom: float = 1.0

    @classmethod
    def identity(cls, ndim: int) -> RigidTransform:
        return cls(np.eye(ndim), np.zeros(ndim))

    @property
    def is_identity(self) -> bool:
        return bool(
            np.array_equal(self.matrix, np.eye(len(self.shift)))
            and not self.shift.any()
            and self.zoom == 1.0
        )


def rotation_matrix(angles_deg: float | Sequence[float], *, ndim: int) -> np.ndarray:
    """Return the (ndim, ndim) rotation by `angles_deg`, one angle per rotation plane.

    2-D: one angle in the (Y, X) plane. 3-D: three angles, in the (Y, X), (Z, X) and (Z, Y)
    planes; the matrix is ``R_yx @ R_zx @ R_zy``, so the (Y, X) rotation acts last.
    Positive angles rotate from the first towards the second axis of the plane, like
    ``np.rot90``.

    Example:
        >>> rotation_matrix(90, ndim=2).round(12) + 0.0
        array([[ 0., -1.],
               [ 1.,  0.]])
    """
    if ndim not in _ROTATION_PLANES:
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    planes = _ROTATION_PLANES[ndim]
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
    if angles.shape != (len(planes),):
        raise ValueError(
            f"angles_deg must hold {len(planes)} angle(s) for ndim={ndim}, got {angles_deg!r}"
        )
    matrix = np.eye(ndim)
    for (first, second), angle in zip(planes, np.deg2rad(angles), strict=True):
        plane = np.eye(ndim)
        plane[first, first] = plane[second, second] = np.cos(angle)
        plane[first, second] = -np.sin(angle)
        plane[second, first] = np.sin(angle)
        matrix = matrix @ plane
    return matrix


def sample_rigid_transform(
    ndim: int,
    *,
    max_rotation_deg: float = 180.0,
    max_tilt_deg: float = 0.0,
    max_shift_px: float | Sequence[float] = 8.0,
    flip_probability: float = 0.5,
    scale_range: tuple[float, float] = (1.0, 1.0),
    rng: np.random.Generator | int | None = None,
) -> RigidTransform:
    """Draw a random rotation, shift, flip and zoom (Ronneberger et al. 2015, Sec. 3.1).

    The (Y, X) rotation angle is uniform in [-max_rotation_deg, max_rotation_deg]; in 3-D
    the two out-of-plane angles are uniform in [-max_tilt_deg, max_tilt_deg]. The shift is
    uniform in [-max_shift_px, max_shift_px] per axis, sub-pixel. Each axis is flipped
    independently with `flip_probability`; the flip is applied before the rotation. The
    zoom is log-uniform in `scale_range` (not in the paper; (1, 1), the default, draws
    nothing, so seeds give the same transforms as without it).

    Example:
        >>> sample_rigid_transform(2, max_rotation_deg=0, max_shift_px=0,
        ...                        flip_probability=0, rng=0).is_identity
        True
    """
    if ndim not in _ROTATION_PLANES:
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if not 0.0 <= flip_probability <= 1.0:
        raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability}")
    max_shift = np.broadcast_to(np.asarray(max_shift_px, dtype=np.float64), (ndim,))
    if (max_shift < 0).any() or max_rotation_deg < 0 or max_tilt_deg < 0:
        raise ValueError(
            "max_rotation_deg, max_tilt_deg and max_shift_px must be >= 0, got "
            f"{max_rotation_deg}, {max_tilt_deg}, {max_shift_px}"
        )
    low, high = (float(value) for value in scale_range)
    if not 0.0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    rng = np.random.default_rng(rng)
    n_tilts = 2 if ndim == 3 else 0
    angles = [rng.uniform(-max_rotation_deg, max_rotation_deg)]
    angles += [rng.uniform(-max_tilt_deg, max_tilt_deg) for _ in range(n_tilts)]
    # Zero angles stay exact zeros, so a disabled rotation gives the identity matrix exactly.
    matrix = rotation_matrix(angles, ndim=ndim) if any(angles) else np.eye(ndim)
    flips = np.where(rng.random(ndim) < flip_probability, -1.0, 1.0)
    shift = rng.uniform(-max_shift, max_shift)
    zoom = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if low < high else low
    return RigidTransform(matrix * flips, shift, zoom)


def source_coordinates(
    spatial_shape: Sequence[int],
    *,
    transform: RigidTransform | None = None,
    displacement_field: np.ndarray | None = None,
    dtype: type = np.float64,
) -> np.ndarray:
    """Return the input position read by every output pixel: (ndim, *spatial_shape).

    With c the centre and u the per-pixel elastic displacement (input axes, sampled on the
    output grid), ``source(x) = matrix.T @ (x - c - shift) / zoom + c + u(x)``: the inverse
    transform plus the deformation, one map, so each array is interpolated once. The grid
    displacements are i.i.d. isotropic Gaussians, so adding u unrotated draws from the same
    distribution as rotating it, and a per-axis sigma stays along the input's axes (Z of an
    anisotropic stack). Without a transform the map is ``x + u(x)``.

    Args:
        spatial_shape: output (and, for the centre, input) shape (Y, X) or (Z, Y, X).
        transform: rigid transform moving the content; None for none.
        displacement_field: (ndim, *spatial_shape) from
            `biounet.augment.elastic.upsample_displacement`; None for none.
        dtype: float64 (reference) or float32 (enough for grid_sample, ~3e-5 px at 512 px,
            and several times faster to build).

    Example:
        >>> source_coordinates((2, 3))[1]
        array([[0., 1., 2.],
               [0., 1., 2.]])
    """
    spatial_shape = tuple(int(size) for size in spatial_shape)
    ndim = len(spatial_shape)
    transform = RigidTransform.identity(ndim) if transform is None else transform
    if transform.matrix.shape != (ndim, ndim) or transform.shift.shape != (ndim,):
        raise ValueError(
            f"transform must be {ndim}-D for spatial_shape {spatial_shape}, got matrix "
            f"{transform.matrix.shape} and shift {transform.shift.shape}"
        )
    if displacement_field is not None and displacement_field.shape != (ndim, *spatial_shape):
        raise ValueError(
            f"displacement_field must have shape {(ndim, *spatial_shape)}, "
            f"got {displacement_field.shape}"
        )
    centre = (np.asarray(spatial_shape) - 1) / 2
    inverse = transform.matrix.T / transform.zoom  # matrix is orthogonal
    coordinates = np.empty((ndim, *spatial_shape), dtype=dtype)
    for out_axis, output in enumerate(coordinates):
        # The affine part is a sum of 1-D ramps, one per axis: broadcast-add them in place.
        ramps = []
        for in_axis, size in enumerate(spatial_shape):
            weight = inverse[out_axis, in_axis]
            if weight or in_axis == out_axis:
                ramp = weight * (np.arange(size) - centre[in_axis] - transform.shift[in_axis])
                if in_axis == out_axis:
                    ramp += centre[out_axis]  # (x - c) + c is exact for half-integer c
                view = [1] * ndim
                view[in_axis] = size
                ramps.append(ramp.astype(dtype).reshape(view))
        if displacement_field is None:
            output[...] = ramps.pop()
        else:
            np.add(displacement_field[out_axis], ramps.pop(), out=output, casting="same_kind")
        for ramp in ramps:
            output += ramp
    return coordinates


def warp(array: np.ndarray, coordinates: np.ndarray, *, order: int) -> np.ndarray:
    """Resample `array` at `coordinates` with a spline of `order`, mirrored at the borders.

    The reference (numpy/scipy) path. Order 0 is nearest (labels), 1 linear (weights),
    3 the cubic B-spline with its prefilter (image). Leading axes of `array` before the
    last ``coordinates.shape[0]`` ones (channels) are resampled alike. The dtype is kept.

    Args:
        array: (..., *spatial_shape) array; must be floating unless `order` is 0.
        coordinates: (ndim, *output_shape) input positions per output pixel.
        order: spline order, 0 to 5.

    Returns:
        (..., *output_shape) array of `array`'s dtype.

    Example:
        >>> image = np.arange(4.0).reshape(2, 2)
        >>> warp(image, source_coordinates((2, 2)) + [[[0.0]], [[0.5]]], order=1)
        array([[0.5, 0.5],
               [2.5, 2.5]])
    """
    ndim = check_coordinates(coordinates)
    check_warp_input(array, ndim, order=order, name="array")
    leading_shape = array.shape[: array.ndim - ndim]
    flat = array.reshape(-1, *array.shape[array.ndim - ndim :])
    warped = np.empty((flat.shape[0], *coordinates.shape[1:]), dtype=array.dtype)
    for channel, output in zip(flat, warped, strict=True):
        # scipy has no bool or float16 kernels; uint8 / float32 carry them and cast back.
        source = channel.view(np.uint8) if channel.dtype == np.bool_ else channel
        source = source.astype(np.float32) if source.dtype == np.float16 else source
        output[...] = ndimage.map_coordinates(source, coordinates, order=order, mode=BOUNDARY_MODE)
    return warped.reshape(*leading_shape, *coordinates.shape[1:])


def check_warp_input(array: np.ndarray, ndim: int, *, order: int, name: str) -> None:
    """Raise if `array` cannot be resampled with spline `order` over `ndim` spatial axes."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.ndim < ndim:
        raise ValueError(f"{name} must have at least {ndim} axes, got shape {array.shape}")
    if order not in range(6):
        raise ValueError(f"order for {name} must be an integer 0 to 5, got {order!r}")
    if order > 0 and not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"{name} of dtype {array.dtype} needs order 0 (nearest); order {order} "
            "interpolates, so convert it to float first"
        )


def check_coordinates(coordinates: np.ndarray) -> int:
    """Raise unless `coordinates` is an (ndim, *output_shape) map with ndim 2 or 3; return ndim."""
    shape = np.shape(coordinates)
    if len(shape) not in (3, 4) or shape[0] != len(shape) - 1:
        raise ValueError(
            f"coordinates must have shape (ndim, *output_shape) with ndim 2 or 3, got {shape}"
        )
    return shape[0]
