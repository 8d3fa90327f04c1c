"""Shape arithmetic against a direct simulation of the network's layers."""

import pytest

from biounet.config import UNetConfig
from biounet.geometry import (
    count_flops,
    halo,
    is_valid_input_size,
    min_input_size,
    nearest_valid_sizes,
    output_shape,
    output_size,
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
