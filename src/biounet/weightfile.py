"""Safe weight files: safetensors tensors + JSON config + version + checksum, never pickle."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from biounet.config import UNetConfig
from biounet.data.io import check_input_file
from biounet.data.normalize import POLARITIES
from biounet.data.outputs import atomic_path
from biounet.model.unet import UNet

FORMAT_VERSION = "1"
_PICKLE_SIGNATURES = (b"PK\x03\x04", b"\x80")  # torch.save zip archives and raw pickles


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """Return a sha256 over names, dtypes, shapes and bytes of `tensors`, in sorted order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model(
    model: UNet,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write the weights of `model` and its config to a safetensors file, atomically.

    The file holds every tensor of the state dict (BatchNorm statistics included),
    and in its metadata the JSON config, the format version and a sha256 of the
    tensors so that truncation or tampering is detected on load.
    """
    from safetensors.torch import save_file

    tensors = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    header = {
        "format": "biounet",
        "format_version": FORMAT_VERSION,
        "config": model.config.to_json(),
        "sha256": tensors_checksum(tensors),
    }
    header.update(dict(metadata or {}))
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as temporary:
        save_file(tensors, str(temporary), metadata=header)
    return path


def read_weight_file(
    path: str | os.PathLike, *, name: str = "model"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata of a biounet safetensors file, verifying its checksum.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is a pickle checkpoint (refused, never unpickled), not a
            safetensors file, truncated, tampered with, or not written by biounet.
    """
    from safetensors import SafetensorError, safe_open

    path = check_input_file(path, name=name)
    with open(path, "rb") as handle:
        head = handle.read(9)
    # safetensors: an 8-byte header length, then the JSON header
    looks_like_safetensors = head[8:9] == b"{"
    if not looks_like_safetensors and head.startswith(_PICKLE_SIGNATURES):
        raise ValueError(
            f"{name} {path} is a pickle-based PyTorch checkpoint; biounet never unpickles "
            "files (they can run code): convert it with "
            "biounet.weightfile.import_state_dict on a trusted machine"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"{name} {path} is not a readable safetensors weight file ({text})"
        ) from None
    if metadata.get("format") != "biounet" or "config" not in metadata:
        raise ValueError(
            f"{name} {path} is a safetensors file without a biounet config; "
            "expected a file written by biounet.save_model"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{name} {path} has format version {metadata.get('format_version')!r}; this "
            f"biounet reads version {FORMAT_VERSION}"
        )
    if tensors_checksum(tensors) != metadata.get("sha256"):
        raise ValueError(f"{name} {path} failed its checksum: the tensors were changed or damaged")
    return tensors, metadata


PREPROCESSING_DEFAULTS = {"normalization": "percentile", "polarity": "as_is"}
_PREPROCESSING_CHOICES = {"normalization": ("percentile", "zscore"), "polarity": POLARITIES}


def check_preprocessing(preprocessing: Mapping[str, str] | None) -> dict[str, str]:
    """Return `preprocessing` as a dict after checking it names known values only.

    Args:
        preprocessing: {"normalization": ..., "polarity": ...}, either or both; None
            for none.

    Returns:
        A new dict of the same items.

    Raises:
        ValueError: for a key other than "normalization" and "polarity", or a value
            `stored_preprocessing` would refuse to read back.
    """
    found = dict(preprocessing or {})
    unknown = sorted(set(found) - set(_PREPROCESSING_CHOICES))
    if unknown:
        raise ValueError(
            f"preprocessing must name only {list(_PREPROCESSING_CHOICES)}, got {unknown}"
        )
    for key, value in found.items():
        if value not in _PREPROCESSING_CHOICES[key]:
            raise ValueError(
                f"preprocessing {key} must be one of {list(_PREPROCESSING_CHOICES[key])}, "
                f"got {value!r}"
            )
    return found


def stored_preprocessing(path: str | os.PathLike) -> dict[str, str]:
    """How the images a model was trained on were normalised, from its weight file.

    The trainer stores `TrainConfig.normalization` and `TrainConfig.polarity` in the
    metadata of model.safetensors and best.safetensors, and `biounet export --format
    onnx` copies them into the ONNX file's. What a file does not record (an older file,
    a bioimage.io package, whose rdf.yaml describes its own preprocessing) reads as the
    defaults, percentile normalisation as it is. Only the header is read; `load_model`
    verifies the tensors.

    Raises:
        ValueError: naming the file, for a recorded value biounet does not know.
    """
    found = dict(PREPROCESSING_DEFAULTS)
    path = Path(path)
    if not path.is_file() or zipfile.is_zipfile(path):
        return found  # a missing file is load_model's to report
    metadata = _onnx_metadata(path) if path.suffix.lower() == ".onnx" else _header(path)
    for key, choices in _PREPROCESSING_CHOICES.items():
        value = metadata.get(key, found[key])
        if value not in choices:
            raise ValueError(
                f"model {path} records {key} {value!r}; expected one of {list(choices)}"
            )
        found[key] = value
    return found


def _header(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return {}  # load_model names what is wrong with the file


def _onnx_metadata(path: Path) -> dict[str, str]:
    try:
        import onnx
    except ImportError:
        return {}  # predicting an .onnx file needs onnxruntime, which says it is missing
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises protobuf's DecodeError and others: the backend reports
        return {}
    return {entry.key: entry.value for entry in proto.metadata_props}


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> UNet:
    """Build the U-Net stored in a biounet weight file and load its weights, in eval mode.

    `path` may also be a bioimage.io package (zip) written by `biounet export`; its
    safetensors attachment is read, nothing in the package is executed.

    Raises:
        FileNotFoundError, ValueError: see `read_weight_file`; also a ValueError if the
            tensors do not fit the stored architecture.
    """
    if zipfile.is_zipfile(path):  # safetensors files are never zips; torch.save files are
        from biounet.export.bioimageio import is_bioimageio_package, load_bioimageio_package

        if is_bioimageio_package(path):
            return load_bioimageio_package(path).to(device)
    tensors, metadata = read_weight_file(path)
    try:
        config = UNetConfig.from_dict(json.loads(metadata["config"]))
    except (ValueError, TypeError) as error:
        raise ValueError(f"model {path} has an invalid config: {error}") from None
    # The checksum covers the tensors, not the config: compare their shapes with a network
    # built on the meta device (no memory) before allocating the one the config describes.
    with torch.device("meta"):
        skeleton = UNet(config)
    check_state_dict(skeleton, tensors, source=f"model {path}")
    model = UNet(config)
    load_state_dict_checked(model, tensors, source=f"model {path}")
    return model.to(device).eval()


def load_state_dict_checked(
    model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], *, source: str
) -> None:
    """Load `tensors` into `model`, raising one readable ValueError for any mismatch."""
    check_state_dict(model, tensors, source=source)
    model.load_state_dict(dict(tensors), strict=True)


def check_state_dict(
    model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], *, source: str
) -> None:
    """Raise one readable ValueError unless `tensors` match the names and shapes of `model`.

    Only shapes are read, so `model` may live on the meta device.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{key} {tuple(tensors[key].shape)} vs {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(tensors))
        if tensors[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        if mismatched:
            parts.append(f"shape (file vs network) {mismatched[:2]}")
        raise ValueError(
            f"{source} does not fit the architecture {model.config}: {'; '.join(parts)}"
        )


def import_state_dict(
    checkpoint: str | os.PathLike, config: UNetConfig, *, key: str | None = None
) -> UNet:
    """Build a U-Net from a foreign PyTorch checkpoint, loaded with weights_only=True.

    `torch.load(weights_only=True)` refuses pickled code, so only tensors and plain
    containers are read. `key` selects a nested state dict (e.g. "model_state").
    """
    path = check_input_file(checkpoint, name="checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ...
        raise ValueError(
            f"checkpoint {path} cannot be loaded safely (weights_only=True): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    if key is not None:
        state = state.get(key) if isinstance(state, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds no state dict{f' under {key!r}' if key else ''}")
    model = UNet(config)
    load_state_dict_checked(model, state, source=f"checkpoint {path}")
    return model.eval()
