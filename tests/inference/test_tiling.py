"""Overlap-tile grid: coverage, pooling-grid alignment, mirroring, tile choice."""

import math

import numpy as np
import pytest

from biounet.config import UNetConfig
from biounet.geometry import (
    config_halo,
    config_output_shape,
    config_size_step,
    halo,
    output_shape,
)
from biounet.inference.tile_shape import choose_tile_shape, covering_tile_size, whole_image_grid
from biounet.inference.tiling import make_tile_grid, mirror_indices, read_window, smallest_tile_size


@pytest.mark.parametrize("size", [1, 2, 3, 7, 20])
@pytest.mark.parametrize(("before", "after"), [(0, 0), (3, 5), (25, 40)])
def test_mirror_indices_match_numpy_reflect(size, before, after):
    axis = np.arange(size)
    expected = np.pad(axis, (before, after), mode="reflect") if size > 1 else np.zeros(before + size + after, int)
    assert mirror_indices(-before, size + after, size).tolist() == expected.tolist()


def test_read_window_matches_padded_crop(rng):
    image = rng.random((3, 17, 23))
    padded = np.pad(image, ((0, 0), (60, 60), (60, 60)), mode="reflect")
    for start in [(-40, -40), (-5, 3), (10, 15), (0, 0)]:
        shape = (30, 50)
        window = read_window(image, start, shape)
        expected = padded[:, start[0] + 60 : start[0] + 60 + shape[0], start[1] + 60 : start[1] + 60 + shape[1]]
        np.testing.assert_array_equal(window, expected)


@pytest.mark.parametrize("image_shape", [(1, 1), (5, 300), (300, 277), (388, 388), (1000, 777)])
@pytest.mark.parametrize("tile_shape", [(204, 204), (572, 572), (572, 300)])
def test_tiles_cover_image_exactly_once_on_pooling_grid(image_shape, tile_shape):
    config = UNetConfig()
    grid = make_tile_grid(config, image_shape, tile_shape)
    count = np.zeros(image_shape, dtype=int)
    tile_output = output_shape(tile_shape)
    for tile in grid:
        count[tile.output_slices] += 1
        assert all(start % 16 == 0 for start in tile.output_start)
        assert all(s - i == halo() for s, i in zip(tile.output_start, tile.input_start))
        # the pasted part must lie inside the tile's network output
        for piece, size in zip(tile.crop_slices(), tile_output):
            assert 0 <= piece.start < piece.stop <= size
    assert (count == 1).all()


def test_invalid_tile_shapes_are_refused():
    config = UNetConfig()
    with pytest.raises(ValueError, match="nearest valid sizes are 492 and 508"):
        make_tile_grid(config, (1000, 1000), (500, 572))
    with pytest.raises(ValueError, match="too small"):
        make_tile_grid(config, (1000, 1000), (188, 188))
    with pytest.raises(ValueError, match="positive"):
        make_tile_grid(config, (1000, 1000), (0, 572))
    with pytest.raises(ValueError, match="2 axes"):
        make_tile_grid(config, (1000, 1000), (572,))


def test_covering_tile_size_is_minimal():
    config = UNetConfig()
    for size in [1, 100, 388, 389, 1000, 2048]:
        for count in [1, 2, 3]:
            tile = covering_tile_size(config, size, count)
            grid = make_tile_grid(config, (size,), (tile,))
            assert len(grid) <= count
            if tile - 16 >= 204:
                assert len(make_tile_grid(config, (size,), (tile - 16,))) > count


def test_choose_tile_shape_respects_budget_and_minimises_work():
    config = UNetConfig()
    for budget in [204**2, 600**2, 1300**2, 3000**2]:
        tile_shape = choose_tile_shape(config, (2048, 2048), max_tile_pixels=budget)
        assert math.prod(tile_shape) <= budget
        work = len(make_tile_grid(config, (2048, 2048), tile_shape)) * math.prod(tile_shape)
        for other in [(204, 204), (572, 572), (1212, 1212), (700, 700)]:
            if math.prod(other) <= budget:
                other_work = len(make_tile_grid(config, (2048, 2048), other)) * math.prod(other)
                assert work <= other_work
    assert choose_tile_shape(config, (2048, 2048), max_tile_pixels=1300**2) == (1212, 1212)
    with pytest.raises(ValueError, match="memory budget"):
        choose_tile_shape(config, (2048, 2048), max_tile_pixels=100)


def test_whole_image_grid_is_one_tile():
    grid = whole_image_grid(UNetConfig(), (2048, 1000))
    assert len(grid) == 1
    assert grid.tile_shape == (2236, 1196)


ANISOTROPIC = UNetConfig(ndim=3, depth=3, base_channels=2, pool_z=(False, False, True))


@pytest.mark.parametrize("image_shape", [(1, 1, 1), (7, 33, 50), (19, 64, 41)])
@pytest.mark.parametrize("tile_shape", [(40, 140, 148), (46, 156, 140)])
def test_anisotropic_tiles_cover_once_on_the_per_axis_pooling_grid(image_shape, tile_shape):
    grid = make_tile_grid(ANISOTROPIC, image_shape, tile_shape)
    steps, margins = config_size_step(ANISOTROPIC), config_halo(ANISOTROPIC)
    assert steps == (2, 8, 8) and grid.halo == margins and margins[0] < margins[1]
    tile_output = config_output_shape(ANISOTROPIC, tile_shape)
    count = np.zeros(image_shape, dtype=int)
    for tile in grid:
        count[tile.output_slices] += 1
        assert all(start % step == 0 for start, step in zip(tile.output_start, steps))
        assert tuple(s - i for s, i in zip(tile.output_start, tile.input_start)) == margins
        for piece, size in zip(tile.crop_slices(), tile_output):
            assert 0 <= piece.start < piece.stop <= size
    assert (count == 1).all()


def test_anisotropic_tile_sizes_per_axis():
    smallest = [smallest_tile_size(ANISOTROPIC, axis=axis) for axis in range(3)]
    assert smallest[1] == smallest[2] == smallest_tile_size(UNetConfig(depth=3))
    assert smallest[0] < smallest[1]
    whole = whole_image_grid(ANISOTROPIC, (9, 50, 61))
    assert len(whole) == 1
    with pytest.raises(ValueError, match="axis 0; nearest valid sizes are 40 and 42"):
        make_tile_grid(ANISOTROPIC, (9, 50, 50), (41, 140, 140))
    with pytest.raises(ValueError, match="pool_z"):
        make_tile_grid(ANISOTROPIC, (50, 50), (140, 140))
    chosen = choose_tile_shape(ANISOTROPIC, (30, 300, 300), max_tile_pixels=40 * 200 * 200)
    assert math.prod(chosen) <= 40 * 200 * 200
    make_tile_grid(ANISOTROPIC, (30, 300, 300), chosen)


@pytest.mark.parametrize(
    ("config", "image_shape", "tile_shape"),
    [
        (UNetConfig(depth=2), (150, 203), (76, 92)),
        (UNetConfig(depth=1, padding="same"), (37, 64), (20, 28)),
        (UNetConfig(ndim=3, depth=1), (21, 45, 38), (26, 30, 26)),
    ],
)
def test_overlapping_tiles_are_those_a_scan_of_the_grid_finds(config, image_shape, tile_shape, rng):
    grid = make_tile_grid(config, image_shape, tile_shape)
    tiles = list(grid)
    for _ in range(40):
        start = [int(rng.integers(0, size)) for size in image_shape]
        stop = [int(rng.integers(low + 1, size + 1)) for low, size in zip(start, image_shape)]
        scanned = [
            tile for tile in tiles
            if all(a < hi and b > lo for a, b, lo, hi in zip(tile.output_start, tile.output_stop, start, stop))
        ]
        assert grid.overlapping(start, stop) == scanned
    assert grid.overlapping((0,) * len(image_shape), image_shape) == tiles
    assert grid.overlapping((5,) * len(image_shape), (5,) * len(image_shape)) == []
