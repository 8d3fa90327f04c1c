"""Write a U-Net as a bioimage.io model package (zip), and read biounet's packages back.

The package holds `rdf.yaml` (model description format 0.5, validated by
bioimageio.spec while it is written), TorchScript and ONNX weights, test input and
output tensors (.npy), a cover image, README.md and, as an attachment, biounet's own
safetensors weight file, from which `load_bioimageio_package` rebuilds the exact
network without running any code from the package.

The packaged networks output softmax probabilities zero-padded to the input's size,
with the halo and valid sizes stated in rdf.yaml (`biounet.export.bioimageio_rdf`).

No `pytorch_state_dict` weights: bioimage.io reads those with `torch.load`, i.e.
from a pickle, and needs biounet's source as the architecture; the safetensors
attachment carries the same weights without pickle.

Needs the optional package bioimageio.spec (`pip install 'biounet[export]'`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biounet.config import UNetConfig
from biounet.data.io import check_input_file, write_png, write_tiff
from biounet.data.outputs import atomic_path
from biounet.export.bioimageio_rdf import (
    WEIGHT_FILE,
    PackageInfo,
    axis_geometry,
    check_license,
    default_test_shape,
    model_description,
    readme_text,
)
from biounet.export.checks import check_inputs, check_tile_shape, frozen_copy
from biounet.export.onnx import DEFAULT_OPSET, onnx_bytes, require
from biounet.export.torchscript import torchscript_bytes
from biounet.geometry import (
    config_output_shape,
    min_input_size,
    nearest_valid_sizes,
)
from biounet.inference.predict import as_network_input


class ProbabilityNetwork(nn.Module):
    """A U-Net whose output is softmax probabilities (eq. 1) zero-padded to the input size.

    The padding is the halo a valid-convolution network crops (0 for "same"
    padding), so the bioimage.io halo convention (crop it from the output) applies.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Map (B, C, *spatial) to probabilities (B, n_classes, *spatial), zero in the halo."""
        probabilities = torch.softmax(self.model(image), dim=1)
        padding: list[int] = []
        for axis in range(image.ndim - 1, 1, -1):  # F.pad lists the last axis first
            margin = (image.shape[axis] - probabilities.shape[axis]) // 2
            padding += [margin, margin]
        return F.pad(probabilities, padding)


def export_bioimageio(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    info: PackageInfo | None = None,
    test_image: np.ndarray | None = None,
    tile_shape: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    onnx_exporter: str = "dynamo",
    overwrite: bool = False,
) -> Path:
    """Write `model` as a validated bioimage.io model package (zip).

    Args:
        model: a `UNet`.
        path: output .zip, written atomically.
        info: names, licence, normalisation; defaults to `PackageInfo()`.
        test_image: a normalised (*spatial) or (C, *spatial) image whose centre becomes
            the test input and cover; default: seeded synthetic blobs.
        tile_shape: the test tile, a valid input shape; default: `default_test_shape`,
            shrunk to fit `test_image`.
        opset, onnx_exporter: see `biounet.export.onnx.export_onnx`.
        overwrite: replace an existing file.

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False.
        ModuleNotFoundError: if bioimageio.spec, onnx or onnxruntime is missing.
        ValueError: for bad options, if an export disagrees with PyTorch, or if
            bioimageio.spec finds the package invalid.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {path} already exists; pass overwrite to replace it")
    spec = require("bioimageio.spec", "bioimage.io export")
    info = info if info is not None else PackageInfo()
    check_license(info.license)  # before the exports, which take seconds
    config: UNetConfig = model.config  # type: ignore[assignment]
    test_input = make_test_input(
        config, test_image=test_image, tile_shape=tile_shape, normalization=info.normalization
    )
    network = ProbabilityNetwork(model)
    inputs = [*check_inputs(config, test_input.shape[2:]), test_input]
    scripted = torchscript_bytes(network, inputs, outputs_scores=False)
    exported = onnx_bytes(
        network, config, inputs, opset=opset, exporter=onnx_exporter, outputs_scores=False
    )
    with torch.no_grad():
        test_output = frozen_copy(network)(torch.from_numpy(test_input)).numpy()
    with tempfile.TemporaryDirectory(prefix="biounet-bioimageio-") as folder:
        files = _write_files(Path(folder), model, test_input, test_output, scripted, exported)
        files["README.md"].write_text(readme_text(config, info), encoding="utf-8")
        package = Path(folder) / "package.zip"
        try:
            description = model_description(config, info, files, opset=opset)
            spec.save_bioimageio_package(description, output_path=package)
        except ValueError as error:
            raise ValueError(f"bioimage.io package is invalid: {_first_line(error)}") from None
        with atomic_path(path, overwrite=overwrite) as temporary:
            shutil.copyfile(package, temporary)
    return path


def make_test_input(
    config: UNetConfig,
    *,
    test_image: np.ndarray | None = None,
    tile_shape: Sequence[int] | None = None,
    normalization: str = "percentile",
) -> np.ndarray:
    """Return the package's test input, float32 (1, C, *tile): the centre of `test_image`.

    Without `test_image`, seeded smooth random blobs normalised by `normalization`
    (bioimage.io consumers normalise the test input again, which must change nothing).

    Raises:
        ValueError: if the image is smaller than the smallest valid input, or
            `tile_shape` is invalid or larger than the image.
    """
    if tile_shape is not None:
        tile = check_tile_shape(config, tile_shape)
    else:
        tile = default_test_shape(config)
    if test_image is None:
        image = _synthetic_image(config, tile, normalization)
    else:
        image = as_network_input(test_image, config, name="test_image")
        if tile_shape is None:
            tile = tuple(
                _fitting_size(size, limit, kwargs)
                for size, limit, (_, _, kwargs) in zip(image.shape[1:], tile, axis_geometry(config))
            )
    spatial = image.shape[1:]
    if any(t > s for t, s in zip(tile, spatial)):
        raise ValueError(f"tile_shape {tile} is larger than test_image {spatial}")
    start = [(s - t) // 2 for s, t in zip(spatial, tile)]
    window = tuple(slice(a, a + t) for a, t in zip(start, tile))
    return np.ascontiguousarray(image[(slice(None), *window)][None], dtype=np.float32)


def _fitting_size(size: int, limit: int, kwargs: dict) -> int:
    below = nearest_valid_sizes(min(size, limit), **kwargs)[0]
    if below is None:
        smallest = min_input_size(**kwargs)
        raise ValueError(
            f"test_image axis of {size} px is smaller than the smallest valid input {smallest}"
        )
    return below


def _synthetic_image(config: UNetConfig, shape: tuple[int, ...], normalization: str) -> np.ndarray:
    from scipy import ndimage

    from biounet.data.normalize import normalize_percentile, normalize_zscore

    rng = np.random.default_rng(0)
    noise = rng.standard_normal((config.in_channels, *shape))
    blobs = ndimage.gaussian_filter(noise, sigma=(0, *(4.0,) * config.ndim))
    spatial_axes = tuple(range(1, config.ndim + 1))
    normalize = normalize_zscore if normalization == "zscore" else normalize_percentile
    return normalize(blobs.astype(np.float32), axis=spatial_axes)


def _write_files(folder, model, test_input, test_output, scripted, exported) -> dict[str, Path]:
    from biounet.weightfile import save_model

    files = {
        name: folder / name
        for name in (
            "weights_torchscript.pt",
            "weights.onnx",
            WEIGHT_FILE,
            "test_input.npy",
            "test_output.npy",
            "sample_input.tif",
            "sample_output.tif",
            "cover.png",
            "README.md",
        )
    }
    files["weights_torchscript.pt"].write_bytes(scripted)
    files["weights.onnx"].write_bytes(exported)
    save_model(model, files[WEIGHT_FILE])
    np.save(files["test_input.npy"], test_input)
    np.save(files["test_output.npy"], test_output)
    write_tiff(files["sample_input.tif"], test_input[0])
    write_tiff(files["sample_output.tif"], test_output[0])
    write_png(files["cover.png"], cover_image(test_input[0], test_output[0], model.config))
    return files


def cover_image(
    test_input: np.ndarray, probabilities: np.ndarray, config: UNetConfig
) -> np.ndarray:
    """Return a uint8 (Y, 2X) picture: input channel 0 beside the foreground probability.

    Both are cropped to the region the network predicts (inside the halo) and, for
    3-D, cut at the middle Z slice; at least 256 px high (pixel repetition).
    """
    spatial = test_input.shape[1:]
    inner = tuple(
        slice((size - out) // 2, (size + out) // 2)
        for size, out in zip(spatial, config_output_shape(config, spatial), strict=True)
    )
    image = test_input[0][inner]
    foreground = 1.0 - probabilities[0][inner]
    if config.ndim == 3:
        image, foreground = image[image.shape[0] // 2], foreground[foreground.shape[0] // 2]
    low, high = np.percentile(image, (1, 99.8))
    grey = np.clip((image - low) / max(high - low, 1e-12), 0, 1)
    picture = np.concatenate([grey, np.clip(foreground, 0, 1)], axis=1)
    repeat = max(1, -(-256 // picture.shape[0]))
    picture = np.repeat(np.repeat(picture, repeat, axis=0), repeat, axis=1)
    return np.round(picture * 255).astype(np.uint8)


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """Return True if `path` is a zip file with an rdf.yaml (torch.save files are zips too)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "rdf.yaml" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_bioimageio_package(path: str | os.PathLike) -> nn.Module:
    """Return the U-Net of a bioimage.io package written by biounet, in eval mode.

    Reads only `rdf.yaml` and the safetensors weight file it names (checksum-verified
    by `biounet.weightfile.load_model`); nothing in the package is executed.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if it is not a zip with an rdf.yaml, or not written by biounet.
    """
    import yaml

    from biounet.weightfile import load_model

    path = check_input_file(path, name="bioimage.io package")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"bioimage.io package {path} is not a zip file")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if "rdf.yaml" not in names:
            raise ValueError(f"bioimage.io package {path} has no rdf.yaml")
        description = yaml.safe_load(archive.read("rdf.yaml"))
        settings = (
            (description.get("config") or {}).get("biounet")
            if isinstance(description, dict)
            else None
        )
        weights = settings.get("weights") if isinstance(settings, dict) else None
        if weights not in names:
            raise ValueError(
                f"bioimage.io package {path} was not written by biounet (no config.biounet "
                "weight file); biounet imports only its own packages"
            )
        data = archive.read(weights)
    with tempfile.TemporaryDirectory(prefix="biounet-import-") as folder:
        weight_path = Path(folder) / WEIGHT_FILE
        weight_path.write_bytes(data)
        return load_model(weight_path)


def _first_line(error: BaseException) -> str:
    details = getattr(error, "errors", None)  # pydantic: name the first failing field
    if callable(details) and details():
        first = details()[0]
        text = f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"
    else:
        lines = str(error).strip().splitlines()
        text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."  # keep messages one readable line
