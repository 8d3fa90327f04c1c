"""The U-Net: the paper's numbers, initialisation, options."""

import math

import numpy as np
import pytest
import torch

from biounet.config import UNetConfig
from biounet.geometry import config_output_shape
from biounet.model.unet import UNet


def conv_layers(model):
    kinds = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    return [layer for layer in model.modules() if isinstance(layer, kinds)]


def test_paper_network():
    model = UNet()
    assert model.n_parameters == 31_030_658
    assert len(conv_layers(model)) == 23
    model.eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)


def test_he_initialisation():
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=16, depth=3))
    for layer in conv_layers(model):
        weight = layer.weight.detach()
        if isinstance(layer, torch.nn.ConvTranspose2d):
            fan_in = layer.in_channels  # stride 2, kernel 2: one tap per output pixel
        else:
            fan_in = layer.in_channels * math.prod(layer.kernel_size)
        if weight.numel() > 2000:
            assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=4))
    image = torch.rand(1, 1, 60, 60)
    model.eval()
    assert torch.equal(model(image), model(image))
    model.train()
    assert not torch.equal(model(image), model(image))


@pytest.mark.parametrize(
    ("options", "input_size", "output_size"),
    [
        ({"padding": "same"}, 64, 64),
        ({"norm": "batch"}, 60, 20),
        ({"norm": "group"}, 60, 20),
        ({"norm": "instance"}, 60, 20),
        ({"upsampling": "bilinear"}, 60, 20),
        ({"in_channels": 3, "n_classes": 4}, 60, 20),
    ],
)
def test_options(options, input_size, output_size):
    config = UNetConfig(depth=2, base_channels=8, **options)
    model = UNet(config).eval()
    with torch.inference_mode():
        result = model(torch.rand(2, config.in_channels, input_size, input_size))
    assert result.shape == (2, config.n_classes, output_size, output_size)
    assert torch.isfinite(result).all()


def test_3d_network():
    model = UNet(UNetConfig(ndim=3, depth=2, base_channels=2)).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 1, 60, 76, 60)).shape == (1, 2, 20, 36, 20)


def test_norm_layers_replace_bias():
    model = UNet(UNetConfig(depth=1, base_channels=4, norm="batch"))
    three_by_three = [layer for layer in conv_layers(model) if layer.kernel_size == (3, 3)]
    assert all(layer.bias is None for layer in three_by_three)


def test_forward_rejects_bad_input():
    model = UNet(UNetConfig(depth=2, base_channels=4))
    with pytest.raises(ValueError, match="channels"):
        model(torch.zeros(1, 3, 60, 60))
    with pytest.raises(ValueError, match="nearest valid sizes"):
        model(torch.zeros(1, 1, 61, 60))
    with pytest.raises(ValueError, match="4 axes"):
        model(torch.zeros(1, 60, 60))


def test_config_round_trip_and_validation():
    config = UNetConfig(depth=3, norm="group", padding="same", ndim=3)
    assert UNetConfig.from_json(config.to_json()) == config
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown UNetConfig keys \\['colour'\\]"):
        UNetConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="ndim must be one of"):
        UNetConfig(ndim=4)
    with pytest.raises(TypeError, match="depth must be an integer"):
        UNetConfig(depth="4")
    with pytest.raises(ValueError, match="padding"):
        UNetConfig(padding="reflect")
    with pytest.raises(ValueError, match="dropout"):
        UNetConfig(dropout=1.5)


def test_same_seed_same_weights():
    torch.manual_seed(3)
    first = UNet(UNetConfig(depth=1, base_channels=4)).state_dict()
    torch.manual_seed(3)
    second = UNet(UNetConfig(depth=1, base_channels=4)).state_dict()
    assert all(np.array_equal(first[key], second[key]) for key in first)


def test_anisotropic_3d_network_pools_only_y_x_where_asked():
    config = UNetConfig(ndim=3, depth=3, base_channels=2, pool_z=(False, True, False))
    model = UNet(config).eval()
    assert [pool.kernel_size for pool in model.pools] == [(1, 2, 2), 2, (1, 2, 2)]
    # the decoder undoes the levels from the deepest up
    assert [up.up.kernel_size for up in model.decoder] == [(1, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert all(layer.kernel_size == (3, 3, 3) for layer in conv_layers(model)
               if isinstance(layer, torch.nn.Conv3d) and layer.kernel_size != (1, 1, 1))
    with torch.inference_mode():
        for shape in [(42, 92, 92), (46, 100, 108)]:
            expected = config_output_shape(config, shape)
            assert model(torch.zeros(1, 1, *shape)).shape[2:] == expected
    with pytest.raises(ValueError, match="axis 0 is not valid"):
        model(torch.zeros(1, 1, 43, 92, 92))


def test_anisotropic_bilinear_upsampling_follows_the_pooling():
    config = UNetConfig(ndim=3, depth=2, base_channels=2, upsampling="bilinear",
                        pool_z=(False, True))
    with torch.inference_mode():
        result = UNet(config).eval()(torch.zeros(1, 1, 28, 44, 44))
    assert result.shape[2:] == config_output_shape(config, (28, 44, 44)) == (4, 4, 4)


def test_pool_z_validation_and_round_trip():
    config = UNetConfig(ndim=3, depth=2, pool_z=(False, True))
    assert UNetConfig.from_json(config.to_json()) == config
    assert UNetConfig.from_dict({"ndim": 3, "depth": 2, "pool_z": [False, True]}) == config
    assert UNetConfig().pool_z is None
    with pytest.raises(ValueError, match="pool_z applies to 3-D networks only"):
        UNetConfig(depth=2, pool_z=(False, True))
    with pytest.raises(ValueError, match="pool_z \\(False,\\) needs one bool per pooling level"):
        UNetConfig(ndim=3, depth=2, pool_z=(False,))
    with pytest.raises(TypeError, match="pool_z must be None or a tuple of bools"):
        UNetConfig(ndim=3, depth=2, pool_z=(0, 1))
