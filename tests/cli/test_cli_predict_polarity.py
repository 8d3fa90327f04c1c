"""`biounet predict` normalises as the model was trained: --normalization and --polarity
default to what the weight file records, in memory and out of core."""

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from biounet.cli import main
from biounet.data.normalize import normalize_percentile, normalize_zscore
from biounet.inference.predict import predict_tiled
from biounet.weightfile import save_model, stored_preprocessing


@pytest.fixture
def bright_background_png(tmp_path, rng):
    """A brightfield-like image: dark objects on a bright, noisy background."""
    image = rng.integers(180, 240, (70, 90)).astype(np.uint8)
    image[20:40, 30:60] = rng.integers(10, 40, (20, 30))
    path = tmp_path / "bright.png"
    Image.fromarray(image).save(path)
    return path, image


def predict(model, image, out, *extra):
    return main(["predict", "--model", str(model), str(image), "--out", str(out), "--quiet", *extra])


def test_recorded_polarity_and_normalization_are_applied(tiny_unet, bright_background_png, tmp_path):
    path, image = bright_background_png
    recorded = save_model(
        tiny_unet, tmp_path / "bright.safetensors",
        metadata={"normalization": "percentile", "polarity": "bright_objects"},
    )
    assert stored_preprocessing(recorded) == {"normalization": "percentile", "polarity": "bright_objects"}
    assert predict(recorded, path, tmp_path / "a") == 0
    inverted = normalize_percentile(image, polarity="bright_objects")
    expected = predict_tiled(tiny_unet, inverted[None])[1]
    np.testing.assert_allclose(tifffile.imread(tmp_path / "a" / "bright_probability.tif"), expected, atol=1e-5)
    # the flag overrides the file; a file without the record reads as percentile, as_is
    assert predict(recorded, path, tmp_path / "b", "--polarity", "as_is") == 0
    plain = predict_tiled(tiny_unet, normalize_percentile(image)[None])[1]
    np.testing.assert_allclose(tifffile.imread(tmp_path / "b" / "bright_probability.tif"), plain, atol=1e-5)
    assert np.abs(expected - plain).max() > 1e-3  # the polarity changed the prediction
    bare = save_model(tiny_unet, tmp_path / "bare.safetensors")
    assert stored_preprocessing(bare) == {"normalization": "percentile", "polarity": "as_is"}
    assert predict(bare, path, tmp_path / "c", "--polarity", "bright_objects") == 0
    np.testing.assert_allclose(tifffile.imread(tmp_path / "c" / "bright_probability.tif"), expected, atol=1e-5)


def test_recorded_zscore_is_applied(tiny_unet, bright_background_png, tmp_path):
    path, image = bright_background_png
    recorded = save_model(tiny_unet, tmp_path / "z.safetensors", metadata={"normalization": "zscore"})
    assert predict(recorded, path, tmp_path / "a") == 0
    expected = predict_tiled(tiny_unet, normalize_zscore(image)[None])[1]
    np.testing.assert_allclose(tifffile.imread(tmp_path / "a" / "bright_probability.tif"), expected, atol=1e-5)


def test_out_of_core_applies_the_recorded_polarity(tiny_unet, bright_background_png, tmp_path):
    _, image = bright_background_png
    source = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=image.shape, chunks=(32, 32), dtype=image.dtype)
    source[...] = image
    recorded = save_model(tiny_unet, tmp_path / "bright.safetensors", metadata={"polarity": "bright_objects"})
    assert predict(recorded, tmp_path / "in.zarr", tmp_path / "out.zarr") == 0
    expected = predict_tiled(tiny_unet, normalize_percentile(image, polarity="bright_objects")[None])
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[...], expected, atol=1e-5)


def one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert error.startswith("biounet predict: error:") and len(error.splitlines()) == 1, error
    return error


def test_ensemble_members_recording_different_polarities_are_refused(
    tiny_unet, bright_background_png, tmp_path, capsys
):
    path, _ = bright_background_png
    first = save_model(tiny_unet, tmp_path / "one.safetensors", metadata={"polarity": "bright_objects"})
    second = save_model(tiny_unet, tmp_path / "two.safetensors")
    code = predict(first, path, tmp_path / "out", "--model", str(second))
    assert code == 2
    error = one_line_error(capsys)
    assert "different polarity" in error and "pass --polarity" in error and str(second) in error
    assert predict(first, path, tmp_path / "out", "--model", str(second), "--polarity", "as_is") == 0


def test_polarity_without_normalization_is_refused(tiny_unet, model_file, bright_background_png, tmp_path, capsys):
    path, _ = bright_background_png
    code = predict(model_file, path, tmp_path / "out", "--normalization", "none", "--polarity", "bright_objects")
    assert code == 2
    assert "--polarity 'bright_objects' normalises bright-background images as their negatives: it needs normalization 'percentile' or 'zscore', got 'none'" in one_line_error(capsys)
    recorded = save_model(tiny_unet, tmp_path / "bright.safetensors", metadata={"polarity": "bright_objects"})
    assert predict(recorded, path, tmp_path / "out", "--normalization", "none") == 2
    assert f"--model {recorded} records polarity (pass --polarity as_is to drop it): 'bright_objects'" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_bioimageio_export_refuses_a_bright_objects_model(tiny_unet, tmp_path, capsys):
    recorded = save_model(tiny_unet, tmp_path / "bright.safetensors", metadata={"polarity": "bright_objects"})
    code = main(["export", "--model", str(recorded), "--format", "bioimageio", "--out", str(tmp_path / "m.zip")])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "polarity 'bright_objects'" in error and "export it as ONNX or TorchScript" in error
    assert len(error.splitlines()) == 1 and not (tmp_path / "m.zip").exists()


def test_an_onnx_export_keeps_the_polarity_for_predict(tiny_unet, bright_background_png, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path, image = bright_background_png
    recorded = save_model(tiny_unet, tmp_path / "bright.safetensors", metadata={"polarity": "bright_objects"})
    onnx_file = tmp_path / "bright.onnx"
    code = main(["export", "--model", str(recorded), "--format", "onnx", "--out", str(onnx_file), "--onnx-exporter", "legacy"])
    assert code == 0
    assert stored_preprocessing(onnx_file) == {"normalization": "percentile", "polarity": "bright_objects"}
    assert predict(onnx_file, path, tmp_path / "a", "--backend", "onnxruntime") == 0
    expected = predict_tiled(tiny_unet, normalize_percentile(image, polarity="bright_objects")[None])[1]
    np.testing.assert_allclose(tifffile.imread(tmp_path / "a" / "bright_probability.tif"), expected, atol=1e-4)


def test_an_unknown_recorded_value_names_the_file(tiny_unet, bright_background_png, tmp_path, capsys):
    path, _ = bright_background_png
    odd = save_model(tiny_unet, tmp_path / "odd.safetensors", metadata={"polarity": "sideways"})
    assert predict(odd, path, tmp_path / "out") == 2
    error = one_line_error(capsys)
    assert f"model {odd} records polarity 'sideways'; expected one of ['as_is', 'bright_objects']" in error
