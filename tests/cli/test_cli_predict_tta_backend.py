"""`biounet predict --tta` and `--backend onnxruntime`: outputs equal the library's."""

import numpy as np
import pytest
import tifffile

from biounet.cli import main
from biounet.data.normalize import normalize_percentile
from biounet.inference.predict import predict_tiled
from biounet.inference.tta import symmetries


@pytest.fixture
def image_file(tmp_path, rng):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, rng.integers(0, 4000, (61, 75), dtype=np.uint16))
    return path


def predict_cli(model, image, out, *extra):
    args = ["predict", "--model", str(model), str(image), "--out", str(out)]
    assert main([*args, "--save-probabilities", "--quiet", *extra]) == 0
    return tifffile.imread(out / f"{image.stem}_probabilities.tif")


def test_tta_averages_the_eight_symmetries(tiny_unet, model_file, image_file, tmp_path):
    image = normalize_percentile(tifffile.imread(image_file).astype(np.float32))
    # slow, obvious reference: predict each transformed image, map back, average
    reference = np.mean(
        [s.invert(predict_tiled(tiny_unet, np.ascontiguousarray(s.apply(image))))
         for s in symmetries(2)],
        axis=0,
    )
    plain = predict_cli(model_file, image_file, tmp_path / "plain")
    averaged = predict_cli(model_file, image_file, tmp_path / "tta", "--tta")
    np.testing.assert_allclose(averaged, reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(averaged.sum(axis=0), 1.0, atol=1e-5)
    assert np.abs(averaged - plain).max() > 1e-3  # a random network is not equivariant
    foreground = tifffile.imread(tmp_path / "tta" / "cells_probability.tif")
    np.testing.assert_allclose(foreground, 1.0 - averaged[0], atol=1e-6)


def test_default_backend_is_torch(model_file, image_file, tmp_path):
    default = predict_cli(model_file, image_file, tmp_path / "default")
    torch_backend = predict_cli(model_file, image_file, tmp_path / "torch", "--backend", "torch")
    np.testing.assert_array_equal(default, torch_backend)


@pytest.fixture
def onnx_file(tiny_unet, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from biounet.export.onnx import export_onnx

    return export_onnx(tiny_unet, tmp_path / "model.onnx", exporter="legacy")


@pytest.mark.parametrize("extra", [[], ["--tile-shape", "100", "108"], ["--tta"]])
def test_onnxruntime_backend_equals_torch_backend(
    model_file, onnx_file, image_file, tmp_path, extra
):
    torch_output = predict_cli(model_file, image_file, tmp_path / "torch", *extra)
    ort_output = predict_cli(
        onnx_file, image_file, tmp_path / "ort", "--backend", "onnxruntime", *extra
    )
    np.testing.assert_allclose(ort_output, torch_output, rtol=0, atol=1e-4)


def test_onnx_file_needs_the_onnxruntime_backend(onnx_file, image_file, tmp_path, capsys):
    code = main(["predict", "--model", str(onnx_file), str(image_file), "--out",
                 str(tmp_path / "out"), "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "--backend onnxruntime" in error


def test_missing_onnxruntime_exits_2_naming_the_extra(
    model_file, image_file, tmp_path, capsys, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    code = main(["predict", "--model", str(model_file), str(image_file), "--out",
                 str(tmp_path / "out"), "--backend", "onnxruntime", "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "pip install 'biounet[export]'" in error
    assert not (tmp_path / "out").exists()


def test_onnxruntime_refuses_options_before_the_export(
    model_file, image_file, tmp_path, capsys, monkeypatch
):
    # a two-class weight file has no interior class: refused without the 15-40 s export
    pytest.importorskip("onnxruntime")
    import biounet.export.onnx_runtime as onnx_module

    def no_export(*args, **kwargs):
        raise AssertionError("exported a model the options refuse")

    monkeypatch.setattr(onnx_module, "export_onnx", no_export)
    args = ["predict", "--model", str(model_file), str(image_file), "--out", str(tmp_path / "o"),
            "--backend", "onnxruntime", "--quiet"]
    assert main([*args, "--instances", "--seeds", "interior"]) == 2
    assert "--seeds interior needs the interior class" in capsys.readouterr().err
    assert main([*args, "--tile-shape", "100", "108", "20"]) == 2
    assert "--tile-shape needs 2 values" in capsys.readouterr().err
