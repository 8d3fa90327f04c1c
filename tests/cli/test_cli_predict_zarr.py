"""`biounet predict` out of core: zarr/TIFF into OME-Zarr equals predict_tiled, resumes, errors exit 2."""

import re

import dask
import numpy as np
import pytest
import tifffile
import zarr

import biounet.inference.blockwise as blockwise
from biounet.cli import main
from biounet.data.normalize import normalize_percentile
from biounet.inference import memory as memory_module
from biounet.inference.predict import predict_tiled

TILE = ["--tile-shape", "124", "124"]  # depth 3: 36 x 36 output, tile step 32
BLOCKS = ["--block-shape", "64", "64"]  # 150 x 170 -> 3 x 3 blocks


@pytest.fixture
def image(rng):
    return rng.integers(0, 255, (150, 170), dtype=np.uint8)


def write_zarr(path, image, chunks=(64, 64)):
    array = zarr.create_array(store=str(path), shape=image.shape, chunks=chunks, dtype=image.dtype)
    array[...] = image
    return path


def expected_probabilities(model, image):
    return predict_tiled(model, normalize_percentile(image.astype(np.float32)), tile_shape=(124, 124))


def predict(model_file, source, out, *extra):
    return main(["predict", "--model", str(model_file), str(source), "--out", str(out), "--quiet", *TILE, *extra])


def test_zarr_to_ome_zarr_equals_predict_tiled(tiny_unet, model_file, image, tmp_path):
    source = write_zarr(tmp_path / "image.zarr", image)
    out = tmp_path / "out.zarr"
    assert predict(model_file, source, out, *BLOCKS) == 0
    expected = expected_probabilities(tiny_unet, image)
    probabilities = zarr.open_array(str(out / "0"), mode="r")
    assert probabilities.chunks == (2, 64, 64)
    np.testing.assert_allclose(probabilities[...], expected, rtol=0, atol=1e-5)
    mask = zarr.open_array(str(out / "labels" / "mask" / "0"), mode="r")
    assert mask.dtype == np.uint8 and mask.shape == (1, 150, 170)
    np.testing.assert_array_equal(mask[0], expected.argmax(0))
    ome = dict(zarr.open_group(str(out), mode="r").attrs)["ome"]
    assert ome["version"] == "0.5" and ome["multiscales"][0]["datasets"][0]["path"] == "0"
    labels = zarr.open_group(str(out / "labels"), mode="r")
    assert dict(labels.attrs)["ome"]["labels"] == ["mask"]
    assert dict(labels["mask"].attrs)["ome"]["image-label"] == {"source": {"image": "../../"}}


def test_float32_zarr_gets_the_in_memory_percentiles(tiny_unet, model_file, image, tmp_path):
    # float sources were refused before: their percentiles now come by radix selection
    values = image.astype(np.float32) * np.float32(0.37) - np.float32(12.5)
    out = tmp_path / "out.zarr"
    assert predict(model_file, write_zarr(tmp_path / "f.zarr", values), out, *BLOCKS) == 0
    probabilities = zarr.open_array(str(out / "0"), mode="r")
    np.testing.assert_allclose(probabilities[...], expected_probabilities(tiny_unet, values),
                               rtol=0, atol=1e-5)


def write_ome_zarr(path, image, scale):
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", shape=image.shape, chunks=(64, 64), dtype=image.dtype)[...] = image
    group.create_array("1", shape=(75, 85), dtype=image.dtype)[...] = image[::2, ::2]
    axes = [{"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [2 * s for s in scale]}]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    return path


def test_ome_zarr_output_keeps_the_input_scale(tiny_unet, model_file, image, tmp_path):
    source = write_ome_zarr(tmp_path / "image.ome.zarr", image, scale=[0.5, 0.25])
    out = tmp_path / "out.zarr"
    assert predict(model_file, source, out) == 0
    np.testing.assert_allclose(
        zarr.open_array(str(out / "0"))[...], expected_probabilities(tiny_unet, image), rtol=0, atol=1e-5
    )
    image_meta = dict(zarr.open_group(str(out)).attrs)["ome"]["multiscales"][0]
    assert image_meta["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [1.0, 0.5, 0.25]}]
    assert [axis["name"] for axis in image_meta["axes"]] == ["c", "y", "x"]
    assert image_meta["axes"][1]["unit"] == "micrometer"
    mask_meta = dict(zarr.open_group(str(out / "labels" / "mask")).attrs)["ome"]["multiscales"][0]
    assert mask_meta["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.25]

    # a component path picks one array of the group: level 0 here, without the group's scale
    assert predict(model_file, f"{source}/0", tmp_path / "level0.zarr") == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "level0.zarr" / "0"))[...], zarr.open_array(str(out / "0"))[...])


def test_tiff_into_zarr_is_read_lazily_and_equals_predict_tiled(tiny_unet, model_file, image, tmp_path):
    path = tmp_path / "large.tif"
    tifffile.imwrite(path, image, tile=(64, 64))
    assert predict(model_file, path, tmp_path / "large.zarr", *BLOCKS) == 0
    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "large.zarr" / "0"))[...], expected_probabilities(tiny_unet, image), rtol=0, atol=1e-5
    )


def test_interrupted_run_resumes_skipping_finished_blocks(tiny_unet, model_file, image, tmp_path, block_calls, capsys):
    source = write_zarr(tmp_path / "image.zarr", image)
    out = tmp_path / "out.zarr"
    block_calls.interrupt_at(3)
    assert predict(model_file, source, out, *BLOCKS, "--scheduler", "synchronous") == 130
    done = dict(zarr.open_array(str(out / "0")).attrs)[blockwise.RECORD_KEY]["done"]
    assert len(done) == 2

    assert predict(model_file, source, out, *BLOCKS) == 2
    assert "--resume" in capsys.readouterr().err

    block_calls.record_only()
    calls = block_calls.calls
    # --resume takes the tile and block shapes from the interrupted run
    assert main(["predict", "--model", str(model_file), str(source), "--out", str(out), "--quiet", "--resume"]) == 0
    assert len(calls) == 9 - 2
    np.testing.assert_allclose(
        zarr.open_array(str(out / "0"))[...], expected_probabilities(tiny_unet, image), rtol=0, atol=1e-5
    )
    calls.clear()
    assert predict(model_file, source, out, "--overwrite") == 0
    assert len(calls) > 0


@pytest.mark.slow
def test_scheduler_address_runs_on_a_local_cluster(tiny_unet, model_file, image, tmp_path):
    distributed = pytest.importorskip("distributed")
    source = write_zarr(tmp_path / "image.zarr", image)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        code = predict(model_file, source, tmp_path / "out.zarr", *BLOCKS, "--scheduler", cluster.scheduler_address)
        assert code == 0
        assert cluster.scheduler.task_prefixes["biounet-block"].state_counts["memory"] == 9
    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "out.zarr" / "0"))[...], expected_probabilities(tiny_unet, image), rtol=0, atol=1e-5
    )


def make_zarr(directory, rng):
    return write_zarr(directory / "image.zarr", rng.integers(0, 255, (150, 170), dtype=np.uint8))


def make_tiff(directory, rng):
    tifffile.imwrite(directory / "image.tif", rng.integers(0, 255, (150, 170), dtype=np.uint8))
    return directory / "image.tif"


def make_plain_group(directory, rng):
    zarr.open_group(str(directory / "g.zarr"), mode="w").create_array("a", shape=(9,), dtype="u1")
    return directory / "g.zarr"


@pytest.mark.parametrize(
    ("make_input", "out_name", "extra", "message"),
    [
        (lambda d, r: d / "missing.zarr", "out.zarr", [], r"IMAGE .*missing.zarr does not exist"),
        (lambda d, r: make_zarr(d, r) / "7", "out.zarr", [], r"IMAGE .*image.zarr/7 does not exist"),
        (lambda d, r: write_zarr(d / "v.zarr", np.zeros((2, 3, 40, 40), np.uint8), (1, 1, 40, 40)), "out.zarr", [], r"source must be \(Y, X\) or \(C, Y, X\).*\(2, 3, 40, 40\)"),
        (make_plain_group, "out.zarr", [], r"without OME-Zarr 'multiscales' metadata.*\['a'\]"),
        (lambda d, r: write_zarr(d / "f.zarr", np.full((150, 170), np.nan, np.float32)), "out.zarr", [], r"source has NaN or infinite values, the first at \(0, 0\)"),
        (make_zarr, "out.zarr", ["--block-shape", "72"], r"--block-shape needs 2 values"),
        (make_zarr, "out.zarr", ["--block-shape", "0", "72"], r"block_shape must be 2 positive"),
        (make_zarr, "out.zarr", ["--scheduler", "tcp://127.0.0.1:1"], r"scheduler tcp://127.0.0.1:1 cannot be reached.*dask scheduler"),
        (make_zarr, "out.zarr", ["--scheduler", "tcp://127.0.0.1:port"], r"scheduler 'tcp://127.0.0.1:port' is not a valid address"),
        (make_zarr, "out.zarr", ["--scheduler", "processes"], r"scheduler must be"),
        (make_zarr, "out.zarr", ["--batch-size", "2"], r"--batch-size applies to TIFF/PNG output"),
        (make_zarr, "out.zarr", ["--resume", "--overwrite"], r"--resume and --overwrite exclude"),
        (make_zarr, "out", [], r"--out .*out must end in .zarr"),
        (make_tiff, "out", ["--resume"], r"--resume needs zarr output"),
        (make_tiff, "out", ["--block-shape", "72", "72", "--scheduler", "tcp://h:1"], r"--block-shape, --scheduler need zarr output"),
        (lambda d, r: (d / "x.png").write_bytes(b"png") and d / "x.png", "out.zarr", [], r"IMAGE .*x.png is neither zarr nor TIFF"),
    ],
)
def test_bad_input_exits_2_with_one_line(model_file, tmp_path, rng, capsys, make_input, out_name, extra, message):
    # distributed's config defaults load on its import; imported first inside set(), they
    # would be dropped with the "distributed" section when set() restores the config
    pytest.importorskip("distributed")
    source = make_input(tmp_path, rng)
    out = tmp_path / out_name
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = main(["predict", "--model", str(model_file), str(source), "--out", str(out), "--quiet", *extra])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("biounet predict: error:") and len(error.splitlines()) == 1, error
    assert re.search(message, error), error
    assert not out.exists() or not any(out.iterdir())


def test_existing_targets_are_refused(model_file, image, tmp_path, capsys):
    source = write_zarr(tmp_path / "image.zarr", image)
    (tmp_path / "notes.zarr").mkdir()
    (tmp_path / "notes.zarr" / "keep.txt").write_text("keep me")
    (tmp_path / "file.zarr").write_text("keep me too")
    for name in ("notes.zarr", "file.zarr"):
        assert predict(model_file, source, tmp_path / name, "--overwrite") == 2
        assert "is not an OME-Zarr group written by biounet predict" in capsys.readouterr().err
    assert (tmp_path / "notes.zarr" / "keep.txt").read_text() == "keep me"
    assert (tmp_path / "file.zarr").read_text() == "keep me too"
    assert predict(model_file, source, tmp_path / "out.zarr", *BLOCKS) == 0
    other_tiles = ["--tile-shape", "156", "156", "--resume"]  # tile step 64
    assert main(["predict", "--model", str(model_file), str(source), "--out", str(tmp_path / "out.zarr"), *other_tiles]) == 2
    assert re.search(r"differing in \['tile_shape'\].*--overwrite", capsys.readouterr().err)


def test_tiff_too_large_for_memory_points_to_zarr(model_file, tmp_path, capsys, monkeypatch):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(memory_module, "available_memory_bytes", lambda: 10**4)
    assert main(["predict", "--model", str(model_file), str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert re.search(r"IMAGE .*huge.tif \(64, 64\) needs about [\d.]+ GB .*--out huge.zarr", error), error
    monkeypatch.setattr(memory_module, "available_memory_bytes", lambda: None)
    assert main(["predict", "--model", str(model_file), str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 0


def test_zarr_output_takes_one_image(model_file, image, tmp_path, capsys):
    first = write_zarr(tmp_path / "a.zarr", image)
    second = write_zarr(tmp_path / "b.zarr", image)
    out = tmp_path / "out.zarr"
    assert main(["predict", "--model", str(model_file), str(first), str(second), "--out", str(out)]) == 2
    assert "zarr output takes one IMAGE, got 2" in capsys.readouterr().err
    assert not out.exists()
