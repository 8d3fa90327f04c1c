"""`biounet predict --model A --model B`: the mean of the models' own predictions."""

import numpy as np
import pytest
import tifffile
import torch

from biounet.cli import main
from biounet.config import UNetConfig
from biounet.data.normalize import normalize_percentile
from biounet.inference.predict import predict_tiled
from biounet.inference.tta import predict_tta
from biounet.model.unet import UNet
from biounet.weightfile import save_model


def _model_file(path, seed, **config):
    torch.manual_seed(seed)
    model = UNet(UNetConfig(**{"depth": 2, "base_channels": 4, **config})).eval()
    return model, save_model(model, path)


@pytest.fixture
def image_file(tmp_path, rng):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, rng.integers(0, 4000, (45, 52), dtype=np.uint16))
    return path


@pytest.mark.parametrize("tta", [False, True])
def test_two_models_average_their_own_predictions(tmp_path, image_file, tta):
    first, first_file = _model_file(tmp_path / "a.safetensors", 0)
    second, second_file = _model_file(tmp_path / "b.safetensors", 1, depth=3)
    out = tmp_path / "out"
    code = main(
        ["predict", "--model", str(first_file), "--model", str(second_file), str(image_file),
         "--out", str(out), "--save-probabilities", "--quiet", *["--tta"] * tta]
    )
    assert code == 0
    image = normalize_percentile(tifffile.imread(image_file).astype(np.float32))
    single = predict_tta if tta else predict_tiled
    own = [single(model, image) for model in (first, second)]
    probabilities = tifffile.imread(out / "cells_probabilities.tif")
    np.testing.assert_allclose(probabilities, (own[0] + own[1]) / 2, atol=1e-5)
    assert min(np.abs(probabilities - one).max() for one in own) > 1e-4
    np.testing.assert_allclose(
        tifffile.imread(out / "cells_probability.tif"), 1.0 - probabilities[0], atol=1e-6
    )
    np.testing.assert_array_equal(
        tifffile.imread(out / "cells_mask.tif"), probabilities.argmax(axis=0)
    )


def test_members_predicting_other_classes_exit_2_naming_the_file(
    tmp_path, image_file, capsys
):
    _, two_classes = _model_file(tmp_path / "two.safetensors", 0)
    _, three_classes = _model_file(tmp_path / "three.safetensors", 1, n_classes=3)
    out = tmp_path / "out"
    code = main(
        ["predict", "--model", str(two_classes), "--model", str(three_classes),
         str(image_file), "--out", str(out), "--quiet"]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert f"--model {three_classes} has n_classes=3 but --model {two_classes} has 2" in error
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("tta", [False, True])
def test_an_ensemble_into_zarr_equals_the_folder_output(tmp_path, image_file, tta):
    _, first = _model_file(tmp_path / "a.safetensors", 0)
    _, second = _model_file(tmp_path / "b.safetensors", 1, depth=3)
    common = ["--model", str(first), "--model", str(second), str(image_file), "--quiet"]
    common += ["--tile-shape", "124", "124"] * (not tta) + ["--tta"] * tta
    assert main(["predict", *common, "--out", str(tmp_path / "out"), "--save-probabilities"]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "out.zarr"),
                 "--block-shape", "16", "32"]) == 0
    expected = tifffile.imread(tmp_path / "out" / "cells_probabilities.tif")
    import zarr

    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_allclose(group["0"][...], expected, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(group["labels/mask/0"][0], expected.argmax(axis=0))


def test_members_of_other_classes_into_zarr_exit_2_naming_the_files(
    tmp_path, image_file, capsys
):
    _, two_classes = _model_file(tmp_path / "two.safetensors", 0)
    _, three_classes = _model_file(tmp_path / "three.safetensors", 1, n_classes=3)
    code = main(
        ["predict", "--model", str(two_classes), "--model", str(three_classes),
         str(image_file), "--out", str(tmp_path / "out.zarr"), "--quiet", "--tta"]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert f"--model {three_classes} has n_classes=3 but --model {two_classes} has 2" in error
    assert not (tmp_path / "out.zarr").exists()


def test_an_interrupted_tta_ensemble_resumes_to_the_folder_output(tmp_path, rng, block_calls):
    import zarr

    from biounet.inference import blockwise

    image_file = tmp_path / "cells.tif"
    tifffile.imwrite(image_file, rng.integers(0, 4000, (150, 170), dtype=np.uint16))
    _, first = _model_file(tmp_path / "a.safetensors", 0)
    _, second = _model_file(tmp_path / "b.safetensors", 1, depth=3)
    common = ["--model", str(first), "--model", str(second), str(image_file), "--quiet", "--tta"]
    common += ["--memory-budget", "0.003"]  # tiles smaller than the image, chosen per pass
    assert main(["predict", *common, "--out", str(tmp_path / "out"), "--save-probabilities"]) == 0
    block_calls.interrupt_at(3)
    out = ["--out", str(tmp_path / "out.zarr")]
    assert main(["predict", *common, *out, "--block-shape", "32", "32", "--scheduler", "synchronous"]) == 130
    block_calls.record_only()
    calls = block_calls.calls
    # the tiles of both members and all 8 transforms come back from the budget, as before
    assert main(["predict", *common, *out, "--resume"]) == 0
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert len(calls) == len(dict(group["0"].attrs)[blockwise.RECORD_KEY]["done"]) - 2
    expected = tifffile.imread(tmp_path / "out" / "cells_probabilities.tif")
    np.testing.assert_allclose(group["0"][...], expected, rtol=0, atol=2e-6)
    block_calls.record_only()
    assert main(["predict", *common, *out, "--resume"]) == 0 and calls == []


def test_a_tile_shape_one_member_refuses_names_it(tmp_path, image_file, capsys):
    _, first = _model_file(tmp_path / "a.safetensors", 0)
    _, second = _model_file(tmp_path / "b.safetensors", 1, depth=3)
    for out in ("out", "out.zarr"):
        code = main(["predict", "--model", str(first), "--model", str(second), str(image_file),
                     "--out", str(tmp_path / out), "--quiet", "--tile-shape", "76", "92"])
        error = capsys.readouterr().err.strip()
        assert code == 2 and len(error.splitlines()) == 1
        assert f"--tile-shape for --model {second}: tile_shape (76, 92) is not a valid" in error
        assert not (tmp_path / out).exists() or not any((tmp_path / out).iterdir())
