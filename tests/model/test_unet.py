"""The U-Net: the paper's numbers, initialisation, options."""

import math

import numpy as np
import pytest
import torch

from biounet.config import UNetConfig
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
