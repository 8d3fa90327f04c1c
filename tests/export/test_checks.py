"""The check every export passes: seeded tiles of two shapes, probabilities within TOLERANCE."""

import numpy as np
import pytest
import torch

from biounet.config import UNetConfig
from biounet.export.checks import TOLERANCE, check_inputs, compare_with_pytorch
from biounet.model.unet import UNet


def make_unet():
    torch.manual_seed(0)
    return UNet(UNetConfig(depth=2, base_channels=4)).eval()


def scores(model, batch):
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


def test_compare_with_pytorch_tolerance():
    model = make_unet()
    inputs = check_inputs(model.config)
    exact = compare_with_pytorch(model, lambda batch: scores(model, batch), inputs, name="test")
    assert exact == 0.0

    def nudged(batch):  # probabilities move by up to a quarter of the score change
        result = scores(model, batch)
        result[:, 0] += 40 * TOLERANCE
        return result

    with pytest.raises(ValueError, match=r"test export disagrees .* > 0.0001"):
        compare_with_pytorch(model, nudged, inputs, name="test")
    with pytest.raises(ValueError, match="gives shape"):
        compare_with_pytorch(model, lambda batch: scores(model, batch)[:, :1], inputs, name="test")


def test_check_inputs_shapes_and_seed():
    config = UNetConfig(depth=2, base_channels=4)
    first, second = check_inputs(config)
    assert first.shape == (2, 1, 52, 56) and first.dtype == np.float32  # 44 + 4n, n = 2, 3
    assert second.shape == (1, 1, 48, 60)
    np.testing.assert_array_equal(first, check_inputs(config)[0])
    assert check_inputs(config, (92, 44))[1].shape == (1, 1, 92, 44)
