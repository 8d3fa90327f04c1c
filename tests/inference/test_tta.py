"""Test-time augmentation: exact inverses, a manual reference loop, and a symmetric network."""

import itertools

import numpy as np
import pytest
import torch

from biounet.config import UNetConfig
from biounet.inference.predict import predict_tiled
from biounet.inference.tta import Symmetry, predict_tta, symmetries
from biounet.model.unet import UNet


@pytest.mark.parametrize("ndim", [2, 3])
def test_inverse_transforms_round_trip_exactly_and_form_a_group_of_8(ndim, rng):
    image = rng.random((2, *range(5, 5 + ndim)))  # channels first, distinct axis lengths
    results = []
    for symmetry in symmetries(ndim):
        transformed = symmetry.apply(image)
        assert transformed.shape[0] == 2
        np.testing.assert_array_equal(symmetry.invert(transformed), image)
        results.append(transformed.tobytes() + bytes(transformed.shape))
    assert len(set(results)) == 8  # eight different transforms


def test_two_d_symmetries_are_the_dihedral_group():
    square = np.arange(9).reshape(3, 3)
    reference = set()  # all rotations of the square and of its mirror image
    for mirrored, turns in itertools.product((False, True), range(4)):
        reference.add(np.rot90(square[:, ::-1] if mirrored else square, turns).tobytes())
    assert {s.apply(square).tobytes() for s in symmetries(2)} == reference


def test_three_d_symmetries_never_move_z():
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert all(s.apply(volume).shape == (2, 3, 4) for s in symmetries(3))
    assert all(s.quarter_turns == 0 for s in symmetries(3))
    with pytest.raises(ValueError, match="ndim must be 2 or 3"):
        symmetries(4)


def reference_tta(model, image, **options):
    """The obvious loop: every rotation of the image and of its mirror image, mapped back."""
    total = 0
    for mirrored in (False, True):
        for turns in range(4):
            view = image[..., ::-1] if mirrored else image
            rotated = np.ascontiguousarray(np.rot90(view, turns, axes=(-2, -1)))
            back = np.rot90(predict_tiled(model, rotated, **options), -turns, axes=(-2, -1))
            total = total + (back[..., ::-1] if mirrored else back)
    return total / 8


def test_equals_a_manual_loop(tiny_unet, rng):
    image = rng.random((45, 62), dtype=np.float32)  # not square: rotations change the shape
    averaged = predict_tta(tiny_unet, image, tile_shape=(124, 124))
    np.testing.assert_allclose(
        averaged, reference_tta(tiny_unet, image, tile_shape=(124, 124)), atol=1e-6
    )
    assert averaged.dtype == np.float32 and averaged.shape == (2, 45, 62)
    np.testing.assert_allclose(averaged.sum(axis=0), 1.0, atol=1e-5)
    assert np.abs(averaged - predict_tiled(tiny_unet, image)).max() > 1e-3  # it does something


def symmetric_unet(ndim):
    """A U-Net whose every kernel is invariant under the transforms: an equivariant network."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=4, ndim=ndim)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == ndim + 2:  # conv and up-conv kernels, spatial axes last
                orbit = [s.apply(parameter.numpy()) for s in symmetries(ndim)]
                parameter.copy_(torch.from_numpy(np.mean(orbit, axis=0)))
    return model


@pytest.mark.parametrize(("ndim", "shape"), [(2, (48, 36)), (3, (12, 16, 20))])
def test_an_equivariant_network_gains_nothing(ndim, shape, rng):
    """Output sizes that a valid tile produces keep the 2x2 pooling grid symmetric."""
    model = symmetric_unet(ndim)
    image = rng.random(shape, dtype=np.float32)
    plain = predict_tiled(model, image)
    assert plain[1].std() > 1e-4  # not trivially constant
    np.testing.assert_allclose(predict_tta(model, image), plain, rtol=0, atol=1e-6)
    flipped = predict_tiled(model, np.ascontiguousarray(image[..., ::-1]))
    np.testing.assert_allclose(flipped[..., ::-1], plain, rtol=0, atol=1e-6)


def test_invalid_input_is_refused_before_predicting(tiny_unet):
    with pytest.raises(ValueError, match="channel"):
        predict_tta(tiny_unet, np.zeros((3, 40, 40), dtype=np.float32))


def test_symmetry_repr_is_readable():
    assert repr(Symmetry((-1,), 2)) == "Symmetry(flip_axes=(-1,), quarter_turns=2)"


@pytest.mark.parametrize(("ndim", "shape"), [(2, (5, 7)), (3, (3, 4, 6))])
def test_boxes_map_as_the_arrays_do(ndim, shape, rng):
    image = np.arange(np.prod(shape)).reshape(shape)
    # mirrored beyond the borders, as `read_window` extends tiles
    padded_image = np.pad(image, 3, mode="reflect")
    for symmetry in symmetries(ndim):
        transformed = symmetry.apply(image)
        padded_transformed = np.pad(transformed, 3, mode="reflect")
        for _ in range(25):
            start = [int(rng.integers(-3, size)) for size in shape]
            stop = [int(rng.integers(low + 1, size + 4)) for low, size in zip(start, shape)]
            low, high, new_shape = symmetry.apply_box(start, stop, shape)
            assert new_shape == transformed.shape
            box = padded_image[tuple(slice(a + 3, b + 3) for a, b in zip(start, stop))]
            moved = padded_transformed[tuple(slice(a + 3, b + 3) for a, b in zip(low, high))]
            assert np.array_equal(moved, symmetry.apply(box)), symmetry
            assert symmetry.invert_box(low, high, new_shape) == (tuple(start), tuple(stop), shape)
