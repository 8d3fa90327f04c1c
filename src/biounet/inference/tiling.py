"""Overlap-tile grid (Ronneberger et al. 2015, Fig. 2): output tiles, input windows, mirroring.

Pure arithmetic on shapes plus mirror-extrapolated window reads; no torch. Which tile
sizes to use (covering, cheapest within a budget) is `biounet.inference.tile_shape`.

Each tile's output region starts at a multiple of `step`, and `step` is a multiple
of 2**depth, so every tile's input window sits on the pooling grid of one virtual
whole-image pass over the mirror-extended image. For a valid-convolution network the
tiled result therefore *equals* that whole-image pass. The last tile may reach past
the image; the surplus is computed on mirrored pixels and cropped.

Everything is per axis: an anisotropic 3-D U-Net (`UNetConfig.pool_z`, Cicek et al.
2016 with some levels pooling only Y and X) has a smaller halo along Z and a Z step
that is a multiple of 2**(levels pooling Z) (`biounet.geometry.config_size_step`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from biounet.config import UNetConfig
from biounet.geometry import halo as network_halo
from biounet.geometry import (
    is_valid_input_size,
    min_input_size,
    nearest_valid_sizes,
    pooling_per_axis,
)


def mirror_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Return indices into an axis of length `size` for positions start..stop-1, mirrored.

    Mirroring reflects about the first and last pixel without repeating them (numpy's
    "reflect"), repeatedly if the range reaches further than the axis is long.

    Example:
        >>> mirror_indices(-3, 6, 4).tolist()
        [3, 2, 1, 0, 1, 2, 3, 2, 1]
    """
    positions = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    positions = np.mod(positions, period)
    return np.where(positions < size, positions, period - positions)


def read_window(array, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Read a window of the last len(start) axes, mirror-extrapolated beyond the borders.

    `array` may be any array-like supporting basic slicing (numpy, zarr, dask); only
    the in-bounds bounding box of the window is read from it.
    """
    n_spatial = len(start)
    spatial_shape = array.shape[-n_spatial:]
    indices = [
        mirror_indices(begin, begin + length, size)
        for begin, length, size in zip(start, shape, spatial_shape)
    ]
    box = tuple(slice(int(index.min()), int(index.max()) + 1) for index in indices)
    block = np.asarray(array[(Ellipsis, *box)])
    for axis, (index, piece) in enumerate(zip(indices, box)):
        local = index - piece.start
        if not (local.size == block.shape[axis - n_spatial] and np.all(np.diff(local) == 1)):
            block = np.take(block, local, axis=axis - n_spatial)
    return block


@dataclass(frozen=True)
class Tile:
    """One tile: where its input window starts, and which output region it fills.

    `output_start`/`output_stop` are image coordinates clipped to the image; the
    network's output for this tile is cropped from `crop_start` on the tile's own
    output axis by axis.
    """

    input_start: tuple[int, ...]
    output_start: tuple[int, ...]
    output_stop: tuple[int, ...]
    crop_start: tuple[int, ...]

    @property
    def output_slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.output_start, self.output_stop))

    def crop_slices(self) -> tuple[slice, ...]:
        """Slices of the network output of this tile that land in the image."""
        return tuple(
            slice(c, c + b - a)
            for c, a, b in zip(self.crop_start, self.output_start, self.output_stop)
        )


@dataclass(frozen=True)
class TileGrid:
    """A regular overlap-tile grid over `image_shape` for one network geometry.

    Attributes:
        image_shape: spatial shape of the image.
        tile_shape: input window shape fed to the network (a valid input shape).
        step: distance between tile output origins per axis, a multiple of the axis's
            pooling grid (2**depth unless a 3-D level does not pool Z).
        halo: context pixels per side and axis, between a window's start and its output.
        crop: offset of the used output inside the network's output per axis (0 for
            valid padding; the halo for same padding, whose borders are zero-padded).
    """

    image_shape: tuple[int, ...]
    tile_shape: tuple[int, ...]
    step: tuple[int, ...]
    halo: tuple[int, ...]
    crop: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        """Number of tiles per axis."""
        return tuple(
            _count(size, tile - 2 * margin, step)
            for size, tile, step, margin in zip(
                self.image_shape, self.tile_shape, self.step, self.halo
            )
        )

    def __len__(self) -> int:
        return math.prod(self.counts)

    def __iter__(self) -> Iterator[Tile]:
        for index in itertools.product(*(range(count) for count in self.counts)):
            yield self.tile(index)

    def tile(self, index: Sequence[int]) -> Tile:
        """Return the tile at grid position `index` (one count per axis, from 0)."""
        start = tuple(i * step for i, step in zip(index, self.step))
        return Tile(
            input_start=tuple(s - margin for s, margin in zip(start, self.halo)),
            output_start=start,
            output_stop=tuple(
                min(s + step_size + self._overhang(axis, i), size)
                for axis, (s, i, step_size, size) in enumerate(
                    zip(start, index, self.step, self.image_shape)
                )
            ),
            crop_start=self.crop,
        )

    def overlapping(self, start: Sequence[int], stop: Sequence[int]) -> list[Tile]:
        """Return the tiles whose output overlaps the box [start, stop), in grid order.

        Computed per axis from the regular layout, so a block of a huge grid costs its
        own tiles only.

        Example:
            >>> grid = make_tile_grid(UNetConfig(depth=1), (40, 40), (28, 28))
            >>> grid.step
            (12, 12)
            >>> [tile.output_start for tile in grid.overlapping((0, 10), (5, 30))]
            [(0, 0), (0, 12), (0, 24)]
        """
        ranges = []
        for begin, end, step, count in zip(start, stop, self.step, self.counts):
            if end <= begin:
                return []
            first, last = (min(position // step, count - 1) for position in (begin, end - 1))
            ranges.append(range(first, last + 1))
        return [self.tile(index) for index in itertools.product(*ranges)]

    def _overhang(self, axis: int, index: int) -> int:
        # The last tile along an axis fills all of its output, not just one step.
        used = self.tile_shape[axis] - 2 * self.halo[axis]
        return used - self.step[axis] if index == self.counts[axis] - 1 else 0


def _count(size: int, used: int, step: int) -> int:
    # the last tile fills `used` pixels, every other one `step`
    return 1 if size <= used else 1 + math.ceil((size - used) / step)


def make_tile_grid(
    config: UNetConfig, image_shape: Sequence[int], tile_shape: Sequence[int]
) -> TileGrid:
    """Build the tile grid for a given input window shape, checking it against the network.

    Raises:
        ValueError: if `tile_shape` has the wrong number of axes, is not a valid input
            size of the network (the message names the nearest valid ones), or is too
            small to produce one pooling-grid step (2**depth) of output pixels per axis.
    """
    image_shape = tuple(int(size) for size in image_shape)
    tile_shape = tuple(int(size) for size in tile_shape)
    depth, padding = config.depth, config.padding
    if len(tile_shape) != len(image_shape):
        raise ValueError(
            f"tile_shape {tile_shape} must have {len(image_shape)} axes like the image "
            f"{image_shape}"
        )
    margins, steps = [], []
    for axis, (size, pooling) in enumerate(
        zip(tile_shape, pooling_per_axis(config, len(tile_shape)))
    ):
        if size <= 0:
            raise ValueError(f"tile_shape must be positive, got {tile_shape}")
        if not is_valid_input_size(size, depth=depth, padding=padding, pooling=pooling):
            below, above = nearest_valid_sizes(size, depth=depth, padding=padding, pooling=pooling)
            nearest = f"{below} and {above}" if below is not None else f"{above} (the minimum)"
            raise ValueError(
                f"tile_shape {tile_shape} is not a valid input for a depth-{depth} "
                f"{padding}-padded U-Net on axis {axis}; nearest valid sizes are {nearest}"
            )
        margin = network_halo(depth=depth, pooling=pooling)
        grid_step = math.prod(pooling)
        step = (size - 2 * margin) // grid_step * grid_step
        if step < grid_step:
            smallest = smallest_tile_size(config, axis=axis)
            raise ValueError(
                f"tile_shape {tile_shape} is too small on axis {axis}: its output must cover "
                f"at least {grid_step} px; use {smallest} or more"
            )
        margins.append(margin)
        steps.append(step)
    return TileGrid(
        image_shape=image_shape,
        tile_shape=tile_shape,
        step=tuple(steps),
        halo=tuple(margins),
        crop=tuple(margins) if padding == "same" else (0,) * len(margins),
    )


def axis_pooling(config: UNetConfig, axis: int) -> tuple[int, ...]:
    # axis counts from the front like array axes; -1 is X, pooled at every level
    per_axis = pooling_per_axis(config)
    if not -len(per_axis) <= axis < len(per_axis):
        raise ValueError(f"axis must be in [-{config.ndim}, {config.ndim}), got {axis}")
    return per_axis[axis]


def smallest_tile_size(config: UNetConfig, *, axis: int = -1) -> int:
    """Return the smallest tile input size along `axis` whose output covers one grid step.

    The grid step is 2**depth, or 2**(levels pooling Z) along Z of an anisotropic
    3-D network; the default axis, X, is pooled at every level.

    Example:
        >>> smallest_tile_size(UNetConfig())
        204
        >>> smallest_tile_size(UNetConfig(ndim=3, depth=2, pool_z=(False, True)), axis=0)
        26
    """
    pooling = axis_pooling(config, axis)
    margin = network_halo(depth=config.depth, pooling=pooling)
    size = max(
        min_input_size(depth=config.depth, padding=config.padding, pooling=pooling),
        2 * margin + math.prod(pooling),
    )
    return nearest_valid_sizes(
        size, depth=config.depth, padding=config.padding, pooling=pooling
    )[1]
