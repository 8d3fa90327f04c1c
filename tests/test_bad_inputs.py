"""What biounet refuses, and how: one line naming the parameter, exit code 2, nothing left behind.

`CLI_CASES` is the catalogue for the command line, one row per bad input: an id, a builder
that makes the files and returns the argument list, and a regular expression the error
line must match. Every row must exit with code 2 and print exactly one line
``biounet <command>: error: ...`` on stderr (no traceback), and the working folder must
hold afterwards exactly the files it held before (no output, no temporary file, no
marker of unpickled code). `API_CASES` does the same for the Python functions, which
raise ValueError, TypeError or FileNotFoundError with the same wording.

A row carrying `bug=` states the behaviour biounet should have but does not have yet
(xfail, strict: it fails loudly once fixed, so the mark can go).
"""

from __future__ import annotations

import errno
import functools
import io
import json
import logging
import os
import pickle
import re
import sys
import tarfile
import threading
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from biounet.cli import COMMANDS, main
from biounet.config import TrainConfig, UNetConfig
from biounet.data.io import read_image
from biounet.data.layouts import convert_labels, open_dataset
from biounet.datasets.fetch import fetch
from biounet.geometry import output_shape
from biounet.inference.predict import predict_tiled
from biounet.inference.tiling import make_tile_grid
from biounet.metrics.isbi import rand_error
from biounet.metrics.matching import match_instances
from biounet.model.unet import UNet
from biounet.training.checkpoint import load_checkpoint
from biounet.weightfile import load_model, save_model, tensors_checksum
from biounet.weights import weight_map
from memory_limits import address_space_headroom

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_EXPORT = "export" in COMMANDS
DATASET = "DIC-C2DH-HeLa"  # a zip archive whose folder DIC-C2DH-HeLa/ is installed as it is
TINY_MODEL = UNetConfig(depth=2, base_channels=4)  # valid sizes 44, 48, ...; halo 20


# --- the world a case runs in ----------------------------------------------------------------


class Marker:
    """Unpickling this creates the file `path`: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class Workspace:
    """A folder of inputs for one case; builders create what they need and return argv."""

    def __init__(self, root: Path, server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.server = server
        self.monkeypatch = monkeypatch
        self.out = root / "out"
        self.marker = root / "UNPICKLED"

    # files

    def write(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def tiff(self, name: str, array: np.ndarray, **options) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, array, **options)
        return str(path)

    def png(self, name: str, array: np.ndarray) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
        return str(path)

    def image(self, name: str = "cells.tif", shape=(50, 50)) -> str:
        pixels = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
        return self.tiff(name, pixels)

    def truncated(self, name: str) -> str:
        return self.write(name, truncated_bytes(Path(name).suffix))

    def having(self, name: str, data: bytes) -> Workspace:
        """Write a file first; return self, to chain the argument builder."""
        self.write(name, data)
        return self

    def folder(self, name: str) -> str:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return str(self.root / name)

    def file_in_the_way(self, name: str = "a-file") -> Path:
        """A regular file, to be used as the parent of an output folder."""
        self.write(name, b"I am a file, not a folder\n")
        return self.root / name

    def unwritable_folder(self, name: str = "locked") -> str:
        path = self.root / name
        path.mkdir()
        path.chmod(0o555)
        if IS_ROOT:  # root ignores mode bits (CI runs as root): the kernel's refusal is simulated
            self.refuse_creation_in(path)
        return str(path)

    def refuse_creation_in(self, folder: Path) -> None:
        """Make creating a file or folder directly in `folder` fail with EACCES.

        That is what the kernel answers a non-root user in a mode-555 folder, and root on
        a read-only mount; os.access still says "writable", as it does for root. Only the
        refusal is simulated: biounet must notice it when it tries to write, as it would
        on a real read-only mount.
        """
        real_open, real_mkdir = os.open, os.mkdir

        def refuse(path) -> None:
            if Path(os.path.abspath(os.fsdecode(path))).parent == folder:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

        def guarded_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                refuse(path)
            return real_open(path, flags, *args, **kwargs)

        def guarded_mkdir(path, *args, **kwargs):
            refuse(path)
            return real_mkdir(path, *args, **kwargs)

        self.monkeypatch.setattr(os, "open", guarded_open)
        self.monkeypatch.setattr(os, "mkdir", guarded_mkdir)

    # weight files

    def model(self, config: UNetConfig = TINY_MODEL, name: str = "model.safetensors") -> str:
        torch.manual_seed(0)
        return str(save_model(UNet(config), self.root / name))

    def mixed_model(self) -> str:
        """A biounet header for the tiny network over the tensors of a deeper one."""
        from safetensors.torch import save_file

        torch.manual_seed(0)
        tensors = {k: v.contiguous() for k, v in UNet(UNetConfig(depth=3, base_channels=4))
                   .state_dict().items()}
        header = {"format": "biounet", "format_version": "1", "config": TINY_MODEL.to_json(),
                  "sha256": tensors_checksum(tensors)}
        path = self.root / "mixed.safetensors"
        save_file(tensors, str(path), metadata=header)
        return str(path)

    def bare_safetensors(self) -> str:
        from safetensors.torch import save_file

        path = self.root / "bare.safetensors"
        save_file({"weight": torch.zeros(3)}, str(path))
        return str(path)

    def damaged_model(self, how: str) -> str:
        data = bytearray(Path(self.model()).read_bytes())
        if how == "truncated":
            data = data[: len(data) * 2 // 3]
        elif how == "tampered":
            data[-5] ^= 0x01  # one bit of the last tensor
        elif how == "header":
            length = int.from_bytes(data[:8], "little")
            header = data[8 : 8 + length].replace(b'"depth\\": 2', b'"depth\\": 3')
            assert len(header) == length, "the edit keeps the header length"
            data[8 : 8 + length] = header
        (self.root / "model.safetensors").unlink()
        return self.write(f"{how}.safetensors", bytes(data))

    def pickle_model(self, kind: str) -> str:
        payload = {"model_state": Marker(self.marker)}
        if kind == "torch":
            path = self.root / "model.pt"
            torch.save(payload, path)
            return str(path)
        protocol = {"pickle": pickle.HIGHEST_PROTOCOL, "pickle0": 0}[kind]
        return self.write(f"model-{kind}.safetensors", pickle.dumps(payload, protocol=protocol))

    # training data and configs

    def pairs(self, name: str = "data", *, count: int = 3, size: int = 64,
              replace: dict[str, np.ndarray | bytes] | None = None,
              drop: tuple[str, ...] = ()) -> str:
        """images/NN.png + labels/NN.png with square cells; `replace` swaps in other files.

        Keys of `replace` are paths under the folder: an array is written as TIFF (a .tif
        key replaces the .png of the same stem), bytes as they are. `drop` deletes files.
        """
        folder = self.root / name
        rng = np.random.default_rng(3)
        for index in range(count):
            labels = np.zeros((size, size), np.uint8)
            for _ in range(3):
                y, x = rng.integers(8, size - 8, size=2)
                labels[y - 5 : y + 5, x - 5 : x + 5] = 255
            image = np.clip(labels * 0.6 + rng.normal(40, 20, labels.shape), 0, 255)
            self.png(f"{name}/images/{index:02d}.png", image.astype(np.uint8))
            self.png(f"{name}/labels/{index:02d}.png", labels)
        for relative, content in (replace or {}).items():
            (folder / relative).with_suffix(".png").unlink(missing_ok=True)
            if isinstance(content, bytes):
                self.write(f"{name}/{relative}", content)
            else:
                self.tiff(f"{name}/{relative}", content)
        for relative in drop:
            (folder / relative).unlink()
        return str(folder)

    def config(self, values: dict | str, name: str = "config.json") -> str:
        text = values if isinstance(values, str) else json.dumps(values)
        return self.write(name, text.encode())

    def tiny_config(self) -> str:
        return self.config({
            "model": TINY_MODEL.to_dict(),
            "train": {"tile_shape": [60, 60], "workers": 0, "iterations": 2,
                      "validate_every": 1, "checkpoint_every": 1},
            "augment": None,
        }, name="tiny.json")

    # argument lists

    def predict(self, *images: str, model: str | None = None, out: str | Path | None = None,
                extra: tuple[str, ...] = ()) -> list[str]:
        return ["predict", "--model", model or self.model(), *images,
                "--out", str(out or self.out), "--quiet", *extra]

    def train(self, *extra: str, data: str | None = None, config: str | None = None,
              out: str | Path | None = None) -> list[str]:
        return ["train", "--data", data or self.pairs(), "--out", str(out or self.out),
                "--config", config or self.tiny_config(), "--quiet", *extra]

    def evaluate(self, *extra: str, pred: str | None = None, gt: str | None = None,
                 prediction: np.ndarray | None = None, unpredicted: tuple[str, ...] = ()
                 ) -> list[str]:
        """Ground truth from `pairs`; predictions NN_labels.tif are the truth (or `prediction`)."""
        gt = gt or self.pairs("gt")
        if pred is None:
            pred = self.folder("pred")
            for index in range(3):
                if f"{index:02d}" in unpredicted:
                    continue
                array = prediction
                if array is None:
                    labels = np.asarray(Image.open(Path(gt) / "labels" / f"{index:02d}.png"))
                    array = (labels > 0).astype(np.uint16)
                self.tiff(f"pred/{index:02d}_labels.tif", array)
        return ["evaluate", "--pred", pred, "--gt", gt, *extra]

    def export(self, *extra: str, model: str | None = None, out: str | Path | None = None
               ) -> list[str]:
        """`export --format torchscript`: the one format that needs nothing beyond torch."""
        return ["export", "--model", model or self.model(), "--format", "torchscript",
                "--out", str(out or self.root / "exported.pt"), *extra]

    def fetch(self, archive: bytes | None, *extra: str, directory: str | Path | None = None
              ) -> list[str]:
        """`data fetch` of DATASET from the local server, which holds `archive` (None: 404)."""
        if archive is not None:
            self.server.files[f"/{DATASET}.zip"] = archive
        # deep, so that a member escaping by five '..' would still land in the workspace
        directory = directory or self.root / "a" / "b" / "data-root"
        return ["data", "fetch", DATASET, "--dir", str(directory),
                "--base-url", self.server.base_url, "--quiet", *extra]


# --- a local HTTP server for `data fetch` ------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


class LocalServer:
    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.files = {}
        self.files: dict[str, bytes] = self.httpd.files
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def server():
    with LocalServer() as running:
        yield running


@pytest.fixture
def workspace(tmp_path, server, monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                     "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    server.files.clear()
    root = tmp_path / "work"
    root.mkdir()
    yield Workspace(root, server, monkeypatch)
    for path in root.rglob("*"):  # let pytest clean up folders a case locked
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


def make_zip(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symbolic link
            bundle.writestr(info, target)
    return buffer.getvalue()


def make_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def truncated_bytes(suffix: str) -> bytes:
    """A valid PNG or TIFF cut to a third of its bytes."""
    pixels = np.random.default_rng(2).integers(0, 255, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    if suffix == ".png":
        Image.fromarray(pixels).save(buffer, format="PNG")
    else:
        tifffile.imwrite(buffer, pixels)
    data = buffer.getvalue()
    return data[: len(data) // 3]


FRAME = {f"{DATASET}/01/t000.tif": b"II*\x00", f"{DATASET}/01_GT/SEG/man_seg000.tif": b"II*\x00"}


# --- the catalogue -----------------------------------------------------------------------------

Build = Callable[[Workspace], list[str]]


def case(case_id: str, build: Build, message: str, *, bug: str | None = None,
         skip: str | None = None):
    marks = []
    if bug:
        marks.append(pytest.mark.xfail(strict=True, reason=f"BUG: {bug}"))
    if skip:
        marks.append(pytest.mark.skip(reason=skip))
    return pytest.param(build, message, id=case_id, marks=marks)


NAN_IMAGE = np.where(np.eye(50, dtype=bool), np.nan, 1.0).astype(np.float32)
INF_IMAGE = np.where(np.eye(50, dtype=bool), np.inf, 1.0).astype(np.float32)
RGB_IMAGE = np.random.default_rng(4).integers(0, 255, (50, 50, 3), dtype=np.uint8)
NEGATIVE_LABELS = np.where(np.eye(64, dtype=bool), -1, 0).astype(np.int16)
NEGATIVE_LABELS[10:20, 10:20] = 3
FLOAT_LABELS = np.zeros((64, 64), np.float32)
FLOAT_LABELS[10:20, 10:20] = 0.5
NON_UTF8 = os.fsdecode(b"caf\xe9.tif")  # a Latin-1 file name; surrogate-escaped in str
IMAGE_CASES = [
    # predict: the IMAGE arguments
    case("predict/missing image", lambda w: w.predict(str(w.root / "missing.tif")),
         r"IMAGE \S*missing\.tif does not exist"),
    case("predict/folder as image", lambda w: w.predict(w.folder("images")),
         r"IMAGE \S*images is a folder; expected a file"),
    case("predict/zero-byte tif", lambda w: w.predict(w.write("empty.tif", b"")),
         r"IMAGE \S*empty\.tif is an empty file \(0 bytes\)"),
    case("predict/truncated png", lambda w: w.predict(w.truncated("cut.png")),
         r"IMAGE \S*cut\.png cannot be read"),
    case("predict/truncated tif", lambda w: w.predict(w.truncated("cut.tif")),
         r"IMAGE \S*cut\.tif cannot be read as TIFF"),
    case("predict/text named .tif", lambda w: w.predict(w.write("notes.tif", b"plain text\n")),
         r"IMAGE \S*notes\.tif cannot be read as TIFF"),
    case("predict/text named .png", lambda w: w.predict(w.write("notes.png", b"plain text\n")),
         r"IMAGE \S*notes\.png is not a readable image file"),
    case("predict/unsupported suffix", lambda w: w.predict(w.write("cells.jp2", b"\x00" * 9)),
         r"IMAGE \S*cells\.jp2 has suffix '\.jp2'; supported: \.tif"),
    case("predict/complex dtype",
         lambda w: w.predict(w.tiff("complex.tif", np.ones((50, 50), np.complex64))),
         r"IMAGE \S*complex\.tif has dtype complex64; supported: bool, uint8"),
    case("predict/NaN pixels", lambda w: w.predict(w.tiff("nan.tif", NAN_IMAGE)),
         r"IMAGE \S*nan\.tif contains NaN or infinite pixels"),
    case("predict/Inf pixels", lambda w: w.predict(w.tiff("inf.tif", INF_IMAGE)),
         r"IMAGE \S*inf\.tif contains NaN or infinite pixels"),
    case("predict/1-D array", lambda w: w.predict(w.tiff("line.tif", np.arange(50, dtype=np.uint8))),
         r"IMAGE \S*line\.tif has shape \(50,\); a 2-D network takes \(Y, X\) images"),
    case("predict/5-D array",
         lambda w: w.predict(w.tiff("five.tif", np.ones((2, 2, 3, 50, 50), np.uint8),
                                    photometric="minisblack")),
         r"IMAGE \S*five\.tif has shape \(2, 2, 3, 50, 50\); a 2-D network takes"),
    case("predict/RGB for a grey model", lambda w: w.predict(w.png("rgb.png", RGB_IMAGE)),
         r"IMAGE \S*rgb\.png has 3 colour channels; the model expects 1 \(grey\)"),
    case("predict/grey for an RGB model",
         lambda w: w.predict(w.image(), model=w.model(UNetConfig(depth=2, base_channels=4,
                                                                  in_channels=3))),
         r"IMAGE \S*cells\.tif is grey \(shape \(50, 50\)\); the model expects 3 channels"),
    case("predict/2-D image for a 3-D model",
         lambda w: w.predict(w.image(), model=w.model(UNetConfig(depth=1, base_channels=2,
                                                                  ndim=3))),
         r"IMAGE \S*cells\.tif has shape \(50, 50\); a 3-D network takes \(Z, Y, X\)"),
    case("predict/two images, one output name",
         lambda w: w.predict(w.image("a.tif"), w.png("a.png", np.zeros((50, 50), np.uint8))),
         r"IMAGE \S*a\.png and \S*a\.tif share the name 'a'"),
    case("predict/non-UTF-8 name, missing", lambda w: w.predict(str(w.root / NON_UTF8)),
         r"IMAGE \S*caf.+\.tif does not exist"),
    case("predict/non-UTF-8 name, not an image",
         lambda w: w.predict(w.write(NON_UTF8, b"plain text\n")),
         r"IMAGE \S*caf.+\.tif cannot be read as TIFF"),
]
MODEL_CASES = [
    case("predict/missing model", lambda w: w.predict(w.image(), model=str(w.root / "no.safetensors")),
         r"model \S*no\.safetensors does not exist"),
    case("predict/folder as model", lambda w: w.predict(w.image(), model=w.folder("weights")),
         r"model \S*weights is a folder; expected a file"),
    case("predict/truncated weights",
         lambda w: w.predict(w.image(), model=w.damaged_model("truncated")),
         r"model \S*truncated\.safetensors is not a readable safetensors weight file"),
    case("predict/tampered tensor", lambda w: w.predict(w.image(), model=w.damaged_model("tampered")),
         r"model \S*tampered\.safetensors failed its checksum"),
    case("predict/tampered config", lambda w: w.predict(w.image(), model=w.damaged_model("header")),
         r"model \S*header\.safetensors does not fit the architecture"),
    case("predict/weights of another architecture",
         lambda w: w.predict(w.image(), model=w.mixed_model()),
         r"model \S*mixed\.safetensors does not fit the architecture .*depth=2"),
    case("predict/safetensors without biounet config",
         lambda w: w.predict(w.image(), model=w.bare_safetensors()),
         r"model \S*bare\.safetensors is a safetensors file without a biounet config"),
    case("predict/torch.save pickle", lambda w: w.predict(w.image(), model=w.pickle_model("torch")),
         r"model \S*model\.pt is a pickle-based PyTorch checkpoint; biounet never unpickles"),
    case("predict/raw pickle", lambda w: w.predict(w.image(), model=w.pickle_model("pickle")),
         r"model \S*model-pickle\.safetensors is a pickle-based .*never unpickles"),
    case("predict/protocol-0 pickle", lambda w: w.predict(w.image(), model=w.pickle_model("pickle0")),
         r"model \S*model-pickle0\.safetensors is not a readable safetensors weight file"),
]
TILING_CASES = [
    case("predict/zero tile", lambda w: w.predict(w.image(), extra=("--tile-shape", "0", "0")),
         r"tile_shape must be positive, got \(0, 0\)"),
    case("predict/negative tile", lambda w: w.predict(w.image(), extra=("--tile-shape", "-60", "60")),
         r"tile_shape must be positive, got \(-60, 60\)"),
    case("predict/tile invalid for the network",
         lambda w: w.predict(w.image(), extra=("--tile-shape", "61", "60")),
         r"tile_shape \(61, 60\) is not a valid input for a depth-2 .*nearest valid sizes are 60 and 64"),
    case("predict/tile below the minimum",
         lambda w: w.predict(w.image(), extra=("--tile-shape", "36", "44")),
         r"tile_shape \(36, 44\) is not a valid input .*nearest valid sizes are 44 \(the minimum\)"),
    case("predict/tile with 1 value for 2 axes",
         lambda w: w.predict(w.image(), extra=("--tile-shape", "60")),
         r"--tile-shape needs 2 values for this 2-D model, got \[60\]"),
    case("predict/zero batch", lambda w: w.predict(w.image(), extra=("--batch-size", "0")),
         r"--batch-size must be a positive integer, got 0"),
    case("predict/negative batch", lambda w: w.predict(w.image(), extra=("--batch-size", "-3")),
         r"--batch-size must be a positive integer, got -3"),
    case("predict/zero memory budget", lambda w: w.predict(w.image(), extra=("--memory-budget", "0")),
         r"--memory-budget must be positive \(GB\), got 0"),
    case("predict/memory budget below one tile",
         lambda w: w.predict(w.image(), extra=("--memory-budget", "1e-9")),
         r"memory.budget.*\d\s*(bytes|[kKMG]i?B)\b"),
]
OUTPUT_CASES = [
    case("predict/output already exists",
         lambda w: w.having("out/cells_mask.tif", b"old").predict(w.image()),
         r"output \S*cells_mask\.tif already exists; pass --overwrite to replace it"),
    case("predict/--out is a file",
         lambda w: w.predict(w.image(), out=w.file_in_the_way("out.tif")),
         r"--out \S*out\.tif exists and is not a folder"),
    case("predict/--out below a file",
         lambda w: w.predict(w.image(), out=w.file_in_the_way() / "out"),
         r"(--out|output folder) \S*a-file\S* .*(file|not a folder|not a directory)"),
    case("predict/unwritable --out",
         lambda w: w.predict(w.image(), out=w.unwritable_folder()),
         r"output folder \S*locked is not writable"),
]
TRAIN_CASES = [
    case("train/missing --data", lambda w: w.train(data=str(w.root / "nothing")),
         r"data set path \S*nothing does not exist"),
    case("train/empty --data folder", lambda w: w.train(data=w.folder("empty")),
         r"no supported data set layout found in \S*empty"),
    case("train/image without labels",
         lambda w: w.train(data=w.pairs(drop=["labels/01.png"])),
         r"1 of 3 images in \S*images have no labels in \S*labels: 01"),
    case("train/truncated training image",
         lambda w: w.train(data=w.pairs(replace={"images/01.png": truncated_bytes(".png")})),
         r"image \S*01\.png cannot be read"),
    case("train/image and labels of different shapes",
         lambda w: w.train(data=w.pairs(replace={"labels/01.tif": np.ones((60, 64), np.uint8)})),
         r"labels \S*01\.tif have shape \(60, 64\) but image \S*01\.png has shape \(64, 64\)"),
    case("train/negative labels",
         lambda w: w.train(data=w.pairs(replace={"labels/01.tif": NEGATIVE_LABELS})),
         r"labels \S*01\.tif contain negative value -1; label ids must be >= 0"),
    case("train/float labels", lambda w: w.train(data=w.pairs(replace={"labels/01.tif": FLOAT_LABELS})),
         r"labels \S*01\.tif have dtype float32; expected integer or bool label ids"),
    case("train/labels without foreground",
         lambda w: w.train(data=w.pairs(replace={"labels/01.tif": np.zeros((64, 64), np.uint8)})),
         r"labels \S*01\.tif have no foreground pixel"),
    case("train/NaN pixels",
         lambda w: w.train(data=w.pairs(replace={"images/01.tif": np.full((64, 64), np.nan,
                                                                     np.float32)})),
         r"training image 01 \(\S*images/01\.tif\) contains NaN or infinite"),
    case("train/tile invalid for the network", lambda w: w.train("--tile-shape", "61", "60"),
         r"input size 61 on axis 0 is not valid for a depth-2 U-Net .*nearest valid sizes: 60 and 64"),
    case("train/zero tile", lambda w: w.train("--tile-shape", "0", "60"),
         r"tile_shape must be >= 1, got 0"),
    case("train/negative tile", lambda w: w.train("--tile-shape", "-60", "60"),
         r"tile_shape must be >= 1, got -60"),
    case("train/tile with 3 values for 2 axes",
         lambda w: w.train("--tile-shape", "60", "60", "60"),
         r"tile_shape \(60, 60, 60\) needs 2 values for a 2-D network"),
    case("train/zero batch", lambda w: w.train("--batch-size", "0"),
         r"batch_size must be >= 1, got 0"),
    case("train/negative iterations", lambda w: w.train("--iterations", "-5"),
         r"iterations must be >= 1, got -5"),
    case("train/negative workers", lambda w: w.train("--workers", "-1"),
         r"workers must be >= 0, got -1"),
    case("train/zero learning rate", lambda w: w.train("--learning-rate", "0"),
         r"learning_rate must be positive"),
    case("train/validation fraction above 1", lambda w: w.train("--val-fraction", "1.5"),
         r"--val-fraction must be in \[0, 1\), got 1\.5"),
    case("train/zero processes", lambda w: w.train("--nproc", "0"),
         r"--nproc must be a positive integer, got 0"),
    case("train/unknown layout", lambda w: w.train("--layout", "hdf5"),
         r"layout must be 'auto' or one of \('pairs', 'stack', 'dsb', 'ctc'\), got 'hdf5'"),
    case("train/unknown label kind", lambda w: w.train("--label-kind", "soft"),
         r"label_kind must be one of .*got 'soft'"),
    case("train/unknown model key",
         lambda w: w.train(config=w.config({"model": {"depht": 3}})),
         r"unknown UNetConfig keys \['depht'\]; known keys: \["),
    case("train/unknown train key",
         lambda w: w.train(config=w.config({"train": {"learning_rat": 0.1}})),
         r"unknown TrainConfig keys \['learning_rat'\]"),
    case("train/unknown config section",
         lambda w: w.train(config=w.config({"optimiser": {"lr": 1}})),
         r"unknown config sections \['optimiser'\]; expected model, train, augment"),
    case("train/string where an integer belongs",
         lambda w: w.train(config=w.config({"train": {"iterations": "ten"}})),
         r"iterations must be an integer, got str 'ten'"),
    case("train/float depth", lambda w: w.train(config=w.config({"model": {"depth": 2.5}})),
         r"depth must be an integer, got float 2\.5"),
    case("train/number where a tile shape belongs",
         lambda w: w.train(config=w.config({"train": {"tile_shape": 60}})),
         r"tile_shape must be a tuple of sizes, got 60"),
    case("train/string dropout",
         lambda w: w.train(config=w.config({"model": {"dropout": "high"}})),
         r"dropout must be a number, got str"),
    case("train/null model section", lambda w: w.train(config=w.config({"model": None})),
         r"config section 'model' cannot be null"),
    case("train/section that is not an object",
         lambda w: w.train(config=w.config({"train": [1, 2]})),
         r"config section 'train' must be an object"),
    case("train/config not JSON", lambda w: w.train(config=w.config("{depth: 2")),
         r"--config \S*config\.json is not valid JSON"),
    case("train/config a JSON list", lambda w: w.train(config=w.config("[1, 2]")),
         r"--config \S*config\.json must hold a JSON object, got list"),
    case("train/missing config", lambda w: w.train(config=str(w.root / "none.json")),
         r"--config \S*none\.json does not exist"),
    case("train/two input channels",
         lambda w: w.train(config=w.config({"model": {"in_channels": 2, "depth": 2}})),
         r"training from files supports 1 or 3 input channels, got 2"),
    case("train/--out already holds a run",
         lambda w: w.having("out/checkpoint.safetensors", b"run").train(),
         r"--out \S*out already holds a run; pass --resume to continue it"),
    case("train/--resume without a run", lambda w: w.train("--resume"),
         r"--resume: \S*out holds no config\.json and checkpoint\.safetensors"),
    case("train/--out below a file", lambda w: w.train(out=w.file_in_the_way() / "run"),
         r"--out \S*a-file\S* .*(file|not a folder|not a directory)"),
]
EVALUATE_CASES = [
    case("evaluate/missing --pred", lambda w: w.evaluate(pred=str(w.root / "nope")),
         r"--pred \S*nope is not an existing folder"),
    case("evaluate/missing --gt", lambda w: w.evaluate(pred=w.folder("pred"), gt=str(w.root / "nogt")),
         r"data set path \S*nogt does not exist"),
    case("evaluate/--gt names a file",
         lambda w: w.evaluate(pred=w.folder("pred"), gt=str(w.file_in_the_way())),
         r"--gt must be a data set folder .*got the file \S*a-file"),
    case("evaluate/prediction missing",
         lambda w: w.evaluate(unpredicted=("01",)),
         r"--pred \S*pred has no prediction for 1 ground-truth image\(s\): 01"),
    case("evaluate/prediction of another shape",
         lambda w: w.evaluate(prediction=np.ones((64, 60), np.uint16)),
         r"prediction for 00 has shape \(64, 60\); its ground truth has \(64, 64\)"),
    case("evaluate/probabilities above 1",
         lambda w: w.evaluate("--metrics", "isbi",
                              prediction=np.full((64, 64), 255.0, np.float32)),
         r"prediction 00 is a float map with values in \[255, 255\]; expected probabilities in \[0, 1\]"),
    case("evaluate/NaN probabilities",
         lambda w: w.evaluate("--metrics", "isbi",
                              prediction=np.full((64, 64), np.nan, np.float32)),
         r"prediction 00 contains NaN or infinite values"),
    case("evaluate/complex prediction",
         lambda w: w.evaluate(prediction=np.ones((64, 64), np.complex64)),
         r"prediction \S*00_labels\.tif has dtype complex64"),
    case("evaluate/negative ground truth",
         lambda w: w.evaluate(gt=w.pairs("gt", replace={"labels/01.tif": NEGATIVE_LABELS}),
                              prediction=np.ones((64, 64), np.uint16)),
         r"labels \S*01\.tif contain negative value -1"),
    case("evaluate/unknown metric", lambda w: w.evaluate("--metrics", "dice"),
         r"metrics must be 'all' or a comma-separated subset of \['isbi', 'ctc', 'instance'\], got \['dice'\]"),
    case("evaluate/--out already holds a file",
         lambda w: w.evaluate("--out", w.write("report.json", b"{}")),
         r"\S*report\.json already exists; pass --overwrite"),
]
FETCH_CASES = [
    case("data fetch/archive with ../ member",
         lambda w: w.fetch(make_zip({**FRAME, f"{DATASET}/../../../../../escaped.txt": b"x"})),
         r"archive \S*\.zip member '\S*escaped\.txt' has a '\.\.' component; nothing was extracted"),
    case("data fetch/archive with absolute member",
         lambda w: w.fetch(make_zip({**FRAME, str(w.root / "absolute.txt"): b"x"})),
         r"member '\S*absolute\.txt' has an absolute path; nothing was extracted"),
    case("data fetch/archive with symbolic link",
         lambda w: w.fetch(make_zip(FRAME, links={f"{DATASET}/link": "../../../etc/passwd"})),
         r"member '\S*/link' is a symbolic link; nothing was extracted"),
    case("data fetch/HTML error page", lambda w: w.fetch(b"<html>503 Service Unavailable</html>"),
         r"archive \S*\.zip is not a zip file \(found: neither\); the server may have sent an error page"),
    case("data fetch/tar instead of zip", lambda w: w.fetch(make_tar(FRAME)),
         r"archive \S*\.zip is not a zip file \(found: tar\)"),
    case("data fetch/archive of another data set",
         lambda w: w.fetch(make_zip({"HeLa/01/t000.tif": b"x"})),
         rf"archive \S*\.zip has no folder {DATASET}/ \(its top level holds: HeLa\)"),
    case("data fetch/HTTP 404", lambda w: w.fetch(None),
         rf"127\.0\.0\.1:\d+ answered HTTP 404 .*\({DATASET}\)"),
    case("data fetch/--dir below a file",
         lambda w: w.fetch(make_zip(FRAME), directory=w.file_in_the_way() / "root"),
         r"--dir \S*a-file\S* .*(file|not a folder|not a directory)"),
]
NOT_REGISTERED = None if HAS_EXPORT else "`export` is not in biounet.cli.COMMANDS yet"
EXPORT_CASES = [
    case("export/missing model", lambda w: w.export(model=str(w.root / "no.safetensors")),
         r"model \S*no\.safetensors does not exist", skip=NOT_REGISTERED),
    case("export/pickle model", lambda w: w.export(model=w.pickle_model("torch")),
         r"model \S*model\.pt is a pickle-based PyTorch checkpoint; biounet never unpickles",
         skip=NOT_REGISTERED),
    case("export/tampered weights", lambda w: w.export(model=w.damaged_model("tampered")),
         r"model \S*tampered\.safetensors failed its checksum", skip=NOT_REGISTERED),
    case("export/--out is a folder", lambda w: w.export(out=w.folder("exports")),
         r"--out \S*exports is a folder; expected a file name", skip=NOT_REGISTERED),
    case("export/--out already exists",
         lambda w: w.having("exported.pt", b"an older export").export(),
         r"output \S*exported\.pt already exists; pass --overwrite to replace it",
         skip=NOT_REGISTERED),
    case("export/tile with 1 value for 2 axes", lambda w: w.export("--tile-shape", "60"),
         r"--tile-shape needs 2 values for this 2-D model, got \[60\]", skip=NOT_REGISTERED),
    case("export/tile invalid for the network", lambda w: w.export("--tile-shape", "61", "60"),
         r"tile_shape \(61, 60\): Y = 61 is not a valid input size .*nearest valid sizes along Y are 60 and 64",
         skip=NOT_REGISTERED),
    case("export/zero tile", lambda w: w.export("--tile-shape", "0", "0"),
         r"tile_shape \(0, 0\)(?!.*None).*(positive|44 \(the minimum\))", skip=NOT_REGISTERED),
    case("export/--out below a file", lambda w: w.export(out=w.file_in_the_way() / "model.pt"),
         r"(--out|output folder) \S*a-file\S* .*(file|not a folder|not a directory)",
         skip=NOT_REGISTERED),
]
CLI_CASES = [*IMAGE_CASES, *MODEL_CASES, *TILING_CASES, *OUTPUT_CASES, *TRAIN_CASES,
             *EVALUATE_CASES, *FETCH_CASES, *EXPORT_CASES]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file and link under `root` (hidden ones included) with its content."""
    files = {}
    for path in sorted(root.rglob("*")):
        relative = os.fsencode(path.relative_to(root)).decode("utf-8", "backslashreplace")
        if path.is_symlink():
            files[relative] = b"-> " + os.fsencode(os.readlink(path))
        elif path.is_file():
            files[relative] = path.read_bytes()
    return files


def error_line(stderr: str, command: str) -> str:
    """Return the one error line of `stderr`, checking that nothing else but log lines came."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"biounet {command}: error: ")]
    assert len(errors) == 1, stderr
    others = [line for line in lines if line not in errors]
    assert all(re.match(r"(DEBUG|INFO|WARNING) \S+: ", line) for line in others), stderr
    return errors[0]


def test_catalogue_is_large_and_unique():
    ids = [param.id for param in CLI_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.mark.parametrize(("build", "message"), CLI_CASES)
def test_cli_refuses_bad_input(build, message, workspace, capsys):
    argv = build(workspace)
    before = snapshot(workspace.root)
    code = main(argv)
    stderr = capsys.readouterr().err
    line = error_line(stderr, argv[0])
    assert re.search(message, line), line
    assert code == 2
    assert not workspace.marker.exists(), "a pickle was unpickled"
    assert snapshot(workspace.root) == before, "files were left behind or changed"
    assert not list(workspace.root.parent.rglob("escaped*")), "an archive member escaped"


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_no_third_party_log_lines_for_a_damaged_tiff(damage, workspace, capsys, caplog):
    data = bytearray(tifffile_bytes(np.arange(480, dtype=np.uint8).reshape(24, 20)))
    if damage == "truncated":  # cut inside the values of the first page's tags
        data = data[: len(data) // 3]
    else:  # two bits of the first page's tags flipped
        data[20] ^= 0xFF
        data[30] ^= 0x10
    image = workspace.write(f"{damage}.tif", bytes(data))
    caplog.set_level(logging.WARNING)
    assert main(workspace.predict(image)) == 2
    error_line(capsys.readouterr().err, "predict")
    # with main's logging.basicConfig these records would be stderr lines of their own
    printed = [f"{record.levelname} {record.name}: {record.getMessage()}"
               for record in caplog.records
               if record.levelno >= logging.WARNING and not record.name.startswith("biounet")]
    assert printed == []


def tifffile_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def test_non_utf8_file_name_is_predicted(workspace):
    """Not an error: a Latin-1 file name is read, and its outputs keep the same bytes."""
    image = workspace.image(NON_UTF8)
    assert main(workspace.predict(image)) == 0
    names = sorted(os.listdir(os.fsencode(workspace.out)))
    assert names == [b"caf\xe9_mask.tif", b"caf\xe9_probability.tif"]
    probability = tifffile.imread(os.fsdecode(os.path.join(os.fsencode(workspace.out), names[1])))
    assert probability.shape == (50, 50) and np.all((probability >= 0) & (probability <= 1))


# --- the Python API ----------------------------------------------------------------------------


@functools.cache
def tiny_model() -> UNet:
    torch.manual_seed(0)
    return UNet(TINY_MODEL).eval()


def predict(image=None, **options):
    image = np.ones((50, 50), np.float32) if image is None else image
    return predict_tiled(tiny_model(), image, **options)


def api(case_id: str, call: Callable[[Workspace], object], error: type[Exception], message: str,
        *, bug: str | None = None):
    marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {bug}")] if bug else []
    return pytest.param(call, error, message, id=case_id, marks=marks)


API_CASES = [
    api("read_image/missing", lambda w: read_image(w.root / "missing.png"), FileNotFoundError,
        r"image \S*missing\.png does not exist"),
    api("read_image/folder", lambda w: read_image(w.root), ValueError, r"is a folder; expected a file"),
    api("read_image/zero bytes", lambda w: read_image(w.write("e.tif", b"")), ValueError,
        r"e\.tif is an empty file \(0 bytes\)"),
    api("read_image/truncated png", lambda w: read_image(w.truncated("t.png")), ValueError,
        r"image \S*t\.png cannot be read"),
    api("read_image/text named .tif", lambda w: read_image(w.write("t.tif", b"text")), ValueError,
        r"image \S*t\.tif cannot be read as TIFF"),
    api("read_image/complex", lambda w: read_image(w.tiff("c.tif", np.ones((4, 4), np.complex128))),
        ValueError, r"has dtype complex128; supported"),
    api("load_model/pickle", lambda w: load_model(w.pickle_model("torch")), ValueError,
        r"model \S*model\.pt is a pickle-based PyTorch checkpoint; biounet never unpickles"),
    api("load_model/tampered", lambda w: load_model(w.damaged_model("tampered")), ValueError,
        r"failed its checksum: the tensors were changed or damaged"),
    api("load_model/another architecture", lambda w: load_model(w.mixed_model()), ValueError,
        r"does not fit the architecture UNetConfig\(.*depth=2"),
    api("load_checkpoint/a weight file", lambda w: load_checkpoint(w.model()), ValueError,
        r"checkpoint \S*model\.safetensors is not a biounet checkpoint of format version 1"),
    api("load_checkpoint/pickle", lambda w: load_checkpoint(w.pickle_model("torch")), ValueError,
        r"checkpoint \S*model\.pt is not a readable safetensors checkpoint"),
    api("predict_tiled/complex", lambda w: predict(np.ones((50, 50), np.complex64)), TypeError,
        r"image must be a real-valued array, got dtype complex64"),
    api("predict_tiled/strings", lambda w: predict(np.full((50, 50), "a")), TypeError,
        r"image must be a real-valued array, got dtype <U1"),
    api("predict_tiled/1-D", lambda w: predict(np.ones(50, np.float32)), ValueError,
        r"image must be \(Y, X\) or \(C, Y, X\) for a 2-D network, got shape \(50,\)"),
    api("predict_tiled/5-D", lambda w: predict(np.ones((1, 1, 1, 8, 8), np.float32)), ValueError,
        r"image must be \(Y, X\) or \(C, Y, X\) for a 2-D network, got shape \(1, 1, 1, 8, 8\)"),
    api("predict_tiled/NaN", lambda w: predict(NAN_IMAGE), ValueError,
        r"image contains NaN or infinite pixels"),
    api("predict_tiled/Inf", lambda w: predict(INF_IMAGE), ValueError,
        r"image contains NaN or infinite pixels"),
    api("predict_tiled/3 channels for 1", lambda w: predict(np.ones((3, 50, 50), np.float32)),
        ValueError, r"image has 3 channel\(s\) \(shape \(3, 50, 50\)\); the model expects 1"),
    api("predict_tiled/empty", lambda w: predict(np.ones((0, 50), np.float32)), ValueError,
        r"image is empty \(shape \(1, 0, 50\)\)"),
    api("predict_tiled/zero tile", lambda w: predict(tile_shape=(0, 0)), ValueError,
        r"tile_shape must be positive, got \(0, 0\)"),
    api("predict_tiled/invalid tile", lambda w: predict(tile_shape=(61, 60)), ValueError,
        r"tile_shape \(61, 60\) is not a valid input .*nearest valid sizes are 60 and 64"),
    api("predict_tiled/tile of 1 axis", lambda w: predict(tile_shape=(60,)), ValueError,
        r"tile_shape \(60,\) must have 2 axes like the image \(50, 50\)"),
    api("predict_tiled/tile word", lambda w: predict(tile_shape="big"), ValueError,
        r"tile_shape must be a shape, None or 'whole', got 'big'"),
    api("predict_tiled/zero batch", lambda w: predict(batch_size=0), ValueError,
        r"batch_size must be a positive integer, got 0"),
    api("predict_tiled/float batch", lambda w: predict(batch_size=2.5), ValueError,
        r"batch_size must be a positive integer, got 2\.5"),
    api("predict_tiled/bool batch", lambda w: predict(batch_size=True), ValueError,
        r"batch_size must be a positive integer, got True"),
    api("predict_tiled/zero budget", lambda w: predict(memory_budget=0), ValueError,
        r"memory_budget must be positive, got 0"),
    api("predict_tiled/negative budget", lambda w: predict(memory_budget=-1), ValueError,
        r"memory_budget must be positive, got -1"),
    api("predict_tiled/budget below one tile", lambda w: predict(memory_budget=1000), ValueError,
        r"memory.budget.*\d\s*(bytes|[kKMG]i?B)\b"),
    api("make_tile_grid/axes", lambda w: make_tile_grid(TINY_MODEL, (50, 50, 50), (60, 60)),
        ValueError, r"tile_shape \(60, 60\) must have 3 axes like the image \(50, 50, 50\)"),
    api("output_shape/invalid size", lambda w: output_shape((500, 572)), ValueError,
        r"input size 500 on axis 0 is not valid .*nearest valid sizes: 492 and 508"),
    api("weight_map/float labels", lambda w: weight_map(np.ones((4, 4))), TypeError,
        r"labels must be an integer array of instance ids, got dtype float64"),
    api("weight_map/negative labels", lambda w: weight_map(-np.ones((4, 4), int)), ValueError,
        r"labels must be non-negative \(0 = background\), got minimum -1"),
    api("convert_labels/no foreground", lambda w: convert_labels(np.zeros((4, 4), np.uint8)),
        ValueError, r"labels have no foreground pixel; pass allow_empty=True"),
    api("convert_labels/float", lambda w: convert_labels(FLOAT_LABELS), ValueError,
        r"labels have dtype float32; expected integer or bool label ids"),
    api("open_dataset/missing", lambda w: open_dataset(w.root / "none"), FileNotFoundError,
        r"data set path \S*none does not exist"),
    api("UNetConfig/unknown key", lambda w: UNetConfig.from_dict({"depht": 3}), ValueError,
        r"unknown UNetConfig keys \['depht'\]"),
    api("UNetConfig/string depth", lambda w: UNetConfig(depth="4"), TypeError,
        r"depth must be an integer, got str '4'"),
    api("TrainConfig/list tile", lambda w: TrainConfig(tile_shape=[60, 60]), TypeError,
        r"tile_shape must be a tuple of sizes, got \[60, 60\]"),
    api("match_instances/shapes", lambda w: match_instances(np.ones((4, 4), int), np.ones((4, 5), int)),
        ValueError, r"prediction shape \(4, 5\) must equal reference shape \(4, 4\)"),
    api("match_instances/float", lambda w: match_instances(np.ones((4, 4), int), np.ones((4, 4))),
        TypeError, r"prediction must be an integer label image, got dtype float64"),
    api("rand_error/out of range", lambda w: rand_error(np.ones((4, 4), int), np.full((4, 4), 2.0)),
        ValueError, r"probabilities must be finite and in \[0, 1\], got range \[2\.0, 2\.0\]"),
    api("fetch/unknown data set", lambda w: fetch("imagenet", directory=w.root), ValueError,
        r"unknown data set 'imagenet'; known: isbi2012, dsb2018"),
]


@pytest.mark.parametrize(("call", "error", "message"), API_CASES)
def test_api_refuses_bad_input(call, error, message, workspace):
    with pytest.raises(error) as raised:
        call(workspace)
    text = str(raised.value)
    assert type(raised.value) is error, type(raised.value)
    assert "\n" not in text and re.search(message, text), text
    assert not workspace.marker.exists(), "a pickle was unpickled"


SAME_MESSAGE_CASES = {
    "tampered weights": (lambda w: w.damaged_model("tampered"), (), lambda model: load_model(model)),
    "invalid tile": (
        lambda w: w.model(),
        ("--tile-shape", "61", "60"),
        lambda model: predict_tiled(load_model(model), np.ones((50, 50)), tile_shape=(61, 60)),
    ),
}


@pytest.mark.parametrize("name", SAME_MESSAGE_CASES)
def test_cli_line_is_the_api_message(name, workspace, capsys):
    make_model, extra, call = SAME_MESSAGE_CASES[name]
    model = make_model(workspace)
    assert main(workspace.predict(workspace.image(), model=model, extra=extra)) == 2
    line = error_line(capsys.readouterr().err, "predict")
    with pytest.raises(ValueError) as raised:
        call(model)
    assert line == f"biounet predict: error: {raised.value}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_image_larger_than_memory_is_refused_upfront():
    image = np.broadcast_to(np.float32(0.5), (100_000, 100_000))  # 40 GB, none of it allocated
    with address_space_headroom(2 * 1024**3), pytest.raises(ValueError) as raised:
        predict_tiled(tiny_model(), image)
    message = str(raised.value)
    assert re.search(r"\d\s*(bytes|[kKMG]i?B)\b", message) and "predict_blockwise" in message
