"""Export a U-Net to TorchScript, with a record of what it expects that is read without running it.

TorchScript files are for deployment (C++ libtorch, Java/DJL, deepImageJ, bioimage.io
consumers). Loading one runs the code stored in it, so treat it like a program:
biounet's own `load_model` never loads TorchScript (nor ONNX); it reads only its
pickle-free safetensors weight files. What the network expects (its configuration and
how its training images were normalised) is kept beside the code as the extra file
`biounet.json` (`RECORD`), which `read_record` reads without running anything. Every
export is checked against PyTorch before it is written (`biounet.export.checks`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from biounet.config import UNetConfig
from biounet.data.outputs import atomic_path
from biounet.export.checks import check_inputs, compare_with_pytorch, frozen_copy
from biounet.geometry import (
    config_halo,
    config_min_input_shape,
    config_size_step,
)

logger = logging.getLogger(__name__)

RECORD = "biounet.json"  # the extra file of an export: config and preprocessing


def torchscript_bytes(
    network: nn.Module,
    inputs: Sequence[np.ndarray],
    *,
    outputs_scores: bool = True,
    extra_files: Mapping[str, str] | None = None,
) -> bytes:
    """Trace `network` on `inputs[0]`, save it, reload it and check it on every input.

    `torch.jit.trace` records the sizes a valid U-Net crops to as operations on the
    input's shape, so the traced network takes any valid batch and tile shape.
    `extra_files` (name -> text) are stored beside the code (`torch.jit.save`'s
    `_extra_files`).
    """
    network = frozen_copy(network)
    with warnings.catch_warnings():
        # The input check's Python ints only raise errors, they never reach the graph;
        # the comparison below proves the trace generalises.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is in maintenance
        with torch.no_grad():
            traced = torch.jit.trace(network, torch.from_numpy(inputs[0]), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files=dict(extra_files or {}))
        loaded = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cpu")

    def run_loaded(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(batch)).numpy()

    compare_with_pytorch(
        network, run_loaded, inputs, name="TorchScript", outputs_scores=outputs_scores
    )
    return buffer.getvalue()


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    tile_shape: Sequence[int] | None = None,
    overwrite: bool = False,
    preprocessing: Mapping[str, str] | None = None,
) -> Path:
    """Write `model` as a traced TorchScript file that maps images to class scores.

    The file takes float32 (B, C, *spatial) with any batch size and any valid input
    shape (`min + step * n` per axis, see `biounet.export.checks.trace_shape`) and
    returns (B, n_classes, *output_shape) class scores, like `UNet.forward`; apply a
    softmax over axis 1 for probabilities. Load it with `torch.jit.load` (this runs
    code: trusted files only). Its extra file `biounet.json` (`read_record`) holds
    what the ONNX export's metadata holds: the network's configuration
    ("biounet_config", an object), "biounet_output" ("scores"), "halo",
    "min_input_size" and "input_size_step" (lists of one integer per spatial axis,
    where ONNX metadata has comma-separated text), and `preprocessing`.

    Args:
        model: a `UNet` (anything with a `config: UNetConfig`).
        path: output file, written atomically.
        tile_shape: an extra valid tile shape to check the export on.
        overwrite: replace an existing file.
        preprocessing: the weight file's "normalization" and "polarity"
            (`biounet.weightfile.stored_preprocessing`; `biounet export` passes them),
            so that a consumer normalises its images as the model was trained.

    Returns:
        `path`.

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False.
        ValueError: for an invalid `tile_shape` or `preprocessing`, or if the export
            disagrees with PyTorch.
    """
    from biounet.data.jsontext import json_text
    from biounet.weightfile import check_preprocessing

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {path} already exists; pass overwrite to replace it")
    preprocessing = check_preprocessing(preprocessing)
    inputs = check_inputs(model.config, tile_shape)
    record = {**preprocessing, **_geometry(model.config)}
    data = torchscript_bytes(model, inputs, extra_files={RECORD: json_text(record)})
    with atomic_path(path, overwrite=overwrite) as temporary:
        temporary.write_bytes(data)
    return path


def read_record(path: str | os.PathLike) -> dict:
    """Return the `biounet.json` extra file of a TorchScript export, {} if it has none.

    A TorchScript file is a zip archive with one top folder holding `code/`; the record
    is `<top>/extra/biounet.json`, read from the archive directly, so no code of the
    file runs (unlike `torch.jit.load(..., _extra_files=...)`).

    Args:
        path: a file written by `torch.jit.save` (`export_torchscript`'s output).

    Returns:
        The record: what `export_torchscript` describes, or {} for TorchScript files
        written without one.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: naming the file, if it is not a TorchScript file (a `torch.save`
            checkpoint is a zip too) or its record is not a JSON object.
    """
    from biounet.data.io import check_input_file

    path = check_input_file(path, name="TorchScript file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            tops = {name.split("/", 1)[0] for name in names}
            top = tops.pop() if len(tops) == 1 else None
            if top is None or not any(name.startswith(f"{top}/code/") for name in names):
                raise ValueError(
                    f"{path} is not a TorchScript file: expected one top folder with code/ "
                    "(torch.jit.save's layout)"
                )
            record = f"{top}/extra/{RECORD}"
            data = archive.read(record) if record in names else None
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as error:
        raise ValueError(f"{path} is not a readable TorchScript file: {error}") from None
    if data is None:
        return {}
    try:
        found = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError):
        found = None
    if not isinstance(found, dict):
        raise ValueError(f"{path}: its {RECORD} is not a JSON object")
    return found


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _geometry(config: UNetConfig) -> dict:
    return {
        "biounet_config": config.to_dict(),
        "biounet_output": "scores",
        "halo": list(config_halo(config)),
        "min_input_size": list(config_min_input_shape(config)),
        "input_size_step": list(config_size_step(config)),
    }
