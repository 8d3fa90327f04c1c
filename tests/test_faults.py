"""Faults survived: SIGKILL during training and prediction, a full disk, and repeated runs.

What must hold after a fault: every file under its final name is complete (weight files
load and pass their checksum, TIFFs read back with the right shape), a killed training
run resumes from its last checkpoint, a killed prediction reruns, and the previous
checkpoint survives a failed write. Kill moments are drawn from a seeded generator.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from biounet.cli import main
from biounet.config import TrainConfig, UNetConfig
from biounet.data.normalize import normalize_percentile
from biounet.inference.predict import predict_tiled
from biounet.model.unet import UNet
from biounet.training.checkpoint import load_checkpoint, save_checkpoint
from biounet.training.optim import build_optimizer
from biounet.training.trainer import CHECKPOINT
from biounet.weightfile import load_model, save_model

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

KILL_SEED = 20150518
STARTUP_TIMEOUT_S = 120.0  # importing torch in a fresh interpreter on a busy machine
TINY_MODEL = UNetConfig(depth=2, base_channels=4)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks run 2-3x faster on one thread when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- inputs ------------------------------------------------------------------------------------


def write_pairs(folder: Path, *, count: int = 3, size: int = 64, seed: int = 0) -> Path:
    """images/NN.png + labels/NN.png: bright squares on noise."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for index in range(count):
        labels = np.zeros((size, size), np.uint8)
        for _ in range(4):
            y, x = rng.integers(8, size - 8, size=2)
            labels[y - 5 : y + 5, x - 5 : x + 5] = 255
        image = np.clip(labels * 0.6 + rng.normal(40, 20, labels.shape), 0, 255)
        Image.fromarray(image.astype(np.uint8)).save(folder / "images" / f"{index:02d}.png")
        Image.fromarray(labels).save(folder / "labels" / f"{index:02d}.png")
    return folder


def write_config(path: Path, **train) -> Path:
    """depth 2, base 4, 60 px tiles, a checkpoint after every step; light augmentation."""
    values = {"tile_shape": [60, 60], "workers": 0, "checkpoint_every": 1, "validate_every": 4,
              "seed": 3, "optimizer": "adam", "learning_rate": 1e-3,
              # a run planned for 100,000 steps is resumed to a few: only a constant rate
              # makes that the same trajectory as a short run (cosine depends on the plan)
              "lr_schedule": "constant"} | train
    path.write_text(json.dumps({
        "model": TINY_MODEL.to_dict(),
        "train": values,
        "augment": {"max_rotation_deg": 10.0, "elastic_sigma_px": 2.0},
    }))
    return path


def train_argv(data: Path, run: Path, config: Path | None, iterations: int, *extra: str):
    argv = ["train", "--data", str(data), "--out", str(run), "--iterations", str(iterations),
            "--quiet", *extra]
    return argv + (["--config", str(config)] if config else [])


# --- a biounet subprocess we can kill --------------------------------------------------------


def start_biounet(argv: list[str], log: Path) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # as `one_torch_thread`
    with open(log, "wb") as stderr:
        return subprocess.Popen([sys.executable, "-m", "biounet", *argv], env=environment,
                                stdout=subprocess.DEVNULL, stderr=stderr)


def wait_until(condition, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"biounet exited ({process.returncode}) before {what}:\n"
                        f"{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {STARTUP_TIMEOUT_S} s")
        time.sleep(0.01)


def kill_after(process: subprocess.Popen, delay_s: float) -> None:
    """SIGKILL `process` after `delay_s`; it must still be running then (a mid-run kill)."""
    time.sleep(delay_s)
    assert process.poll() is None, "finished before the kill: give it more work"
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def final_names(folder: Path) -> list[Path]:
    """Files under their final names (temporaries are hidden: `.<name>.<random>.tmp`)."""
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and not path.name.startswith("."))


def check_run_folder_is_complete(run: Path) -> None:
    """Every file a training run wrote under its final name is whole and readable."""
    for path in final_names(run):
        if path.name == CHECKPOINT:
            load_checkpoint(path)  # format and sha256 of every tensor
        elif path.suffix == ".safetensors":
            load_model(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            rows = list(csv.DictReader(path.read_text().splitlines()))
            assert rows and all(row["val_score"] not in (None, "") for row in rows), path
        elif path.suffix == ".png":
            with Image.open(path) as picture:
                picture.load()
        else:
            pytest.fail(f"unexpected file {path}")


# --- SIGKILL -----------------------------------------------------------------------------------


def test_training_killed_at_a_random_moment_resumes_from_its_last_checkpoint(tmp_path):
    delay_s = np.random.default_rng(KILL_SEED).uniform(0.0, 0.8)
    data = write_pairs(tmp_path / "data")
    config = write_config(tmp_path / "tiny.json", validate_every=5)
    run = tmp_path / "run"
    process = start_biounet(train_argv(data, run, config, 100_000), tmp_path / "train.log")
    try:
        wait_until((run / CHECKPOINT).exists, process, tmp_path / "train.log", "a checkpoint")
        kill_after(process, delay_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    check_run_folder_is_complete(run)
    killed_at = load_checkpoint(run / CHECKPOINT).step
    assert 1 <= killed_at < 100_000
    end = killed_at + 3
    assert main(train_argv(data, run, None, end, "--resume")) == 0
    resumed = load_checkpoint(run / CHECKPOINT)
    assert resumed.step == end
    check_run_folder_is_complete(run)

    # the interruption changes nothing: an uninterrupted run reaches the same weights
    assert main(train_argv(data, tmp_path / "whole", config, end)) == 0
    whole = load_checkpoint(tmp_path / "whole" / CHECKPOINT)
    for name, tensor in whole.model_state.items():
        torch.testing.assert_close(resumed.model_state[name], tensor, rtol=0, atol=1e-6)


def test_prediction_killed_mid_run_leaves_only_complete_outputs(tmp_path):
    kill_rng = np.random.default_rng(KILL_SEED + 1)
    n_images = 12
    # kill once a random number of outputs is out, a few ms later: fast or slow machines
    # alike stop somewhere inside the run, while predicting or while writing
    n_outputs_before_kill = int(kill_rng.integers(1, 2 * n_images - 6))
    delay_s = kill_rng.uniform(0.0, 0.05)
    torch.manual_seed(0)
    model = UNet(TINY_MODEL).eval()
    model_path = save_model(model, tmp_path / "model.safetensors")
    rng = np.random.default_rng(1)
    images = {}
    for index in range(n_images):
        images[f"cell{index}"] = rng.integers(0, 4000, (256, 256), dtype=np.uint16)
        tifffile.imwrite(tmp_path / f"cell{index}.tif", images[f"cell{index}"])
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model_path), *(str(tmp_path / f"{name}.tif")
                                                      for name in images),
            "--out", str(out), "--quiet"]
    process = start_biounet(argv, tmp_path / "predict.log")
    try:
        wait_until(lambda: out.is_dir() and len(final_names(out)) >= n_outputs_before_kill,
                   process, tmp_path / "predict.log", f"{n_outputs_before_kill} output files")
        kill_after(process, delay_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    survivors = final_names(out)
    assert len(survivors) < 2 * len(images), "the kill came after the last image"
    for path in survivors:
        check_prediction(path)
    assert main([*argv, "--overwrite"]) == 0
    assert len(final_names(out)) == 2 * len(images)
    for path in final_names(out):
        check_prediction(path)
    expected = predict_tiled(model, normalize_percentile(images["cell5"].astype(np.float32)))
    np.testing.assert_allclose(tifffile.imread(out / "cell5_probability.tif"), expected[1],
                               rtol=0, atol=1e-5)


def check_prediction(path: Path) -> None:
    array = tifffile.imread(path)
    assert array.shape == (256, 256), path
    if path.stem.endswith("_mask"):
        assert array.dtype == np.uint8 and set(np.unique(array)) <= {0, 1}, path
    else:
        assert path.stem.endswith("_probability") and array.dtype == np.float32, path
        assert np.all((array >= 0) & (array <= 1)), path


# --- a full disk -------------------------------------------------------------------------------


def disk_fills_up(monkeypatch, *, on_call: int, prefix: str) -> list[str]:
    """Make safetensors' save_file fail like a full disk: half the file, then ENOSPC.

    Only calls for files whose name starts with `prefix` count; the `on_call`-th of them
    fails. Returns the list those calls are recorded in.
    """
    import safetensors.torch

    original = safetensors.torch.save_file
    calls: list[str] = []

    def save_file(tensors, filename, metadata=None):
        if not Path(filename).name.startswith(prefix):
            return original(tensors, filename, metadata=metadata)
        calls.append(filename)
        if len(calls) < on_call:
            return original(tensors, filename, metadata=metadata)
        original(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    return calls


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = UNet(TINY_MODEL)
    optimizer = build_optimizer(model, TrainConfig(optimizer="adam", learning_rate=1e-3))
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, model=model, optimizer=optimizer, step=1, configs={"a": 1})
    before = path.read_bytes()
    calls = disk_fills_up(monkeypatch, on_call=1, prefix=f".{CHECKPOINT}")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    with pytest.raises(OSError) as raised:
        save_checkpoint(path, model=model, optimizer=optimizer, step=2, configs={"a": 1})
    assert raised.value.errno == errno.ENOSPC and len(calls) == 1
    assert path.read_bytes() == before
    assert load_checkpoint(path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT], "no half-written temporary"


def test_full_disk_during_training_is_one_line_and_keeps_the_previous_checkpoint(
        tmp_path, monkeypatch, capsys):
    data = write_pairs(tmp_path / "data")
    config = write_config(tmp_path / "tiny.json", validate_every=100)
    run = tmp_path / "run"
    calls = disk_fills_up(monkeypatch, on_call=3, prefix=f".{CHECKPOINT}")
    code = main(train_argv(data, run, config, 5))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(calls) == 3
    assert code == 1  # documented in biounet.cli.main: the system failed, not the input
    assert len(lines) == 1 and lines[0].startswith("biounet train: error: "), lines
    assert "No space left on device" in lines[0] and str(run / CHECKPOINT) in lines[0], lines
    assert load_checkpoint(run / CHECKPOINT).step == 2
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]


# --- determinism -------------------------------------------------------------------------------


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model_state


@pytest.mark.parametrize("workers", [(0, 0), (0, 1)], ids=["same workers", "0 vs 1 worker"])
def test_same_seed_and_data_give_the_same_weights_and_predictions(tmp_path, workers):
    data = write_pairs(tmp_path / "data")
    runs = []
    for index, n_workers in enumerate(workers):
        config = write_config(tmp_path / f"config{index}.json", workers=n_workers,
                              checkpoint_every=3)
        runs.append(tmp_path / f"run{index}")
        assert main(train_argv(data, runs[-1], config, 6)) == 0
    first, second = (tensors_of(run / CHECKPOINT) for run in runs)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name

    image = data / "images" / "01.png"
    for run in runs:
        argv = ["predict", "--model", str(run / "model.safetensors"), str(image),
                "--out", str(run / "predicted"), "--quiet"]
        assert main(argv) == 0
    predictions = [tifffile.imread(run / "predicted" / "01_probability.tif") for run in runs]
    np.testing.assert_array_equal(predictions[0], predictions[1])


def test_another_seed_gives_other_weights(tmp_path):
    """The check above can fail: a different seed changes the weights."""
    data = write_pairs(tmp_path / "data")
    runs = []
    for seed in (3, 4):
        config = write_config(tmp_path / f"config{seed}.json", seed=seed, checkpoint_every=3)
        runs.append(tmp_path / f"run{seed}")
        assert main(train_argv(data, runs[-1], config, 3)) == 0
    first, second = (tensors_of(run / CHECKPOINT) for run in runs)
    assert any(not torch.equal(first[name], second[name]) for name in first)


def test_repeated_prediction_is_identical(tmp_path):
    torch.manual_seed(0)
    model = UNet(TINY_MODEL).eval()
    image = np.random.default_rng(2).random((150, 130), dtype=np.float32)
    first = predict_tiled(model, image, tile_shape=(60, 60))
    second = predict_tiled(model, image, tile_shape=(60, 60))
    np.testing.assert_array_equal(first, second)
