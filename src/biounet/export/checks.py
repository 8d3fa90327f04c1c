"""Check an export before it is written: the tiles it is traced and compared on, and the comparison.

Every export format passes the same check: the exported network and the PyTorch module
must give the same class probabilities, within `TOLERANCE`, on seeded random tiles of
two different shapes and batch sizes, which also shows that the batch and spatial axes
of the export are not frozen to the traced shape.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from biounet.config import UNetConfig
from biounet.geometry import (
    config_min_input_shape,
    config_size_step,
    is_valid_input_size,
    nearest_valid_sizes,
    pooling_per_axis,
)

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max abs difference of probabilities between an export and PyTorch
_CHECK_SEED = 0


def trace_shape(config: UNetConfig) -> tuple[int, ...]:
    """Return the spatial shape an export is traced on: `min + step * n` per axis.

    n >= 2 and the sizes distinct, because torch.export specialises an axis whose
    example size is 0 or 1 steps, or equal to another axis, to a constant. Min and
    step are per axis (`config_min_input_shape`, `config_size_step`), so an
    anisotropic network (`pool_z`) is traced on its own valid sizes.

    Example:
        >>> trace_shape(UNetConfig())
        (220, 236)
        >>> trace_shape(UNetConfig(depth=2, ndim=3))
        (52, 56, 60)
        >>> trace_shape(UNetConfig(depth=2, ndim=3, pool_z=(False, True)))
        (30, 56, 60)
    """
    shape: list[int] = []
    for axis, (smallest, step) in enumerate(
        zip(config_min_input_shape(config), config_size_step(config), strict=True)
    ):
        size = smallest + step * (2 + axis)
        while size in shape:
            size += step
        shape.append(size)
    return tuple(shape)


def check_inputs(config: UNetConfig, tile_shape: Sequence[int] | None = None) -> list[np.ndarray]:
    """Return the seeded random batches an export is checked on, float32 (B, C, *spatial).

    The first batch (2 tiles of `trace_shape`) is the one traced; the second (1 tile
    of `tile_shape`, or of one step less/more than the trace per axis) must agree too.

    Raises:
        ValueError: if `tile_shape` is not a valid input shape of the network.
    """
    traced = trace_shape(config)
    if tile_shape is None:
        other = tuple(
            size + step * (1 if axis % 2 else -1)
            for axis, (size, step) in enumerate(zip(traced, config_size_step(config)))
        )
    else:
        other = check_tile_shape(config, tile_shape)
    rng = np.random.default_rng(_CHECK_SEED)
    return [
        rng.random((2, config.in_channels, *traced), dtype=np.float32),
        rng.random((1, config.in_channels, *other), dtype=np.float32),
    ]


def check_tile_shape(config: UNetConfig, tile_shape: Sequence[int]) -> tuple[int, ...]:
    """Return `tile_shape` as a tuple after checking it is a valid input shape.

    Raises:
        ValueError: naming the nearest valid sizes of an invalid axis.
    """
    shape = tuple(int(size) for size in tile_shape)
    if len(shape) != config.ndim:
        raise ValueError(
            f"tile_shape {shape} needs {config.ndim} sizes for this {config.ndim}-D network"
        )
    names = "ZYX"[3 - config.ndim :]
    for name, size, factors in zip(names, shape, pooling_per_axis(config)):
        kwargs = {"depth": config.depth, "padding": config.padding, "pooling": factors}
        if not is_valid_input_size(size, **kwargs):
            below, above = nearest_valid_sizes(size, **kwargs)
            nearest = f"{below} and {above}" if below is not None else f"{above} (the minimum)"
            # valid sizes differ per axis in anisotropic networks, so the axis is named
            raise ValueError(
                f"tile_shape {shape}: {name} = {size} is not a valid input size of this "
                f"network; nearest valid sizes along {name} are {nearest}"
            )
    return shape


def frozen_copy(network: nn.Module) -> nn.Module:
    """Return a CPU copy of `network` in eval mode; the caller's module is left untouched."""
    network = copy.deepcopy(network).cpu().eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def compare_with_pytorch(
    reference: nn.Module,
    run_export: Callable[[np.ndarray], np.ndarray],
    inputs: Sequence[np.ndarray],
    *,
    name: str,
    outputs_scores: bool = True,
) -> float:
    """Run `reference` and an exported network on `inputs`; return the max abs difference.

    Compared are softmax probabilities (eq. 1 of Ronneberger et al. 2015) when the
    networks output class scores, so the tolerance means the same for any weights.

    Raises:
        ValueError: if shapes differ or the difference exceeds `TOLERANCE`; the
            export must then not be written.
    """
    largest = 0.0
    for batch in inputs:
        with torch.no_grad():
            expected = reference(torch.from_numpy(batch))
        actual = torch.from_numpy(np.asarray(run_export(batch)))
        if actual.shape != expected.shape:
            raise ValueError(
                f"{name} export gives shape {tuple(actual.shape)} for input {batch.shape}; "
                f"PyTorch gives {tuple(expected.shape)}"
            )
        if outputs_scores:
            expected, actual = torch.softmax(expected, dim=1), torch.softmax(actual, dim=1)
        difference = float((expected - actual).abs().max())
        largest = max(largest, difference)
        if not difference <= TOLERANCE:  # also catches NaN
            raise ValueError(
                f"{name} export disagrees with PyTorch on input {batch.shape}: max abs "
                f"difference of probabilities {difference:.3g} > {TOLERANCE:g}; not written"
            )
    logger.info("%s export agrees with PyTorch: max abs difference %.3g", name, largest)
    return largest
