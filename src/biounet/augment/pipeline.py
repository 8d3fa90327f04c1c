"""Augment (image, labels, weights) for training in one pass (Ronneberger et al. 2015, Sec. 3.1).

`augment` draws a rigid transform (rotation, shift, flip, optional zoom), an elastic
displacement grid and a grey-value change, composes the geometric parts into one
coordinate map and resamples each array exactly once: the image cubic, the labels
nearest (ids stay ids), the weight map linear; then it varies the image's grey values.

Backends: ``"torch"`` (default, the fast path: `torch.nn.functional.grid_sample` via
`biounet.augment.torch_backend`, imported only when chosen, so numpy-only callers pass
``"scipy"`` and never load torch) and ``"scipy"`` (the reference,
`scipy.ndimage.map_coordinates`). They draw identical random parameters from the same
seed; labels agree exactly (up to half-pixel ties), weights to float rounding, images to
the difference between cubic convolution and the cubic B-spline (see `torch_backend`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from biounet.augment.elastic import sample_displacement, upsample_displacement
from biounet.augment.geometric import (
    RigidTransform,
    check_warp_input,
    sample_rigid_transform,
    source_coordinates,
    warp,
)
from biounet.augment.intensity import (
    IntensityChange,
    apply_intensity_change,
    sample_intensity_change,
)
from biounet.config import _JsonConfig

_Warp = Callable[[Sequence[np.ndarray], np.ndarray, Sequence[int]], list[np.ndarray]]


@dataclass(frozen=True)
class AugmentConfig(_JsonConfig):
    """Augmentation parameters; defaults follow Ronneberger et al. 2015, Sec. 3.1.

    The paper fixes only the elastic part (3x3 grid, 10 px standard deviation, bicubic)
    and names shift, rotation and grey-value variations without numbers; the other
    defaults are ours, chosen as stated.

    Attributes:
        ndim: spatial axes, 2 (Y, X) or 3 (Z, Y, X); the image may carry leading channels.
        elastic_grid_shape: coarse grid points per axis (paper: 3), int or one per axis.
        elastic_sigma_px: standard deviation of grid displacements in pixels (paper: 10),
            float or one per axis; 0 switches elastic deformation off.
        max_rotation_deg: (Y, X) rotation uniform in +-this (180: any angle; microscopy
            has no preferred orientation, the paper asks for rotation invariance).
        max_tilt_deg: 3-D only, rotations out of the (Y, X) plane, uniform in +-this
            (0: anisotropic stacks are usually not rotated about Y or X).
        max_shift_px: shift uniform in +-this per axis, sub-pixel (8: with random patch
            positions this covers every phase of a depth-4 pooling grid, 16 px).
        flip_probability: chance to mirror each axis (0.5; not in the paper, but cells
            have no handedness and a flip costs nothing inside the same coordinate map).
        scale_range: isotropic zoom, log-uniform in (low, high); (1, 1), the paper's
            and the default, is off. nnU-Net draws (0.7, 1.4); a zoom below 1 shows
            smaller objects than the data holds. The weight map is resampled with the
            image, so its border term scales too.
        brightness_range, contrast_range, gamma_range, noise_sigma: grey-value variation,
            see `biounet.augment.intensity.sample_intensity_change` (noise off, as in
            the paper).
        image_order: spline order for the image: 3 (the paper's bicubic), 1 or 0.

    Example:
        >>> AugmentConfig.from_json(AugmentConfig(ndim=3).to_json()) == AugmentConfig(ndim=3)
        True
    """

    ndim: int = 2
    elastic_grid_shape: int | tuple[int, ...] = 3
    elastic_sigma_px: float | tuple[float, ...] = 10.0
    max_rotation_deg: float = 180.0
    max_tilt_deg: float = 0.0
    max_shift_px: float | tuple[float, ...] = 8.0
    flip_probability: float = 0.5
    scale_range: tuple[float, float] = (1.0, 1.0)
    brightness_range: tuple[float, float] = (-0.1, 0.1)
    contrast_range: tuple[float, float] = (0.8, 1.25)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    noise_sigma: float = 0.0
    image_order: int = 3

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim!r}")
        if self.image_order not in (0, 1, 3):
            raise ValueError(f"image_order must be 0, 1 or 3, got {self.image_order!r}")
        # The samplers own the parameter checks; one dry draw runs them at construction.
        _sample_parameters(self, (3,) * self.ndim, np.random.default_rng(0))


def augment(
    image: np.ndarray,
    labels: np.ndarray | None,
    weights: np.ndarray | None,
    *,
    config: AugmentConfig | None = None,
    rng: np.random.Generator | int | None = None,
    backend: str = "torch",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Randomly deform, rotate, shift, flip and grey-value-vary one training sample.

    Ronneberger et al. 2015, Sec. 3.1. The geometric transforms form one coordinate map
    (`biounet.augment.geometric.source_coordinates`), so every array is interpolated
    once; reads beyond the borders are mirrored. A configuration with everything off
    returns exact copies.

    Args:
        image: (Y, X) or (C, Y, X) floating image ((Z, Y, X) / (C, Z, Y, X) for ndim 3).
        labels: integer label image of the same spatial shape, or None.
        weights: weight map (eq. 2) of the same spatial shape, or None.
        config: parameters; None means `AugmentConfig()`, the paper's defaults.
        rng: generator or seed; the same seed gives the same result.
        backend: "torch" (fast) or "scipy" (reference), see the module notes.

    Returns:
        (image, labels, weights), shapes and dtypes unchanged; labels hold only ids
        present before, weights stay within their original [min, max].

    Raises:
        ValueError: on a bad backend or mismatched spatial shapes.
        TypeError: if the image is not floating or the labels are not integer.
    """
    config = _DEFAULT_CONFIG if config is None else config
    if backend not in WARP_BACKENDS:
        raise ValueError(f"backend must be one of {sorted(WARP_BACKENDS)}, got {backend!r}")
    spatial_shape = _check_inputs(image, labels, weights, config.ndim)
    rng = np.random.default_rng(rng)
    displacement, transform, change = _sample_parameters(config, spatial_shape, rng)

    # Image cubic (the paper's bicubic), labels nearest, weight map linear.
    roles = {"image": (image, config.image_order), "labels": (labels, 0), "weights": (weights, 1)}
    roles = {name: role for name, role in roles.items() if role[0] is not None}
    arrays = [array for array, _ in roles.values()]
    if transform.is_identity and not displacement.any():
        warped = [array.copy() for array in arrays]
    else:
        dtype = COORDINATE_DTYPES[backend]
        field = None
        if displacement.any():
            field = upsample_displacement(displacement, spatial_shape, dtype=dtype)
        coordinates = source_coordinates(
            spatial_shape, transform=transform, displacement_field=field, dtype=dtype
        )
        orders = [order for _, order in roles.values()]
        warped = WARP_BACKENDS[backend](arrays, coordinates, orders)
    results = dict(zip(roles, warped, strict=True))
    image_out = apply_intensity_change(results["image"], change)
    labels_out = results.get("labels")
    weights_out = results.get("weights")
    if weights_out is not None:
        # Linear interpolation is a convex combination; clipping removes float rounding.
        np.clip(weights_out, weights.min(), weights.max(), out=weights_out)
    return image_out, labels_out, weights_out


def _sample_parameters(
    config: AugmentConfig, spatial_shape: tuple[int, ...], rng: np.random.Generator
) -> tuple[np.ndarray, RigidTransform, IntensityChange]:
    # Fixed draw order: the same seed gives the same parameters for every backend.
    displacement = sample_displacement(
        spatial_shape,
        grid_shape=config.elastic_grid_shape,
        sigma=config.elastic_sigma_px,
        rng=rng,
    )
    transform = sample_rigid_transform(
        config.ndim,
        max_rotation_deg=config.max_rotation_deg,
        max_tilt_deg=config.max_tilt_deg,
        max_shift_px=config.max_shift_px,
        flip_probability=config.flip_probability,
        scale_range=config.scale_range,
        rng=rng,
    )
    change = sample_intensity_change(
        brightness_range=config.brightness_range,
        contrast_range=config.contrast_range,
        gamma_range=config.gamma_range,
        noise_sigma=config.noise_sigma,
        rng=rng,
    )
    return displacement, transform, change


def _check_inputs(image, labels, weights, ndim: int) -> tuple[int, ...]:
    check_warp_input(image, ndim, order=1, name="image")
    spatial_shape = image.shape[image.ndim - ndim :]
    for name, array, order in (("labels", labels, 0), ("weights", weights, 1)):
        if array is None:
            continue
        check_warp_input(array, ndim, order=order, name=name)
        if array.shape[array.ndim - ndim :] != spatial_shape:
            raise ValueError(
                f"{name} must have the image's spatial shape {spatial_shape}, "
                f"got shape {array.shape}"
            )
    if labels is not None and not (
        np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_
    ):
        raise TypeError(f"labels must be integer or bool, got dtype {labels.dtype}")
    return tuple(spatial_shape)


def _warp_scipy(arrays, coordinates, orders) -> list[np.ndarray]:
    return [warp(array, coordinates, order=order) for array, order in zip(arrays, orders)]


def _warp_torch(arrays, coordinates, orders) -> list[np.ndarray]:
    # torch is layer 1: loaded only when this backend is chosen.
    from biounet.augment import torch_backend

    return torch_backend.warp_arrays(arrays, coordinates, orders=orders)


WARP_BACKENDS: dict[str, _Warp] = {"scipy": _warp_scipy, "torch": _warp_torch}
# grid_sample reads float32 grids, so float32 maps lose nothing there and build faster.
COORDINATE_DTYPES = {"scipy": np.float64, "torch": np.float32}
_DEFAULT_CONFIG = AugmentConfig()
