"""Shape arithmetic against a direct simulation of the network's layers."""

import math

import numpy as np
import pytest

from biounet.config import UNetConfig
from biounet.geometry import (
    config_halo,
    config_min_input_shape,
    config_output_shape,
    config_size_step,
    config_valid_input_shape,
    count_flops,
    halo,
    is_valid_input_size,
    min_input_size,
    nearest_valid_sizes,
    output_shape,
    output_size,
    pooling_per_axis,
    pooling_per_level,
    valid_input_size,
)


def simulate(size, depth):
    """Slow reference: walk the layers one by one, None if a layer cannot be applied."""
    sizes = []
    for _ in range(depth):
        size -= 4
        if size < 2 or size % 2:
            return None
        sizes.append(size)
        size //= 2
    size -= 4
    if size < 1:
        return None
    for skip in reversed(sizes):
        size *= 2
        if size > skip:
            return None
        size -= 4
        if size < 1:
            return None
    return size


def test_paper_geometry():
    assert output_shape((572, 572)) == (388, 388)
    assert halo() == 92
    assert min_input_size() == 188
    assert [s for s in range(0, 700) if is_valid_input_size(s)] == list(range(188, 700, 16))
    assert all((s - 12) % 16 == 0 for s in range(188, 2000) if is_valid_input_size(s))


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 5])
def test_output_size_matches_layer_simulation(depth):
    for size in range(1, 800):
        expected = simulate(size, depth)
        assert is_valid_input_size(size, depth=depth) == (expected is not None)
        if expected is not None:
            assert output_size(size, depth=depth) == expected
            assert expected == size - 2 * halo(depth=depth)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_nearest_valid_sizes_bracket(depth):
    for size in range(1, 600):
        below, above = nearest_valid_sizes(size, depth=depth)
        assert is_valid_input_size(above, depth=depth) and above >= size
        assert not any(is_valid_input_size(s, depth=depth) for s in range(size, above))
        if below is not None:
            assert is_valid_input_size(below, depth=depth) and below <= size
            assert not any(is_valid_input_size(s, depth=depth) for s in range(below + 1, size + 1))
        assert valid_input_size(size, depth=depth) == above


def test_invalid_size_error_names_nearest():
    with pytest.raises(ValueError, match="nearest valid sizes: 492 and 508"):
        output_shape((500, 572))
    with pytest.raises(ValueError, match="axis 1"):
        output_shape((572, 500))
    with pytest.raises(ValueError, match="188 \\(the minimum\\)"):
        output_size(100)


def test_same_padding_geometry():
    assert output_shape((512, 64), padding="same") == (512, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        output_size(500, padding="same")
    assert nearest_valid_sizes(500, padding="same") == (496, 512)


def test_flops_of_paper_network():
    # One whole pass over a 2048x2048 image (mirror-extended to 2236): 1.56 MFLOP per
    # output pixel, the figure the benchmark's limit is built on.
    per_pixel = count_flops(UNetConfig(), (2236, 2236)) / 2048**2
    assert per_pixel == pytest.approx(1.5625e6, rel=1e-3)
    # FLOPs grow with the number of pixels at every layer
    assert count_flops(UNetConfig(), (588, 572)) > count_flops(UNetConfig(), (572, 572))


# --- anisotropic 3-D U-Nets (Cicek et al. 2016; levels pooling only Y and X) ---------------


def simulate_axis(size, factors):
    """Slow reference for one axis with a pooling factor (1 or 2) per level."""
    sizes = []
    for factor in factors:
        size -= 4
        if size < 1 or size % factor:
            return None
        sizes.append(size)
        size //= factor
        if size < 1:
            return None
    size -= 4
    if size < 1:
        return None
    for factor, skip in zip(reversed(factors), reversed(sizes)):
        size *= factor
        if size > skip:
            return None
        size -= 4
        if size < 1:
            return None
    return size


@pytest.mark.parametrize("factors", [(1,), (1, 2), (2, 1), (1, 1, 2), (1, 1, 1), (2, 2, 2)])
def test_per_axis_pooling_matches_layer_simulation(factors):
    depth = len(factors)
    valid = []
    for size in range(1, 400):
        expected = simulate_axis(size, factors)
        assert is_valid_input_size(size, depth=depth, pooling=factors) == (expected is not None)
        if expected is not None:
            valid.append(size)
            assert output_size(size, depth=depth, pooling=factors) == expected
            assert expected == size - 2 * halo(depth=depth, pooling=factors)
    assert valid[0] == min_input_size(depth=depth, pooling=factors)
    assert set(np.diff(valid)) == {math.prod(factors)}
    for size in range(1, 300):
        below, above = nearest_valid_sizes(size, depth=depth, pooling=factors)
        assert above == min(s for s in valid if s >= size)
        assert below == max((s for s in valid if s <= size), default=None)


def test_isotropic_pooling_is_the_default():
    for depth in range(5):
        assert halo(depth=depth, pooling=(2,) * depth) == halo(depth=depth)
        assert min_input_size(depth=depth, pooling=(2,) * depth) == min_input_size(depth=depth)
    assert pooling_per_axis(UNetConfig(ndim=3, depth=2)) == ((2, 2),) * 3
    assert config_halo(UNetConfig()) == (92, 92)
    assert config_size_step(UNetConfig(ndim=3)) == (16, 16, 16)


def test_config_geometry_of_anisotropic_network():
    config = UNetConfig(ndim=3, depth=3, pool_z=(False, False, True))
    assert pooling_per_level(config) == ((1, 2, 2), (1, 2, 2), (2, 2, 2))
    assert pooling_per_axis(config) == ((1, 1, 2), (2, 2, 2), (2, 2, 2))
    assert config_size_step(config) == (2, 8, 8)
    assert config_halo(config) == (halo(depth=3, pooling=(1, 1, 2)), 44, 44)
    smallest = config_min_input_shape(config)
    assert smallest[1:] == (min_input_size(depth=3),) * 2
    assert config_output_shape(config, smallest) == tuple(
        size - 2 * margin for size, margin in zip(smallest, config_halo(config))
    )
    shape = config_valid_input_shape(config, (33, 101, 120))
    assert all(is_valid_input_size(s, depth=3, pooling=p)
               for s, p in zip(shape, pooling_per_axis(config)))
    with pytest.raises(ValueError, match="axis 0 is not valid.*nearest valid sizes"):
        config_output_shape(config, (shape[0] + 1, *shape[1:]))
    with pytest.raises(ValueError, match="pool_z"):
        pooling_per_axis(config, 2)
    with pytest.raises(ValueError, match="factor 1 or 2 for each of the 2 levels"):
        output_size(100, depth=2, pooling=(2, 3))


def test_same_padding_with_per_axis_pooling():
    assert output_size(12, depth=3, padding="same", pooling=(1, 2, 2)) == 12
    with pytest.raises(ValueError, match="multiple of 4"):
        output_size(10, depth=3, padding="same", pooling=(1, 2, 2))
    assert min_input_size(depth=3, padding="same", pooling=(1, 1, 2)) == 2


def test_flops_follow_per_axis_pooling():
    isotropic = UNetConfig(ndim=3, depth=1, base_channels=2, dropout=0.0)
    anisotropic = UNetConfig(ndim=3, depth=1, base_channels=2, dropout=0.0, pool_z=(False,))
    # without Z pooling the bottleneck sees twice as many voxels
    assert count_flops(anisotropic, (20, 20, 20)) > count_flops(isotropic, (20, 20, 20))
