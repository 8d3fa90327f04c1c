"""`biounet predict` in-process: outputs equal the library's, bad input exits 2 in one line."""

import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from biounet.cli import main
from biounet.data.normalize import normalize_percentile
from biounet.inference.predict import predict_tiled
from biounet.weightfile import save_model


def test_predict_png_and_stack(tiny_unet, model_file, tmp_path, rng):
    grey = rng.integers(0, 255, (70, 90), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "cells.png")
    stack = rng.integers(0, 4000, (3, 40, 50), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    code = main(
        ["predict", "--model", str(model_file), str(tmp_path / "cells.png"),
         str(tmp_path / "stack.tif"), "--out", str(out), "--save-probabilities", "--quiet"]
    )
    assert code == 0
    expected = predict_tiled(tiny_unet, normalize_percentile(grey.astype(np.float32)))
    probability = tifffile.imread(out / "cells_probability.tif")
    np.testing.assert_allclose(probability, expected[1], atol=1e-5)
    np.testing.assert_array_equal(tifffile.imread(out / "cells_mask.tif"), expected.argmax(0))
    assert tifffile.imread(out / "cells_probabilities.tif").shape == (2, 70, 90)
    assert tifffile.imread(out / "stack_probability.tif").shape == (3, 40, 50)
    second_page = predict_tiled(tiny_unet, normalize_percentile(stack[1].astype(np.float32)))
    np.testing.assert_allclose(tifffile.imread(out / "stack_probability.tif")[1], second_page[1], atol=1e-5)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_class_map_keeps_ids_above_255(tmp_path, rng):
    import torch

    from biounet.config import UNetConfig
    from biounet.model.unet import UNet

    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=1, base_channels=2, n_classes=300)).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[299] = 5.0
    model_file = save_model(model, tmp_path / "many.safetensors")
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(tmp_path / "a.png")
    code = main(["predict", "--model", str(model_file), str(tmp_path / "a.png"),
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    mask = tifffile.imread(tmp_path / "out" / "a_mask.tif")
    assert mask.dtype == np.uint16 and (mask == 299).all()


def written(path, data):
    path.write_bytes(data)
    return path


def write_rgb(path, rng):
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize(
    ("make_input", "extra", "message"),
    [
        (lambda d, r: d / "missing.tif", [], "does not exist"),
        (lambda d, r: d, [], "is a folder"),
        (lambda d, r: written(d / "empty.tif", b""), [], "empty file"),
        (lambda d, r: written(d / "text.tif", b"no"), [], "cannot be read as TIFF"),
        (lambda d, r: write_rgb(d / "rgb.png", r) or d / "rgb.png", [], "expects 1 \\(grey\\)"),
        (lambda d, r: tifffile.imwrite(d / "nan.tif", np.full((40, 40), np.nan, np.float32)) or d / "nan.tif", [], "NaN"),
        (lambda d, r: tifffile.imwrite(d / "ok.tif", np.ones((40, 40), np.float32)) or d / "ok.tif", ["--tile-shape", "125", "124"], "nearest valid"),
        (lambda d, r: tifffile.imwrite(d / "ok.tif", np.ones((40, 40), np.float32)) or d / "ok.tif", ["--tile-shape", "124"], "needs 2 values"),
        (lambda d, r: tifffile.imwrite(d / "ok.tif", np.ones((40, 40), np.float32)) or d / "ok.tif", ["--batch-size", "0"], "--batch-size"),
        (lambda d, r: tifffile.imwrite(d / "v.tif", np.ones((2, 3, 4, 40, 40), np.float32), photometric="minisblack") or d / "v.tif", [], "shape"),
    ],
)
def test_bad_input_exits_2_with_one_line(model_file, tmp_path, rng, capsys, make_input, extra, message):
    source = make_input(tmp_path, rng)
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model_file), str(source), "--out", str(out), "--quiet", *extra])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("biounet predict: error:") and len(error.splitlines()) == 1
    assert re.search(message, error), error
    assert not out.exists() or not any(out.iterdir())


def test_refuses_to_overwrite_and_bad_model(model_file, tmp_path, capsys):
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.ones((30, 30), np.uint8))
    args = ["predict", "--model", str(model_file), str(image), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_text("nope")
    assert main(["predict", "--model", str(bogus), str(image), "--out", str(tmp_path / "p")]) == 2
    assert "not a readable safetensors" in capsys.readouterr().err


def test_instances_follow_the_library_page_by_page(tiny_unet, model_file, tmp_path, rng, monkeypatch):
    import biounet.postprocess as postprocess
    from biounet.postprocess import PostprocessConfig

    calls = []
    original = postprocess.instances_from_probabilities

    def spy(probabilities, **options):
        calls.append(options)
        return original(probabilities, **options)

    monkeypatch.setattr(postprocess, "instances_from_probabilities", spy)
    stack = rng.integers(0, 4000, (2, 40, 50), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    maps = [predict_tiled(tiny_unet, normalize_percentile(page.astype(np.float32))) for page in stack]
    threshold = float(np.median(1.0 - maps[0][0]))  # an untrained network: objects at its median
    assert main(["predict", "--model", str(model_file), str(tmp_path / "stack.tif"), "--out", str(out), "--instances", "--quiet", "--threshold", str(threshold), "--min-size", "1"]) == 0
    instances = tifffile.imread(out / "stack_instances.tif")
    assert instances.shape == (2, 40, 50) and instances.dtype == np.uint16
    config = PostprocessConfig(threshold=threshold, min_size=1)
    n_before = 0
    for page, probabilities in enumerate(maps):
        expected = original(probabilities, config=config)
        np.testing.assert_array_equal(instances[page], np.where(expected > 0, expected + n_before, 0))
        n_before += expected.max()
    assert n_before > 0 and len(np.unique(instances)) == n_before + 1  # ids unique in the stack
    assert [options["boundary_class"] for options in calls] == [False, False]
    assert calls[0]["config"].seeds == "distance"


def test_instances_of_a_boundary_class_model_are_seeded_by_its_interior(tmp_path, rng, monkeypatch):
    import torch

    import biounet.postprocess as postprocess
    from biounet.config import UNetConfig
    from biounet.model.unet import UNet

    calls = []
    original = postprocess.instances_from_probabilities
    monkeypatch.setattr(postprocess, "instances_from_probabilities", lambda p, **options: calls.append(options) or original(p, **options))
    torch.manual_seed(0)
    Image.fromarray(rng.integers(0, 255, (40, 44), dtype=np.uint8)).save(tmp_path / "a.png")
    for flag in (True, False):
        torch.manual_seed(0)
        model = UNet(UNetConfig(depth=2, base_channels=4, n_classes=3, boundary_class=flag)).eval()
        model_file = save_model(model, tmp_path / f"{flag}.safetensors")
        assert main(["predict", "--model", str(model_file), str(tmp_path / "a.png"), "--out", str(tmp_path / str(flag)), "--instances", "--quiet"]) == 0
        expected = original(predict_tiled(model, normalize_percentile(np.asarray(Image.open(tmp_path / "a.png"), np.float32))), boundary_class=flag)
        np.testing.assert_array_equal(tifffile.imread(tmp_path / str(flag) / "a_instances.tif"), expected)
    assert [options["boundary_class"] for options in calls] == [True, False]
    assert [options["config"].seeds for options in calls] == ["interior", "distance"]
    # its interiors seed the watershed, which --spacing does not measure
    args = ["predict", "--model", str(tmp_path / "True.safetensors"), str(tmp_path / "a.png"), "--instances", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "s"), "--spacing", "1", "1"]) == 2
    assert main([*args, "--out", str(tmp_path / "s"), "--spacing", "1", "1", "--seeds", "distance"]) == 0


def test_instances_are_refused_with_zarr_output(model_file, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((40, 40), np.uint8))
    code = main(["predict", "--model", str(model_file), str(tmp_path / "a.tif"), "--out", str(tmp_path / "o.zarr"), "--instances"])
    assert code == 2
    assert "--instances is not available with zarr output" in capsys.readouterr().err


def test_post_processing_flags_of_instances(tiny_unet, model_file, tmp_path, rng, capsys):
    from biounet.postprocess import PostprocessConfig, instances_from_probabilities

    grey = rng.integers(0, 255, (50, 60), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "a.png")
    common = ["predict", "--model", str(model_file), str(tmp_path / "a.png"), "--quiet"]
    assert main([*common, "--out", str(tmp_path / "o"), "--instances", "--threshold", "0.55", "--min-size", "3", "--no-watershed"]) == 0
    probabilities = predict_tiled(tiny_unet, normalize_percentile(grey.astype(np.float32)))
    config = PostprocessConfig(threshold=0.55, min_size=3, watershed=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o" / "a_instances.tif"), instances_from_probabilities(probabilities, config=config))
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "p"), "--threshold", "0.7"]) == 2
    assert "--threshold: post-processing options of --instances; add --instances" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "p"), "--instances", "--threshold", "1.5"]) == 2
    assert "--threshold must lie in [0, 1), got 1.5" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "p"), "--instances", "--min-size", "-1"]) == 2
    assert "--min-size must be >= 0, got -1" in capsys.readouterr().err


def test_post_processing_help_names_the_library_defaults():
    import argparse

    from biounet.cli.postprocess_args import SEEDS, add_postprocess_arguments
    from biounet.postprocess import SEED_METHODS, PostprocessConfig

    parser = argparse.ArgumentParser()
    add_postprocess_arguments(parser, used_by="test")
    helps = {action.dest: action.help for action in parser._actions}
    defaults = PostprocessConfig()
    assert f"(default: {defaults.threshold})" in helps["threshold"]
    assert f"(default: {defaults.min_size})" in helps["min_size"]
    assert f"(default: {defaults.min_seed_prominence_px})" in helps["seed_prominence"]
    assert f"(default: {defaults.distance_sigma_px:g})" in helps["distance_sigma"]
    assert defaults.watershed is True  # --no-watershed turns off what is on by default
    assert SEEDS == SEED_METHODS and defaults.seeds == "distance"


def test_overwrite_removes_instances_of_an_earlier_run(model_file, tmp_path, rng, capsys):
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(tmp_path / "a.png")
    common = ["predict", "--model", str(model_file), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*common, "--instances", "--save-probabilities"]) == 0
    assert (tmp_path / "o" / "a_instances.tif").is_file()
    assert main([*common, "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_mask.tif", "a_probabilities.tif", "a_probability.tif"]
    capsys.readouterr()
    assert main([*common, "--overwrite", "--instances", "--min-size", "-3"]) == 2
    assert (tmp_path / "o" / "a_probability.tif").is_file()  # refused before any work


def test_seeds_flag_chooses_the_seeds_of_a_boundary_class_model(tmp_path, rng, monkeypatch, capsys):
    import torch

    import biounet.postprocess as postprocess
    from biounet.config import UNetConfig
    from biounet.model.unet import UNet

    seen = []
    original = postprocess.instances_from_probabilities
    monkeypatch.setattr(postprocess, "instances_from_probabilities", lambda p, **options: seen.append(options["config"].seeds) or original(p, **options))
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(tmp_path / "a.png")
    torch.manual_seed(0)
    boundary = save_model(UNet(UNetConfig(depth=2, base_channels=4, n_classes=3, boundary_class=True)).eval(), tmp_path / "b.safetensors")
    plain = save_model(UNet(UNetConfig(depth=2, base_channels=4)).eval(), tmp_path / "p.safetensors")
    common = [str(tmp_path / "a.png"), "--instances", "--quiet", "--overwrite"]
    assert main(["predict", "--model", str(boundary), *common, "--out", str(tmp_path / "o1"), "--seeds", "distance"]) == 0
    assert main(["predict", "--model", str(boundary), *common, "--out", str(tmp_path / "o2")]) == 0
    assert seen == ["distance", "interior"]
    capsys.readouterr()
    assert main(["predict", "--model", str(plain), *common, "--out", str(tmp_path / "o3"), "--seeds", "interior"]) == 2
    assert "--seeds interior needs the interior class" in capsys.readouterr().err
    assert main(["predict", "--model", str(plain), *common, "--out", str(tmp_path / "o3"), "--seeds", "probability", "--threshold", "0.95"]) == 2
    assert "--threshold must be below it, got 0.95" in capsys.readouterr().err
    assert main(["predict", "--model", str(plain), *common, "--out", str(tmp_path / "o3"), "--seeds", "probability", "--no-watershed"]) == 2
    assert "--seeds chooses the watershed's seeds; drop it or --no-watershed" in capsys.readouterr().err


def test_outputs_state_the_pixel_size_of_their_input(model_file, tmp_path, rng):
    from biounet.data.calibration import read_calibration

    stack = rng.integers(0, 4000, (2, 40, 50), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "em.tif", stack, imagej=True, resolution=(250.0, 250.0),
                     metadata={"unit": "micron", "spacing": 0.05, "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "plain.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_file), str(tmp_path / "em.tif"), str(tmp_path / "plain.tif"),
                 "--out", str(out), "--instances", "--save-probabilities", "--quiet"]) == 0
    source = read_calibration(tmp_path / "em.tif")
    assert source.unit == "micron" and source.spacing == 0.05
    for kind in ("probability", "mask", "instances"):
        assert read_calibration(out / f"em_{kind}.tif") == source, kind
        assert tifffile.imread(out / f"em_{kind}.tif").shape == (2, 40, 50)
        assert read_calibration(out / f"plain_{kind}.tif") is None
    assert read_calibration(out / "em_probabilities.tif").resolution == (250.0, 250.0)
    # a single plane's classes are channels, not Z slices
    tifffile.imwrite(tmp_path / "plane.tif", stack[0], imagej=True, resolution=(250.0, 250.0),
                     metadata={"unit": "micron"})
    assert main(["predict", "--model", str(model_file), str(tmp_path / "plane.tif"), "--out", str(out),
                 "--save-probabilities", "--quiet"]) == 0
    with tifffile.TiffFile(out / "plane_probabilities.tif") as handle:
        assert handle.series[0].axes == "CYX" and handle.imagej_metadata["unit"] == "micron"
