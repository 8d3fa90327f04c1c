"""Training tiles: geometry, determinism per item, mirroring for small images."""

import numpy as np
import pytest
import torch

from biounet.augment.geometric import RigidTransform, rotation_matrix, source_coordinates
from biounet.augment.pipeline import AugmentConfig
from biounet.config import TrainConfig, UNetConfig
from biounet.data.dataset import TileDataset, _augment_margin, make_training_image


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


def test_3d_tiles_of_an_anisotropic_network(rng):
    # a (Z, Y, X) volume of box cells, as for the 3-D U-Net of Cicek et al. 2016
    labels = np.zeros((9, 40, 44), np.int32)
    labels[1:6, 4:16, 5:20] = 1
    labels[3:9, 16:30, 10:28] = 2  # touches cell 1
    image = (labels > 0).astype(np.float32)[None] + rng.normal(0, 0.1, (1, *labels.shape)).astype(np.float32)
    model = UNetConfig(ndim=3, depth=2, base_channels=2, pool_z=(False, True))
    item = make_training_image("v", image, labels, model_config=model, train_config=TrainConfig(sigma_px=2.0))
    assert item.weights.shape == labels.shape and item.weights.max() > item.weights[labels > 0].min()
    augment_config = AugmentConfig(ndim=3, elastic_sigma_px=(1.0, 4.0, 4.0), max_rotation_deg=30.0)
    dataset = TileDataset([item], model_config=model, tile_shape=(28, 44, 48), length=3, seed=2,
                          augment_config=augment_config)
    for index in range(3):
        tile, target, weights = dataset[index]
        assert tile.shape == (1, 28, 44, 48) and target.shape == weights.shape == (4, 4, 8)
        assert set(np.unique(target.numpy())) <= {0, 1} and torch.isfinite(weights).all()
    with pytest.raises(ValueError, match="augment_config.ndim is 2 but the network is 3-D"):
        TileDataset([item], model_config=model, tile_shape=(28, 44, 48), length=1,
                    augment_config=AugmentConfig())


@pytest.mark.parametrize("boundary_class", [False, True])
def test_spacing_measures_the_border_term_across_sections(boundary_class):
    # Two cells filling planes 0-2 and 4-6, with plane 3 between them: d1 = d2 = one section.
    labels = np.zeros((7, 6, 6), np.int32)
    labels[:3], labels[4:] = 1, 2
    image = labels.astype(np.float32)[None]
    model = UNetConfig(ndim=3, depth=1, base_channels=2, n_classes=3 if boundary_class else 2,
                       boundary_class=boundary_class, pool_z=(False,))
    gap = {}
    for spacing in (None, (4.0, 1.0, 1.0)):
        config = TrainConfig(class_weights=None, sigma_px=5.0, spacing=spacing)
        item = make_training_image("v", image, labels, model_config=model, train_config=config)
        gap[spacing] = item.weights[3]
    section = 4.0
    np.testing.assert_allclose(gap[None], 1 + 10 * np.exp(-(2 * 1.0) ** 2 / 50), rtol=1e-6)
    np.testing.assert_allclose(gap[(4.0, 1.0, 1.0)], 1 + 10 * np.exp(-(2 * section) ** 2 / 50), rtol=1e-6)


def test_spacing_must_match_the_network():
    with pytest.raises(ValueError, match=r"train.spacing must have one size per axis of the 2-D network, got \[8.0, 1.0, 1.0\]"):
        make_training_image("a", np.zeros((1, 5, 5), np.float32), np.zeros((5, 5), np.int32),
                            model_config=UNetConfig(), train_config=TrainConfig(spacing=(8.0, 1.0, 1.0)))
    for bad, error in (((), TypeError), (2.0, TypeError), ((1.0, -2.0), ValueError), ((1.0, 0.0), ValueError),
                       ((float("inf"), 1.0), ValueError), (("1", 1), TypeError), ((True, 1), TypeError)):
        with pytest.raises(error, match="spacing must"):
            TrainConfig(spacing=bad)
    assert TrainConfig(spacing=[2, 1]).spacing == (2, 1)
    assert TrainConfig.from_json(TrainConfig(spacing=(8.0, 1.0, 1.0)).to_json()).spacing == (8.0, 1.0, 1.0)


def test_boundary_class_target_and_weights(rng):
    from biounet.targets import boundary_classes
    from biounet.weights import balanced_class_map, border_weight_map

    labels = cells((60, 50), rng)
    image = rng.normal(0, 1, (1, 60, 50)).astype(np.float32)
    model = UNetConfig(n_classes=3, boundary_class=True)
    item = make_training_image("b", image, labels, model_config=model, train_config=TrainConfig())
    np.testing.assert_array_equal(item.target, boundary_classes(labels))
    assert set(np.unique(item.target)) == {0, 1, 2}
    expected = balanced_class_map(item.target) + border_weight_map(labels)
    np.testing.assert_allclose(item.weights, expected, rtol=1e-6)
    np.testing.assert_array_equal(item.labels, labels)  # kept for validation
    unweighted = make_training_image(
        "b", image, labels, model_config=model, train_config=TrainConfig(class_weights=None, w0=0.0),
    )
    assert np.all(unweighted.weights == 1.0)


def test_boundary_class_needs_three_classes():
    with pytest.raises(ValueError, match=r"boundary_class needs n_classes=3 \(background, interior, boundary\), got n_classes=2"):
        UNetConfig(boundary_class=True)
    with pytest.raises(TypeError, match="boundary_class must be true or false"):
        UNetConfig(n_classes=3, boundary_class=1)
    assert UNetConfig.from_json(UNetConfig(n_classes=3, boundary_class=True).to_json()).boundary_class


@pytest.mark.parametrize("scale_range", [(1.0, 1.0), (0.5, 1.5)])
def test_margin_holds_every_read_of_a_zoomed_out_rotated_shifted_tile(scale_range):
    config = AugmentConfig(elastic_sigma_px=0.0, max_shift_px=6.0, scale_range=scale_range)
    tile = (60, 44)
    margin = _augment_margin(tile, config)
    window = tuple(t + 2 * m for t, m in zip(tile, margin))
    for angle in (0.0, 30.0, 45.0, 90.0, 135.0):
        for shift in ([6.0, 6.0], [-6.0, 6.0]):
            worst = RigidTransform(rotation_matrix(angle, ndim=2), np.array(shift), scale_range[0])
            reads = source_coordinates(window, transform=worst)[:, margin[0] : margin[0] + tile[0],
                                                                 margin[1] : margin[1] + tile[1]]
            assert reads.min() >= -1e-9
            assert all(reads[axis].max() <= window[axis] - 1 + 1e-9 for axis in range(2))


@pytest.mark.parametrize("normalization", ["percentile", "zscore"])
def test_bright_objects_trains_on_inverted_images_as_on_the_originals(rng, normalization):
    labels = cells((90, 70), rng)
    fluorescence = (labels > 0).astype(np.float32)[None] * 100 + rng.normal(10, 2, (1, 90, 70)).astype(np.float32)
    brightfield = 200 - fluorescence
    config = TrainConfig(normalization=normalization, polarity="bright_objects")
    model = UNetConfig(depth=2)
    kept = make_training_image("fluo", fluorescence, labels, model_config=model, train_config=config)
    turned = make_training_image("bf", brightfield, labels, model_config=model, train_config=config)
    np.testing.assert_allclose(turned.image, kept.image, atol=1e-5)
    as_is = make_training_image("bf", brightfield, labels, model_config=model, train_config=TrainConfig(normalization=normalization))
    assert np.corrcoef(as_is.image.ravel(), kept.image.ravel())[0, 1] < -0.99


def test_unknown_polarity_is_named():
    with pytest.raises(ValueError, match="polarity must be one of"):
        TrainConfig(polarity="inverted")
