"""`biounet train` in-process: a run on a tiny synthetic folder, resume, and refused inputs."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from biounet.cli import main


def write_pairs(folder, rng, count=4, size=64):
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for index in range(count):
        labels = np.zeros((size, size), np.uint8)
        for _ in range(4):
            y, x = rng.integers(8, size - 8, size=2)
            labels[y - 5 : y + 5, x - 5 : x + 5] = 255
        image = np.clip(labels * 0.6 + rng.normal(40, 20, labels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"{index:02d}.png")
        Image.fromarray(labels).save(folder / "labels" / f"{index:02d}.png")
    return folder


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({
        "model": {"depth": 2, "base_channels": 4},
        "train": {"tile_shape": [60, 60], "workers": 0, "validate_every": 3, "checkpoint_every": 3},
    }))
    return path


def test_train_then_resume_then_predict(tmp_path, rng, tiny_config, capsys):
    data = write_pairs(tmp_path / "data", rng)
    run = tmp_path / "run"
    common = ["--data", str(data), "--out", str(run), "--quiet"]
    assert main(["train", *common, "--config", str(tiny_config), "--iterations", "3"]) == 0
    assert "finished at iteration 3" in capsys.readouterr().out
    assert main(["train", *common, "--config", str(tiny_config), "--iterations", "3"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", *common, "--resume", "--iterations", "6"]) == 0
    assert "finished at iteration 6" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["base_channels"] == 4 and saved["train"]["iterations"] == 6
    out = tmp_path / "predicted"
    assert main(["predict", "--model", str(run / "best.safetensors"), str(data / "images" / "00.png"), "--out", str(out), "--quiet"]) == 0
    assert (out / "00_probability.tif").is_file()


def test_precision_flag_reaches_the_run_config(tmp_path, rng, tiny_config, capsys):
    data = write_pairs(tmp_path / "data", rng)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--quiet", "--config", str(tiny_config)]
    assert main([*args, "--iterations", "2", "--precision", "bfloat16"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "bfloat16"
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--precision", "float16"])
    assert exit_info.value.code == 2 and "--precision" in capsys.readouterr().err


def test_skeleton_recall_flag_reaches_the_run_config(tmp_path, rng, tiny_config, capsys):
    data = write_pairs(tmp_path / "data", rng)
    args = ["train", "--data", str(data), "--quiet", "--config", str(tiny_config)]
    assert main([*args, "--out", str(tmp_path / "run"), "--iterations", "2", "--skeleton-recall", "0.5"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["skeleton_recall"] == 0.5
    assert main([*args, "--out", str(tmp_path / "bad"), "--skeleton-recall", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["biounet train: error: --skeleton-recall: skeleton_recall must be >= 0.0, got -1.0"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--batch-size", "0", "--batch-size: batch_size must be >= 1, got 0"),
        ("--iterations", "-3", "--iterations: iterations must be >= 1, got -3"),
        ("--learning-rate", "nan", "--learning-rate: learning_rate must be a finite number, got nan"),
        ("--spacing", "0", "--spacing: spacing must be finite and > 0 on every axis, got [0.0]"),
        ("--spacing", "-1", "--spacing: spacing must be finite and > 0 on every axis, got [-1.0]"),
    ],
)
def test_a_bad_override_names_its_flag(tmp_path, rng, tiny_config, capsys, flag, value, message):
    data = write_pairs(tmp_path / "data", rng, count=2)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet", "--config", str(tiny_config)]
    assert main([*args, flag, value]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"biounet train: error: {message}"]
    assert not (tmp_path / "run" / "config.json").exists()


def test_spacing_flag_reaches_the_run_config(tmp_path, rng, tiny_config, capsys):
    data = write_pairs(tmp_path / "data", rng)
    args = ["train", "--data", str(data), "--quiet", "--config", str(tiny_config)]
    assert main([*args, "--out", str(tmp_path / "run"), "--iterations", "2", "--spacing", "1", "2"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["spacing"] == [1.0, 2.0]
    assert main([*args, "--out", str(tmp_path / "bad"), "--spacing", "8", "1", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["biounet train: error: --spacing needs 2 values for this 2-D network, got [8.0, 1.0, 1.0]"]


def make_no_foreground(folder, rng):
    write_pairs(folder, rng, count=2)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "labels" / "01.png")


def make_missing_label(folder, rng):
    write_pairs(folder, rng, count=2)
    (folder / "labels" / "01.png").unlink()


def make_shape_mismatch(folder, rng):
    write_pairs(folder, rng, count=2)
    Image.fromarray(np.zeros((60, 64), np.uint8)).save(folder / "labels" / "01.png")


def make_empty(folder, rng):
    folder.mkdir()


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (make_empty, [], "data"),
        (make_missing_label, [], "01"),
        (make_shape_mismatch, [], "shape"),
        (make_no_foreground, [], "foreground"),
        (lambda f, r: write_pairs(f, r), ["--tile-shape", "61", "60"], "nearest valid"),
        (lambda f, r: write_pairs(f, r), ["--val-fraction", "1.5"], "--val-fraction"),
        (lambda f, r: write_pairs(f, r), ["--iterations", "0"], "iterations"),
    ],
)
def test_bad_training_input(tmp_path, rng, tiny_config, capsys, make, extra, message):
    data = tmp_path / "data"
    make(data, rng)
    run = tmp_path / "run"
    code = main(["train", "--data", str(data), "--out", str(run), "--config", str(tiny_config), "--iterations", "2", "--quiet", *extra])
    error = capsys.readouterr().err.strip()
    assert code == 2, error
    assert len(error.splitlines()) == 1 and re.search(message, error), error
    assert not run.exists(), "nothing half-written"


def test_unknown_config_key(tmp_path, rng, capsys):
    data = write_pairs(tmp_path / "data", rng)
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"train": {"learning_rat": 0.1}}))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    assert "unknown TrainConfig keys ['learning_rat']" in capsys.readouterr().err
    config.write_text("{not json")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def write_volume_stack(folder, rng, shape=(12, 48, 48)):
    """`cells-volume.tif` + `cells-labels.tif`: a (Z, Y, X) stack of touching flattened balls."""
    import tifffile

    z, y, x = np.indices(shape)
    labels = np.zeros(shape, np.uint16)
    nearest = np.full(shape, np.inf)
    for cell in range(1, 7):
        centre = [rng.uniform(2, size - 2) for size in shape]
        distance = np.sqrt(((z - centre[0]) * 3) ** 2 + (y - centre[1]) ** 2
                           + (x - centre[2]) ** 2) / rng.uniform(6, 9)
        inside = (distance < 1) & (distance < nearest)
        labels[inside], nearest[inside] = cell, distance[inside]
    image = np.clip((labels > 0) * 120 + rng.normal(60, 25, shape), 0, 255).astype(np.uint8)
    folder.mkdir(parents=True)
    tifffile.imwrite(folder / "cells-volume.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / "cells-labels.tif", labels, photometric="minisblack")
    return folder


def test_3d_stack_train_predict_evaluate(tmp_path, rng, capsys):
    # Cicek et al. 2016: the whole path on one (Z, Y, X) TIFF stack pair, anisotropic net
    import tifffile

    data, val = write_volume_stack(tmp_path / "data", rng), write_volume_stack(tmp_path / "val", rng)
    config = tmp_path / "3d.json"
    config.write_text(json.dumps({
        "model": {"ndim": 3, "depth": 2, "base_channels": 4, "pool_z": [False, True]},
        "train": {"tile_shape": [28, 44, 44], "batch_size": 1, "workers": 0, "sigma_px": 2.0,
                  "validate_every": 3, "checkpoint_every": 3},
        "augment": {"elastic_sigma_px": [1.0, 3.0, 3.0], "image_order": 1},
    }))
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--val", str(val), "--out", str(run), "--quiet",
                 "--config", str(config), "--iterations", "3"]) == 0
    assert "finished at iteration 3" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["pool_z"] == [False, True] and saved["augment"]["ndim"] == 3
    out = tmp_path / "predicted"
    assert main(["predict", "--model", str(run / "best.safetensors"), str(val / "cells-volume.tif"),
                 "--out", str(out), "--tile-shape", "28", "48", "52", "--quiet"]) == 0
    probability = tifffile.imread(out / "cells-volume_probability.tif")
    assert probability.shape == (12, 48, 48) and np.isfinite(probability).all()
    report = tmp_path / "report.json"
    assert main(["evaluate", "--pred", str(out), "--gt", str(val), "--volume",
                 "--metrics", "ctc,instance", "--out", str(report)]) == 0
    overall = json.loads(report.read_text())["overall"]
    assert overall["n_images"] == 1
    assert all(np.isfinite(overall[key]) for key in ("seg", "ap_50", "dsb_score"))


def test_boundary_class_from_the_command_line(tmp_path, rng, capsys):
    data = write_pairs(tmp_path / "data", rng)
    config = tmp_path / "boundary.json"
    config.write_text(json.dumps({
        "model": {"depth": 2, "base_channels": 4, "n_classes": 3, "boundary_class": True},
        "train": {"tile_shape": [60, 60], "workers": 0, "validate_every": 2, "checkpoint_every": 2},
    }))
    common = ["train", "--data", str(data), "--config", str(config), "--iterations", "2", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "run"), "--label-kind", "semantic"]) == 2
    assert "--label-kind semantic: model.boundary_class derives its classes from instance labels" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main([*common, "--out", str(tmp_path / "run")]) == 0
    from biounet.weightfile import load_model

    assert load_model(tmp_path / "run" / "best.safetensors").config.boundary_class


def test_polarity_flag_reaches_the_config_and_the_weight_file(tmp_path, rng, tiny_config):
    from biounet.weightfile import stored_preprocessing

    data = write_pairs(tmp_path / "data", rng)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--quiet", "--config", str(tiny_config)]
    assert main([*args, "--iterations", "2", "--polarity", "bright_objects"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["polarity"] == "bright_objects"
    assert stored_preprocessing(run / "model.safetensors")["polarity"] == "bright_objects"
