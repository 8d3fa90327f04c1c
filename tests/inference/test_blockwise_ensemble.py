"""Out-of-core ensembles and test-time augmentation equal their in-memory counterparts."""

import numpy as np
import pytest
import torch
import zarr

from biounet.config import UNetConfig
from biounet.data.normalize import normalize_percentile
from biounet.inference import blockwise, blockwise_task
from biounet.inference.blockwise import RECORD_KEY, predict_blockwise
from biounet.inference.ensemble import predict_ensemble
from biounet.inference.predict import predict_tiled
from biounet.inference.tta import predict_tta
from biounet.model.unet import UNet


def make_model(seed=0, **options) -> UNet:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return UNet(UNetConfig(**{"depth": 2, "base_channels": 4, **options})).eval()


def as_zarr(path, image):
    array = zarr.create_array(
        store=str(path), shape=image.shape, chunks=(32,) * image.ndim, dtype=image.dtype
    )
    array[...] = image
    return array


@pytest.mark.parametrize(
    ("options", "image_shape", "tile_shape", "block_shape"),
    [
        ({}, (150, 200), (132, 140), (64, 64)),  # non-square: rotated grids differ
        ({}, (131, 97), None, (40, 52)),  # tiles chosen per transform, as in memory
        ({"in_channels": 2, "n_classes": 3}, (2, 90, 121), (140, 132), (48, 48)),
        ({"padding": "same"}, (129, 101), (128, 96), (48, 48)),
        ({"ndim": 3, "depth": 1, "base_channels": 2}, (21, 45, 38), (26, 30, 26), (20, 20, 20)),
    ],
)
def test_tta_and_ensembles_equal_in_memory(options, image_shape, tile_shape, block_shape, rng, tmp_path):
    first = make_model(0, **options)
    # a second member, deeper (in 2-D) and narrower, tiles grids of its own
    deeper = {"depth": 3} if options.get("ndim") != 3 else {}
    second = make_model(1, **{**options, "base_channels": 3, **deeper})
    image = rng.random(image_shape, dtype=np.float32)
    source = as_zarr(tmp_path / "source.zarr", image)
    kwargs = {"tile_shape": tile_shape, "block_shape": block_shape}
    in_memory = {"tile_shape": tile_shape}
    cases = {
        "tta": (first, True, predict_tta(first, image, **in_memory)),
        "ensemble": ([first, second], False, predict_ensemble([first, second], image, **in_memory)),
        "both": ([first, second], True, predict_ensemble([first, second], image, tta=True, **in_memory)),
    }
    for name, (model, tta, expected) in cases.items():
        output = predict_blockwise(model, source, tmp_path / f"{name}.zarr", tta=tta, **kwargs)
        np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-6, err_msg=name)
    # and none of them is just the first member's plain prediction
    plain = predict_tiled(first, image, **in_memory)
    for name, (_, _, expected) in cases.items():
        assert np.abs(expected - plain).max() > 1e-4, name


def test_percentile_normalised_tta_uses_whole_image_statistics(rng, tmp_path):
    model = make_model()
    image = rng.integers(0, 4000, (140, 111), dtype=np.uint16)
    output = predict_blockwise(
        model, as_zarr(tmp_path / "s.zarr", image), tmp_path / "out.zarr", tile_shape=(76, 92),
        block_shape=(36, 52), normalization="percentile", tta=True,
    )
    expected = predict_tta(model, normalize_percentile(image), tile_shape=(76, 92))
    np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-6)


def test_members_stay_cached_side_by_side(rng, tmp_path, monkeypatch):
    models = [make_model(seed) for seed in range(3)]
    built = []
    monkeypatch.setattr(
        blockwise_task, "UNet", lambda config: built.append(1) or UNet(config)
    )
    blockwise._MODEL_CACHE.clear()  # of earlier tests in this process
    image = rng.random((150, 170), dtype=np.float32)
    predict_blockwise(models, image, tmp_path / "out.zarr", tile_shape=(76, 92),
                      block_shape=(36, 52), scheduler="synchronous")
    assert len(built) == 3  # once per member, not once per block
    assert len(blockwise._MODEL_CACHE) == 3
    predict_blockwise(models[0], image, tmp_path / "one.zarr", tile_shape=(76, 92))
    assert len(blockwise._MODEL_CACHE) == 1  # an earlier run's members are dropped


def test_resume_tells_tta_members_and_their_tiles_apart(rng, tmp_path):
    first, second, third = make_model(0), make_model(1), make_model(2)
    image = rng.random((100, 120), dtype=np.float32)
    target = tmp_path / "out.zarr"
    tiles = {"tile_shape": (76, 92)}

    def refused(differing, model, **options):
        with pytest.raises(ValueError, match=rf"differing in \[{differing}\]\); pass"):
            predict_blockwise(model, image, target, **{**tiles, **options})

    predict_blockwise(first, image, target, **tiles)
    signature = dict(zarr.open_array(str(target)).attrs)[RECORD_KEY]["signature"]
    assert not {"members", "tta", "tile_shapes"} & set(signature)  # earlier targets resume
    refused("'tile_shapes', 'tta'", first, tta=True)
    predict_blockwise([first, second], image, target, resume=False, **tiles)
    refused("'members'", [first, third])  # a later member counts, not just the first
    refused("'members', 'weights_sha256'", [second, first])
    refused("'tile_shapes', 'tta'", [first, second], tta=True)
    refused("'members', 'tile_shapes'", first)  # keys only the target has count too


def test_resume_tells_the_tiles_of_later_members_apart(rng, tmp_path):
    # same-padded members: the budget picks the second member's tile alone
    members = [make_model(0, padding="same"), make_model(1, padding="same", base_channels=8)]
    image = rng.random((150, 170), dtype=np.float32)
    target = tmp_path / "out.zarr"
    predict_blockwise(members, image, target, memory_budget=9_000_000)
    grids = dict(zarr.open_array(str(target)).attrs)[RECORD_KEY]["signature"]["tile_shapes"]
    with pytest.raises(ValueError, match=r"differing in \['tile_shapes'\]\) \(tiles follow"):
        predict_blockwise(members, image, target, memory_budget=15_000_000)
    again = predict_blockwise(members, image, target, memory_budget=15_000_000, resume=False)
    assert dict(again.attrs)[RECORD_KEY]["signature"]["tile_shapes"][1] != grids[1]
    assert dict(again.attrs)[RECORD_KEY]["signature"]["tile_shapes"][0] == grids[0]


@pytest.mark.parametrize("models", ["tta", "ensemble"])
def test_interrupted_tta_and_ensembles_resume_to_the_in_memory_result(models, rng, tmp_path, block_calls):
    first, second = make_model(0), make_model(1, depth=3, base_channels=3)
    image = rng.random((150, 200), dtype=np.float32)
    model, tta = (first, True) if models == "tta" else ([first, second], False)
    options = {"tile_shape": (132, 140), "block_shape": (48, 48), "tta": tta,
               "scheduler": "synchronous"}
    block_calls.interrupt_at(3, RuntimeError)
    target = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError):
        predict_blockwise(model, image, target, **options)
    block_calls.record_only()
    calls = block_calls.calls
    output = predict_blockwise(model, image, target, **options)
    n_blocks = len(dict(output.attrs)[RECORD_KEY]["done"])
    assert n_blocks == 4 and len(calls) == n_blocks - 2
    in_memory = {"tile_shape": (132, 140)}
    expected = (predict_tta(first, image, **in_memory) if tta
                else predict_ensemble([first, second], image, **in_memory))
    np.testing.assert_allclose(output[...], expected, rtol=0, atol=1e-6)


def test_bad_ensembles_are_refused_before_the_target_exists(rng, tmp_path):
    image = rng.random((60, 60), dtype=np.float32)
    target = tmp_path / "out.zarr"
    with pytest.raises(ValueError, match=r"model\[1\] has n_classes=3 but model\[0\] has 2"):
        predict_blockwise([make_model(), make_model(n_classes=3)], image, target)
    with pytest.raises(ValueError, match="at least one network"):
        predict_blockwise([], image, target)
    with pytest.raises(TypeError, match="tta must be true or false"):
        predict_blockwise(make_model(), image, target, tta="yes")
    with pytest.raises(ValueError, match="tile_shape"):  # valid for depth 2, not depth 3
        predict_blockwise([make_model(), make_model(depth=3)], image, target, tile_shape=(76, 92))
    assert not target.exists()
    assert predict_blockwise(make_model(), image, target, tta=np.bool_(True)).shape == (2, 60, 60)
