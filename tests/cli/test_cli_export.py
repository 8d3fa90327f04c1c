"""`biounet export` in-process: each format round-trips; user errors exit 2 in one line."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image

import biounet.cli
from biounet.cli import main
from biounet.config import UNetConfig
from biounet.model.unet import UNet
from biounet.weightfile import save_model


def test_export_is_a_registered_command(capsys):
    assert biounet.cli.COMMANDS["export"][0] == "biounet.cli.export"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    assert "--format" in capsys.readouterr().out


@pytest.fixture
def small_unet():
    torch.manual_seed(0)
    return UNet(UNetConfig(depth=2, base_channels=4)).eval()


@pytest.fixture
def model_file(small_unet, tmp_path):
    return save_model(small_unet, tmp_path / "model.safetensors")


def test_torchscript(small_unet, model_file, tmp_path, rng, capsys):
    out = tmp_path / "unet.pt"
    assert (
        main(["export", "--model", str(model_file), "--format", "torchscript", "--out", str(out)])
        == 0
    )
    assert str(out) in capsys.readouterr().out
    batch = rng.random((2, 1, 64, 76), dtype=np.float32)
    with torch.no_grad():
        expected = small_unet(torch.from_numpy(batch))
        np.testing.assert_allclose(
            torch.jit.load(str(out))(torch.from_numpy(batch)), expected, atol=1e-5
        )


def test_torchscript_keeps_the_weight_files_preprocessing(small_unet, tmp_path):
    from biounet.export.torchscript import read_record

    recorded = save_model(
        small_unet,
        tmp_path / "z.safetensors",
        metadata={"normalization": "zscore", "polarity": "bright_objects"},
    )
    out = tmp_path / "unet.pt"
    args = ["export", "--model", str(recorded), "--format", "torchscript", "--out", str(out)]
    assert main(args) == 0
    record = read_record(out)
    assert (record["normalization"], record["polarity"]) == ("zscore", "bright_objects")
    # --normalization says otherwise (e.g. for an old file that records nothing)
    assert main([*args, "--overwrite", "--normalization", "percentile"]) == 0
    record = read_record(out)
    assert (record["normalization"], record["polarity"]) == ("percentile", "bright_objects")


def test_normalization_none_is_refused_outside_bioimageio(model_file, tmp_path, capsys):
    out = tmp_path / "unet.pt"
    args = ["export", "--model", str(model_file), "--format", "torchscript", "--out", str(out)]
    assert main([*args, "--normalization", "none"]) == 2
    err = capsys.readouterr().err
    assert "--normalization none is for bioimageio packages" in err and err.count("\n") == 1
    assert not out.exists()


def test_onnx(small_unet, model_file, tmp_path, rng):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "unet.onnx"
    args = [
        "export",
        "--model",
        str(model_file),
        "--format",
        "onnx",
        "--out",
        str(out),
        "--onnx-exporter",
        "legacy",
        "--opset",
        "17",
        "--tile-shape",
        "60",
        "48",
    ]
    assert main(args) == 0
    batch = rng.random((1, 1, 92, 64), dtype=np.float32)
    session = ort.InferenceSession(str(out))
    with torch.no_grad():
        expected = small_unet(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(session.run(None, {"image": batch})[0], expected, atol=1e-4)


def test_bioimageio_with_a_test_image(small_unet, model_file, tmp_path, rng):
    pytest.importorskip("bioimageio.spec")
    pytest.importorskip("onnxruntime")
    from biounet.export.bioimageio import load_bioimageio_package

    picture = tmp_path / "cells.png"
    Image.fromarray(rng.integers(0, 255, (70, 90), dtype=np.uint8)).save(picture)
    out = tmp_path / "unet.zip"
    args = [
        "export",
        "--model",
        str(model_file),
        "--format",
        "bioimageio",
        "--out",
        str(out),
        "--onnx-exporter",
        "legacy",
        "--test-image",
        str(picture),
        "--name",
        "cli test model",
        "--author",
        "A. Author",
        "--author",
        "B. Author",
        "--license",
        "CC-BY-4.0",
    ]
    assert main(args) == 0
    loaded = load_bioimageio_package(out)
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), small_unet.state_dict().values())
    )


def test_unknown_format_is_an_argparse_error(model_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "export",
                "--model",
                str(model_file),
                "--format",
                "keras",
                "--out",
                str(tmp_path / "m"),
            ]
        )
    assert exit_info.value.code == 2
    assert "invalid choice: 'keras'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tile-shape", "100"], "--tile-shape needs 2 values"),
        (["--tile-shape", "50", "52"], "nearest valid sizes along Y are 48 and 52"),
    ],
)
def test_bad_tile_shape_exits_2(model_file, tmp_path, capsys, extra, message):
    out = tmp_path / "unet.pt"
    assert (
        main(
            [
                "export",
                "--model",
                str(model_file),
                "--format",
                "torchscript",
                "--out",
                str(out),
                *extra,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_model_exits_2_in_one_line(tmp_path, capsys):
    code = main(
        [
            "export",
            "--model",
            str(tmp_path / "none.safetensors"),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "unet.onnx"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("biounet export: error:")
        and "does not exist" in err
        and err.count("\n") == 1
    )


def test_existing_output_needs_overwrite(model_file, tmp_path, capsys):
    out = tmp_path / "unet.pt"
    out.write_bytes(b"keep")
    args = ["export", "--model", str(model_file), "--format", "torchscript", "--out", str(out)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"
    assert main([*args, "--overwrite"]) == 0
    assert out.read_bytes() != b"keep"


def test_missing_optional_package_exits_2_naming_the_extra(
    model_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code = main(
        [
            "export",
            "--model",
            str(model_file),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "u.onnx"),
            "--onnx-exporter",
            "legacy",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install 'biounet[export]'" in err and err.count("\n") == 1
