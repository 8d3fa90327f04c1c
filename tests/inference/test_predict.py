"""Overlap-tile prediction equals one whole-image pass; inputs are checked."""

import numpy as np
import pytest
import torch

from biounet.config import UNetConfig
from biounet.geometry import (
    config_halo,
    config_min_input_shape,
    config_valid_input_shape,
    halo,
    valid_input_size,
)
from biounet.inference.memory import estimate_tile_bytes
from biounet.inference.predict import predict_tiled
from biounet.inference.tiling import make_tile_grid
from biounet.model.unet import UNet


def reference_whole_pass(model, image):
    """Slow, obvious reference: numpy-reflect-pad, one forward pass, crop, softmax."""
    config = model.config
    margin = halo(depth=config.depth)
    pads = [(0, 0)]
    for size in image.shape[1:]:
        padded = valid_input_size(size + 2 * margin, depth=config.depth)
        pads.append((margin, padded - size - margin))
    padded = np.pad(image, pads, mode="reflect")
    model.eval()
    with torch.no_grad():
        scores = model(torch.from_numpy(padded[None]).float())
    crop = (slice(None),) + tuple(slice(0, size) for size in image.shape[1:])
    return torch.softmax(scores, dim=1)[0].numpy()[crop]


@pytest.mark.parametrize("tile_shape", [(124, 124), (156, 108), (108, 172)])
def test_tiled_prediction_equals_whole_image(tiny_unet, tile_shape, rng):
    image = rng.random((300, 277), dtype=np.float32)
    whole = predict_tiled(tiny_unet, image, tile_shape="whole")
    tiled = predict_tiled(tiny_unet, image, tile_shape=tile_shape, batch_size=3)
    assert tiled.shape == (2, 300, 277) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def test_whole_pass_equals_reference(tiny_unet, rng):
    image = rng.random((61, 90), dtype=np.float32)
    np.testing.assert_allclose(
        predict_tiled(tiny_unet, image, tile_shape="whole"),
        reference_whole_pass(tiny_unet, image[None]),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (57, 41)])
def test_images_smaller_than_a_tile(tiny_unet, shape, rng):
    image = rng.random(shape, dtype=np.float32)
    tiled = predict_tiled(tiny_unet, image, tile_shape=(124, 124))
    np.testing.assert_allclose(tiled, predict_tiled(tiny_unet, image, tile_shape="whole"), atol=1e-5)
    np.testing.assert_allclose(tiled.sum(axis=0), 1.0, atol=1e-5)


def test_automatic_tiles_within_budget(tiny_unet, rng):
    image = rng.random((400, 333), dtype=np.float32)
    budget = estimate_tile_bytes(tiny_unet.config, (140, 140))
    tiled = predict_tiled(tiny_unet, image, memory_budget=budget)
    np.testing.assert_allclose(tiled, predict_tiled(tiny_unet, image, tile_shape="whole"), atol=1e-5)


def test_3d_tiled_equals_whole(rng):
    torch.manual_seed(1)
    model = UNet(UNetConfig(ndim=3, depth=2, base_channels=2)).eval()
    volume = rng.random((30, 41, 37), dtype=np.float32)
    whole = predict_tiled(model, volume, tile_shape="whole")
    tiled = predict_tiled(model, volume, tile_shape=(60, 52, 76), batch_size=2)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(whole, reference_whole_pass(model, volume[None]), atol=1e-5)


def test_multichannel_and_batchnorm(rng):
    torch.manual_seed(2)
    model = UNet(UNetConfig(depth=2, base_channels=4, in_channels=3, n_classes=3, norm="batch"))
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model(torch.rand(2, 3, 100, 100) * 3)
    image = rng.random((3, 150, 130), dtype=np.float32)
    whole = predict_tiled(model, image, tile_shape="whole")
    tiled = predict_tiled(model, image, tile_shape=(76, 92))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert model.training, "prediction must restore the model's training mode"


def test_same_padding_is_close_to_whole_pass(rng):
    torch.manual_seed(4)
    model = UNet(UNetConfig(depth=2, base_channels=4, padding="same"))
    image = rng.random((130, 150), dtype=np.float32)
    whole = predict_tiled(model, image, tile_shape="whole")
    tiled = predict_tiled(model, image, tile_shape=(64, 80))
    # zero padding inside tiles reaches the cropped centre only weakly
    assert np.abs(tiled - whole).mean() < 1e-2
    np.testing.assert_allclose(tiled.sum(axis=0), 1.0, atol=1e-5)


def test_channels_last_does_not_change_results(tiny_unet, rng):
    image = rng.random((150, 150), dtype=np.float32)
    fast = predict_tiled(tiny_unet, image, channels_last=True)
    plain = predict_tiled(tiny_unet, image, channels_last=False)
    np.testing.assert_allclose(fast, plain, atol=1e-5)
    weight = next(tiny_unet.parameters())
    assert weight.is_contiguous(), "the model's layout must be restored"


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (np.zeros((2, 50, 50), np.float32), {}, ValueError, "2 channel"),
        (np.zeros((50,), np.float32), {}, ValueError, "must be \\(Y, X\\)"),
        (np.zeros((1, 2, 3, 4, 5), np.float32), {}, ValueError, "must be \\(Y, X\\)"),
        (np.zeros((0, 50), np.float32), {}, ValueError, "empty"),
        (np.full((50, 50), np.nan, np.float32), {}, ValueError, "NaN"),
        (np.zeros((50, 50), np.complex64), {}, TypeError, "real-valued"),
        (np.zeros((50, 50), np.float32), {"tile_shape": (125, 124)}, ValueError, "nearest valid"),
        (np.zeros((50, 50), np.float32), {"batch_size": 0}, ValueError, "batch_size"),
        (np.zeros((50, 50), np.float32), {"memory_budget": -1}, ValueError, "memory_budget"),
        (np.zeros((50, 50), np.float32), {"tile_shape": "big"}, ValueError, "tile_shape"),
    ],
)
def test_bad_inputs(tiny_unet, image, kwargs, error, match):
    with pytest.raises(error, match=match):
        predict_tiled(tiny_unet, image, **kwargs)


def reference_whole_pass_per_axis(model, image):
    """As `reference_whole_pass`, with the per-axis halo of an anisotropic network."""
    config = model.config
    margins = config_halo(config)
    wanted = [size + 2 * margin for size, margin in zip(image.shape[1:], margins)]
    padded_shape = config_valid_input_shape(config, wanted)
    pads = [(0, 0)] + [
        (margin, padded - size - margin)
        for size, margin, padded in zip(image.shape[1:], margins, padded_shape)
    ]
    padded = np.pad(image, pads, mode="reflect")
    with torch.no_grad():
        scores = model.eval()(torch.from_numpy(padded[None]).float())
    crop = (slice(None),) + tuple(slice(0, size) for size in image.shape[1:])
    return torch.softmax(scores, dim=1)[0].numpy()[crop]


@pytest.mark.parametrize("pool_z", [(False, True), (False, False), (True, False)])
def test_anisotropic_3d_tiled_equals_whole(pool_z, rng):
    torch.manual_seed(5)
    model = UNet(UNetConfig(ndim=3, depth=2, base_channels=2, pool_z=pool_z)).eval()
    volume = rng.random((13, 37, 41), dtype=np.float32)  # odd sizes, few slices
    smallest = config_min_input_shape(model.config)
    tile_shape = (smallest[0] + 2, 60, 68)
    whole = predict_tiled(model, volume, tile_shape="whole")
    tiled = predict_tiled(model, volume, tile_shape=tile_shape, batch_size=4)
    assert len(make_tile_grid(model.config, volume.shape, tile_shape)) > 8
    assert np.abs(tiled - whole).max() <= 1e-5
    np.testing.assert_allclose(whole, reference_whole_pass_per_axis(model, volume[None]), atol=1e-5)
    automatic = predict_tiled(
        model, volume, memory_budget=estimate_tile_bytes(model.config, (40, 60, 60))
    )
    assert np.abs(automatic - whole).max() <= 1e-5
