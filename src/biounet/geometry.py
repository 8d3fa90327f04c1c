"""Shape arithmetic of the U-Net: output shapes, valid input sizes, halo, FLOPs.

For the paper's valid-convolution network (Ronneberger et al. 2015, Sec. 2) every
level loses 4 pixels to two unpadded 3x3 convolutions, every size entering a 2x2
max-pooling must be even, and each 2x2 up-convolution doubles the size. The valid
input sizes of a depth-d network are therefore 2**d * k + c(d), e.g. 16k + 12 for
the default (572 = 16 * 35 + 12), and the output is the input minus twice the halo
(92 px per side for the default: 572 -> 388).
"""

from __future__ import annotations

from collections.abc import Sequence

from biounet.config import UNetConfig

_CONV_LOSS = 4  # two unpadded 3x3 convolutions lose 2 px each


def output_size(size: int, *, depth: int = 4, padding: str = "valid", axis: int = 0) -> int:
    """Return the output size of one spatial axis of length `size`.

    Example:
        >>> output_size(572)
        388
        >>> output_size(512, padding="same")
        512

    Raises:
        ValueError: if `size` cannot pass through the network; the message names the
            nearest valid input sizes.
    """
    if padding == "same":
        if size < 1 or size % (2**depth):
            raise ValueError(
                f"input size {size} on axis {axis} must be a positive multiple of "
                f"{2**depth} for a 'same'-padded depth-{depth} U-Net; nearest valid sizes: "
                f"{_format_nearest(size, depth, padding)}"
            )
        return size
    result = _valid_output_size(size, depth)
    if result is None:
        raise ValueError(
            f"input size {size} on axis {axis} is not valid for a depth-{depth} U-Net with "
            f"unpadded convolutions; nearest valid sizes: {_format_nearest(size, depth, padding)}"
        )
    return result


def _valid_output_size(size: int, depth: int) -> int | None:
    current = size
    for _ in range(depth):  # contracting path: conv, conv, then 2x2 max-pool
        current -= _CONV_LOSS
        if current < 2 or current % 2:
            return None
        current //= 2
    current -= _CONV_LOSS  # bottleneck convs
    if current < 1:
        return None
    for _ in range(depth):  # expansive path: 2x2 up-conv, conv, conv
        current = 2 * current - _CONV_LOSS
        if current < 1:
            return None
    return current


def output_shape(
    input_shape: Sequence[int], *, depth: int = 4, padding: str = "valid"
) -> tuple[int, ...]:
    """Return the spatial output shape for `input_shape` (Ronneberger et al. 2015, Fig. 1).

    Example:
        >>> output_shape((572, 572))
        (388, 388)
        >>> output_shape((572, 380), depth=3)
        (484, 292)
    """
    return tuple(
        output_size(int(size), depth=depth, padding=padding, axis=axis)
        for axis, size in enumerate(input_shape)
    )


def is_valid_input_size(size: int, *, depth: int = 4, padding: str = "valid") -> bool:
    """Return True if an axis of length `size` passes through the network.

    Example:
        >>> [s for s in range(560, 600) if is_valid_input_size(s)]
        [572, 588]
    """
    if padding == "same":
        return size >= 1 and size % (2**depth) == 0
    return _valid_output_size(size, depth) is not None


def min_input_size(*, depth: int = 4, padding: str = "valid") -> int:
    """Return the smallest valid input size.

    Example:
        >>> min_input_size(), output_size(min_input_size())
        (188, 4)
    """
    if padding == "same":
        return 2**depth
    size = 1
    while _valid_output_size(size, depth) is None:
        size += 1
    return size


def nearest_valid_sizes(
    size: int, *, depth: int = 4, padding: str = "valid"
) -> tuple[int | None, int]:
    """Return the largest valid input size <= `size` (None if none) and the smallest >= `size`.

    Example:
        >>> nearest_valid_sizes(500)
        (492, 508)
        >>> nearest_valid_sizes(572)
        (572, 572)
    """
    smallest = min_input_size(depth=depth, padding=padding)
    step = 2**depth  # valid sizes form an arithmetic progression with this step
    if size <= smallest:
        return (smallest if size == smallest else None), smallest
    below = smallest + (size - smallest) // step * step
    above = below if below == size else below + step
    return below, above


def _format_nearest(size: int, depth: int, padding: str) -> str:
    below, above = nearest_valid_sizes(size, depth=depth, padding=padding)
    return f"{below} and {above}" if below is not None else f"{above} (the minimum)"


def valid_input_size(size: int, *, depth: int = 4, padding: str = "valid") -> int:
    """Return the smallest valid input size >= `size`.

    Example:
        >>> valid_input_size(512 + 2 * 92)
        700
    """
    return nearest_valid_sizes(size, depth=depth, padding=padding)[1]


def halo(*, depth: int = 4, padding: str = "valid") -> int:
    """Return the context in pixels each side of an output pixel: (input - output) / 2.

    For "same" padding it is the same number: the margin a tile needs so that its
    cropped centre sees the context a valid network would (zero padding still makes
    tiled results differ slightly from a whole-image pass there).

    Example:
        >>> halo(), halo(depth=3), halo(depth=2)
        (92, 44, 20)
    """
    del padding  # the context an output pixel sees does not depend on the padding mode
    smallest = min_input_size(depth=depth)
    return (smallest - output_size(smallest, depth=depth)) // 2


def config_output_shape(config: UNetConfig, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Return `output_shape` for the depth and padding of `config`, checking ndim."""
    if len(input_shape) != config.ndim:
        raise ValueError(
            f"input_shape {tuple(input_shape)} has {len(input_shape)} axes; "
            f"the network is {config.ndim}-D"
        )
    return output_shape(input_shape, depth=config.depth, padding=config.padding)


def count_flops(config: UNetConfig, input_shape: Sequence[int]) -> int:
    """Return the multiply-add FLOPs (2 per MAC) of one forward pass on `input_shape`.

    Counts convolutions, up-convolutions and the final 1x1 convolution; pooling,
    ReLU and normalisation are negligible and left out.

    Example:
        >>> round(count_flops(UNetConfig(), (572, 572)) / 1e9, 1)
        300.9
    """
    depth, padding, ndim = config.depth, config.padding, config.ndim
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
            shape = [size // 2 for size in shape]
            channels_in, channels = channels, channels * 2
    for level in reversed(range(depth)):
        half = widths[level]
        shape = [size * 2 for size in shape]
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
