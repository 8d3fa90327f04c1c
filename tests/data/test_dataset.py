"""Training tiles: geometry, determinism per item, mirroring for small images."""

import numpy as np
import pytest
import torch

from biounet.augment.pipeline import AugmentConfig
from biounet.config import TrainConfig, UNetConfig
from biounet.data.dataset import TileDataset, make_training_image


def cells(shape, rng):
    labels = np.zeros(shape, np.int32)
    for index in range(1, 8):
        y, x = rng.integers(5, shape[0] - 5), rng.integers(5, shape[1] - 5)
        labels[max(y - 4, 0) : y + 4, max(x - 4, 0) : x + 4] = index
    return labels


@pytest.fixture
def item(rng):
    labels = cells((90, 70), rng)
    image = (labels > 0).astype(np.float32)[None] + rng.normal(0, 0.1, (1, 90, 70)).astype(np.float32)
    return make_training_image("a", image, labels, model_config=UNetConfig(depth=2), train_config=TrainConfig())


def test_tiles_and_targets_line_up_without_augmentation(item):
    dataset = TileDataset([item], model_config=UNetConfig(depth=2), tile_shape=(60, 76), length=5, seed=1)
    for index in range(5):
        image, target, weights = dataset[index]
        assert image.shape == (1, 60, 76) and target.shape == (20, 36) and weights.shape == (20, 36)
        # without augmentation the target is the image's foreground, 20 px in from the window
        centre = (image[0, 20:40, 20:56] > 0.5).long()
        assert (centre == target).float().mean() > 0.95
        assert target.dtype == torch.int64 and weights.dtype == torch.float32


def test_items_are_reproducible_and_distinct(item):
    config = AugmentConfig()
    one = TileDataset([item], model_config=UNetConfig(depth=2), tile_shape=(60, 60), length=4, seed=3, augment_config=config)
    two = TileDataset([item], model_config=UNetConfig(depth=2), tile_shape=(60, 60), length=4, seed=3, augment_config=config)
    for a, b in zip(one[2], two[2]):
        assert torch.equal(a, b)
    assert not torch.equal(one[1][0], one[2][0])
    labels = set(np.unique(one[1][1].numpy()))
    assert labels <= {0, 1}


def test_foreground_oversampling(item):
    always = TileDataset([item], model_config=UNetConfig(depth=2), tile_shape=(44, 44), length=30, seed=0, foreground_fraction=1.0)
    hits = [always[i][1][2, 2].item() for i in range(30)]  # the centre pixel of the 4x4 output
    assert np.mean(hits) == 1.0


def test_image_smaller_than_tile_is_mirrored(rng):
    labels = np.zeros((10, 12), np.int32)
    labels[2:6, 3:8] = 1
    small = make_training_image("s", rng.random((1, 10, 12), dtype=np.float32), labels, model_config=UNetConfig(depth=2), train_config=TrainConfig())
    image, target, _ = TileDataset([small], model_config=UNetConfig(depth=2), tile_shape=(60, 60), length=1)[0]
    assert image.shape == (1, 60, 60) and target.shape == (20, 20) and target.sum() > 0


def test_shape_mismatch_is_named(rng):
    with pytest.raises(ValueError, match="differs from labels"):
        make_training_image("bad", np.zeros((1, 5, 5), np.float32), np.zeros((5, 6), np.int32), model_config=UNetConfig(), train_config=TrainConfig())
