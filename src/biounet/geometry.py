"""Shape arithmetic of the U-Net: output shapes, valid input sizes, halo, FLOPs.

For the paper's valid-convolution network (Ronneberger et al. 2015, Sec. 2) every
level loses 4 pixels to two unpadded 3x3 convolutions, every size entering a 2x2
max-pooling must be even, and each 2x2 up-convolution doubles the size. The valid
input sizes of a depth-d network are therefore 2**d * k + c(d), e.g. 16k + 12 for
the default (572 = 16 * 35 + 12), and the output is the input minus twice the halo
(92 px per side for the default: 572 -> 388).

The same holds per axis for the 3-D U-Net (Cicek et al. 2016: 3x3x3 convolutions,
2x2x2 pooling). For anisotropic stacks a level may pool only Y and X (`UNetConfig.pool_z`,
a (1, 2, 2) pooling and up-convolution); along Z that level then has pooling factor 1,
so the Z axis loses 4 voxels there without halving. Every function taking `pooling`
accepts the factor of each level along its axis (1 or 2; default 2 at every level);
`pooling_per_axis(config)` gives them, and the `config_*` functions apply them per axis.
The valid sizes of an axis step by the product of its factors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from biounet.config import UNetConfig

_CONV_LOSS = 4  # two unpadded 3x3 convolutions lose 2 px each


Pooling = Sequence[int] | None  # pooling factor (1 or 2) of each level along one axis


def output_size(
    size: int, *, depth: int = 4, padding: str = "valid", axis: int = 0, pooling: Pooling = None
) -> int:
    """Return the output size of one spatial axis of length `size`.

    Example:
        >>> output_size(572)
        388
        >>> output_size(512, padding="same")
        512
        >>> output_size(28, depth=2, pooling=(1, 2))  # Z of an anisotropic 3-D U-Net
        4

    Raises:
        ValueError: if `size` cannot pass through the network; the message names the
            nearest valid input sizes.
    """
    factors = _factors(pooling, depth)
    if padding == "same":
        step = math.prod(factors)
        if size < 1 or size % step:
            raise ValueError(
                f"input size {size} on axis {axis} must be a positive multiple of "
                f"{step} for a 'same'-padded depth-{depth} U-Net; nearest valid sizes: "
                f"{_format_nearest(size, depth, padding, factors)}"
            )
        return size
    result = _valid_output_size(size, factors)
    if result is None:
        raise ValueError(
            f"input size {size} on axis {axis} is not valid for a depth-{depth} U-Net with "
            f"unpadded convolutions; nearest valid sizes: "
            f"{_format_nearest(size, depth, padding, factors)}"
        )
    return result


def _factors(pooling: Pooling, depth: int) -> tuple[int, ...]:
    if pooling is None:
        return (2,) * depth
    factors = tuple(int(factor) for factor in pooling)
    if len(factors) != depth or any(factor not in (1, 2) for factor in factors):
        raise ValueError(
            f"pooling must give a factor 1 or 2 for each of the {depth} levels, "
            f"got {tuple(pooling)}"
        )
    return factors


def _valid_output_size(size: int, factors: Sequence[int]) -> int | None:
    current = size
    for factor in factors:  # contracting path: conv, conv, then max-pool
        current -= _CONV_LOSS
        if current < factor or current % factor:
            return None
        current //= factor
    current -= _CONV_LOSS  # bottleneck convs
    if current < 1:
        return None
    for factor in reversed(factors):  # expansive path: up-conv, conv, conv
        current = factor * current - _CONV_LOSS
        if current < 1:
            return None
    return current


def output_shape(
    input_shape: Sequence[int],
    *,
    depth: int = 4,
    padding: str = "valid",
    pooling: Sequence[Pooling] | None = None,
) -> tuple[int, ...]:
    """Return the spatial output shape for `input_shape` (Ronneberger et al. 2015, Fig. 1).

    Args:
        pooling: per axis, the pooling factor of each level (see `pooling_per_axis`);
            None pools every axis by 2 at every level.

    Example:
        >>> output_shape((572, 572))
        (388, 388)
        >>> output_shape((572, 380), depth=3)
        (484, 292)
        >>> output_shape((28, 44, 44), depth=2, pooling=((1, 2), (2, 2), (2, 2)))
        (4, 4, 4)
    """
    per_axis = (None,) * len(input_shape) if pooling is None else tuple(pooling)
    if len(per_axis) != len(input_shape):
        raise ValueError(
            f"pooling gives {len(per_axis)} axes but input_shape {tuple(input_shape)} has "
            f"{len(input_shape)}"
        )
    return tuple(
        output_size(int(size), depth=depth, padding=padding, axis=axis, pooling=factors)
        for axis, (size, factors) in enumerate(zip(input_shape, per_axis))
    )


def is_valid_input_size(
    size: int, *, depth: int = 4, padding: str = "valid", pooling: Pooling = None
) -> bool:
    """Return True if an axis of length `size` passes through the network.

    Example:
        >>> [s for s in range(560, 600) if is_valid_input_size(s)]
        [572, 588]
    """
    factors = _factors(pooling, depth)
    if padding == "same":
        return size >= 1 and size % math.prod(factors) == 0
    return _valid_output_size(size, factors) is not None


def min_input_size(*, depth: int = 4, padding: str = "valid", pooling: Pooling = None) -> int:
    """Return the smallest valid input size.

    Example:
        >>> min_input_size(), output_size(min_input_size())
        (188, 4)
        >>> min_input_size(depth=2, pooling=(1, 2))
        26
    """
    factors = _factors(pooling, depth)
    if padding == "same":
        return math.prod(factors)
    size = 1
    while _valid_output_size(size, factors) is None:
        size += 1
    return size


def nearest_valid_sizes(
    size: int, *, depth: int = 4, padding: str = "valid", pooling: Pooling = None
) -> tuple[int | None, int]:
    """Return the largest valid input size <= `size` (None if none) and the smallest >= `size`.

    Example:
        >>> nearest_valid_sizes(500)
        (492, 508)
        >>> nearest_valid_sizes(572)
        (572, 572)
        >>> nearest_valid_sizes(29, depth=2, pooling=(1, 2))
        (28, 30)
    """
    factors = _factors(pooling, depth)
    smallest = min_input_size(depth=depth, padding=padding, pooling=factors)
    step = math.prod(factors)  # valid sizes form an arithmetic progression with this step
    if size <= smallest:
        return (smallest if size == smallest else None), smallest
    below = smallest + (size - smallest) // step * step
    above = below if below == size else below + step
    return below, above


def _format_nearest(size: int, depth: int, padding: str, factors: Sequence[int]) -> str:
    below, above = nearest_valid_sizes(size, depth=depth, padding=padding, pooling=factors)
    return f"{below} and {above}" if below is not None else f"{above} (the minimum)"


def valid_input_size(
    size: int, *, depth: int = 4, padding: str = "valid", pooling: Pooling = None
) -> int:
    """Return the smallest valid input size >= `size`.

    Example:
        >>> valid_input_size(512 + 2 * 92)
        700
    """
    return nearest_valid_sizes(size, depth=depth, padding=padding, pooling=pooling)[1]


def halo(*, depth: int = 4, padding: str = "valid", pooling: Pooling = None) -> int:
    """Return the context in pixels each side of an output pixel: (input - output) / 2.

    For "same" padding it is the same number: the margin a tile needs so that its
    cropped centre sees the context a valid network would (zero padding still makes
    tiled results differ slightly from a whole-image pass there).

    Example:
        >>> halo(), halo(depth=3), halo(depth=2)
        (92, 44, 20)
        >>> halo(depth=2, pooling=(1, 2))  # Z of a net pooling Z at level 1 only
        12
    """
    del padding  # the context an output pixel sees does not depend on the padding mode
    factors = _factors(pooling, depth)
    smallest = min_input_size(depth=depth, pooling=factors)
    return (smallest - output_size(smallest, depth=depth, pooling=factors)) // 2


def pooling_per_level(config: UNetConfig) -> tuple[tuple[int, ...], ...]:
    """Return the max-pooling (and up-convolution) kernel of each level, one factor per axis.

    2 along every axis (Ronneberger et al. 2015; Cicek et al. 2016: 2x2x2), except
    that a 3-D level with `config.pool_z[level]` False pools (1, 2, 2).

    Example:
        >>> pooling_per_level(UNetConfig(depth=2, ndim=3, pool_z=(False, True)))
        ((1, 2, 2), (2, 2, 2))
    """
    pool_z = config.pool_z if config.pool_z is not None else (True,) * config.depth
    return tuple(
        (2 if is_pooled else 1,) + (2,) * (config.ndim - 1) for is_pooled in pool_z
    )


def pooling_per_axis(
    config: UNetConfig, n_axes: int | None = None
) -> tuple[tuple[int, ...], ...]:
    """Return, for each spatial axis, the pooling factor of each level.

    `n_axes` (default `config.ndim`) may differ from ndim only for isotropic networks,
    whose axes are all alike.

    Example:
        >>> pooling_per_axis(UNetConfig(depth=2, ndim=3, pool_z=(False, True)))
        ((1, 2), (2, 2), (2, 2))
    """
    n_axes = config.ndim if n_axes is None else n_axes
    if config.pool_z is None:
        return ((2,) * config.depth,) * n_axes
    if n_axes != config.ndim:
        raise ValueError(
            f"a shape with {n_axes} axes does not fit this {config.ndim}-D network with "
            f"pool_z {config.pool_z}; give (Z, Y, X)"
        )
    return tuple(zip(*pooling_per_level(config)))


def config_output_shape(config: UNetConfig, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Return `output_shape` for the depth, padding and pooling of `config`, checking ndim.

    Example:
        >>> config_output_shape(UNetConfig(depth=2, ndim=3, pool_z=(False, True)), (28, 44, 44))
        (4, 4, 4)
    """
    if len(input_shape) != config.ndim:
        raise ValueError(
            f"input_shape {tuple(input_shape)} has {len(input_shape)} axes; "
            f"the network is {config.ndim}-D"
        )
    return output_shape(
        input_shape, depth=config.depth, padding=config.padding, pooling=pooling_per_axis(config)
    )


def config_halo(config: UNetConfig) -> tuple[int, ...]:
    """Return the halo of each spatial axis of the network.

    Example:
        >>> anisotropic = UNetConfig(depth=2, ndim=3, pool_z=(False, True))
        >>> config_halo(UNetConfig()), config_halo(anisotropic)
        ((92, 92), (12, 20, 20))
    """
    return tuple(
        halo(depth=config.depth, padding=config.padding, pooling=factors)
        for factors in pooling_per_axis(config)
    )


def config_min_input_shape(config: UNetConfig) -> tuple[int, ...]:
    """Return the smallest valid input size of each spatial axis.

    Example:
        >>> config_min_input_shape(UNetConfig(depth=2, ndim=3, pool_z=(False, True)))
        (26, 44, 44)
    """
    return tuple(
        min_input_size(depth=config.depth, padding=config.padding, pooling=factors)
        for factors in pooling_per_axis(config)
    )


def config_valid_input_shape(config: UNetConfig, shape: Sequence[int]) -> tuple[int, ...]:
    """Return the smallest valid input shape >= `shape`, axis by axis.

    Example:
        >>> anisotropic = UNetConfig(depth=2, ndim=3, pool_z=(False, True))
        >>> config_valid_input_shape(anisotropic, (29, 50, 50))
        (30, 52, 52)
    """
    return tuple(
        valid_input_size(int(size), depth=config.depth, padding=config.padding, pooling=factors)
        for size, factors in zip(shape, pooling_per_axis(config, len(shape)), strict=True)
    )


def config_size_step(config: UNetConfig) -> tuple[int, ...]:
    """Return per axis the step between valid input sizes: the product of its pooling factors.

    Tile offsets that are multiples of it keep every tile on the pooling grid.

    Example:
        >>> anisotropic = UNetConfig(depth=2, ndim=3, pool_z=(False, True))
        >>> config_size_step(UNetConfig()), config_size_step(anisotropic)
        ((16, 16), (2, 4, 4))
    """
    return tuple(math.prod(factors) for factors in pooling_per_axis(config))


def count_flops(config: UNetConfig, input_shape: Sequence[int]) -> int:
    """Return the multiply-add FLOPs (2 per MAC) of one forward pass on `input_shape`.

    Counts convolutions, up-convolutions and the final 1x1 convolution; pooling,
    ReLU and normalisation are negligible and left out.

    Example:
        >>> round(count_flops(UNetConfig(), (572, 572)) / 1e9, 1)
        300.9
    """
    depth, padding, ndim = config.depth, config.padding, config.ndim
    factors = pooling_per_level(config)
    kernel = 3**ndim
    loss = 0 if padding == "same" else 2
    shape = [int(size) for size in input_shape]
    channels_in, channels = config.in_channels, config.base_channels
    flops = 0

    def conv_pair(shape: list[int], c_in: int, c_out: int) -> list[int]:
        nonlocal flops
        for c in (c_in, c_out):
            shape = [size - loss for size in shape]
            flops += 2 * kernel * c * c_out * _product(shape)
        return shape

    widths = []
    for level in range(depth + 1):
        shape = conv_pair(shape, channels_in, channels)
        widths.append(channels)
        if level < depth:
            shape = [size // factor for size, factor in zip(shape, factors[level])]
            channels_in, channels = channels, channels * 2
    for level in reversed(range(depth)):
        half = widths[level]
        shape = [size * factor for size, factor in zip(shape, factors[level])]
        up_in = widths[level + 1]
        if config.upsampling == "upconv":
            flops += 2 * up_in * half * _product(shape)
        else:  # bilinear upsampling followed by a 1x1 convolution
            flops += 2 * up_in * half * _product(shape)
        shape = conv_pair(shape, 2 * half, half)
    flops += 2 * widths[0] * config.n_classes * _product(shape)
    return flops


def _product(values: Sequence[int]) -> int:
    result = 1
    for value in values:
        result *= value
    return result
