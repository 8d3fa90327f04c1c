"""Export a U-Net to ONNX (run with ONNX Runtime by `biounet.export.onnx_runtime`).

The ONNX file maps float32 "image" (B, C, *spatial) to "scores" (B, n_classes,
*output_shape), like `UNet.forward`; batch and spatial axes are dynamic. Valid
spatial sizes are `min_input_size + 2**depth * n` (e.g. 188 + 16n for the paper's
network, whose output is 92 px smaller on every side); other sizes fail or give
misaligned outputs. An anisotropic network (`UNetConfig.pool_z`) has its own minimum,
step and halo along Z. The architecture and these numbers are stored in the file's
metadata (`biounet_config`, `halo`, `min_input_size`, `input_size_step`): one number
when every axis has the same, else one per spatial axis, comma-separated (Z, Y, X).

Two exporters: "dynamo" (torch.export, PyTorch's supported exporter: 10-30 s because
it reasons about the symbolic input sizes) and "legacy" (the TorchScript-based
exporter, about 1 s, deprecated by PyTorch). Both are checked on the spot against
PyTorch (`biounet.export.checks.compare_with_pytorch`).

Needs the optional packages onnx, onnxscript and onnxruntime (`pip install 'biounet[export]'`).
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from biounet.config import UNetConfig
from biounet.data.outputs import atomic_path
from biounet.export.checks import check_inputs, compare_with_pytorch, frozen_copy
from biounet.geometry import config_halo, config_min_input_shape, config_size_step

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # ONNX Runtime >= 1.14 runs it on CPU; the dynamo exporter's base opset
MIN_OPSET = 14
INPUT_NAME = "image"
EXTRA = "pip install 'biounet[export]'"


def require(module_name: str, purpose: str):
    """Import an optional package, or raise a one-line error naming the extra to install.

    Raises:
        ModuleNotFoundError: if `module_name` is not installed.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise ModuleNotFoundError(
            f"{purpose} needs the optional package {module_name}: {EXTRA}",
            name=module_name,
        ) from None


def _spatial_axes(config: UNetConfig) -> list[str]:
    return ["z", "y", "x"][3 - config.ndim :]


def _export_dynamo(
    network: nn.Module, example: torch.Tensor, config: UNetConfig, opset: int, output_name: str
):
    require("onnxscript", "the dynamo ONNX exporter")
    from torch.export import Dim

    # Spatial sizes as min + step * n tell torch.export which sizes are valid, so the
    # shape arithmetic of every level stays symbolic instead of being frozen.
    shapes = {0: Dim("batch", min=1)}
    per_axis = zip(config_min_input_shape(config), config_size_step(config), strict=True)
    for axis, (name, (smallest, step)) in enumerate(zip(_spatial_axes(config), per_axis)):
        shapes[axis + 2] = step * Dim(f"n_{name}", min=0) + smallest
    for module in network.modules():
        if hasattr(module, "_check_input"):
            # UNet's input check turns symbolic sizes into Python ints, which would
            # freeze them; the exported graph is compared with PyTorch instead.
            module._check_input = _accept
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # it lists every missing torchvision operator
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations
            program = torch.onnx.export(
                network,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                dynamic_shapes=(shapes,),
                external_data=False,
                verbose=False,
            )
    finally:
        registration.setLevel(level)
    return program.model_proto


def _accept(image: torch.Tensor) -> None:
    del image


def _export_legacy(
    network: nn.Module, example: torch.Tensor, config: UNetConfig, opset: int, output_name: str
):
    onnx = require("onnx", "ONNX export")
    spatial = _spatial_axes(config)
    dynamic_axes = {
        INPUT_NAME: {0: "batch", **{axis + 2: name for axis, name in enumerate(spatial)}},
        output_name: {0: "batch", **{axis + 2: f"out_{n}" for axis, n in enumerate(spatial)}},
    }
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # checked against PyTorch
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            network,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
        )
    return onnx.load_from_string(buffer.getvalue())


EXPORTERS = {"dynamo": _export_dynamo, "legacy": _export_legacy}


def onnx_bytes(
    network: nn.Module,
    config: UNetConfig,
    inputs: Sequence[np.ndarray],
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    outputs_scores: bool = True,
    preprocessing: Mapping[str, str] | None = None,
) -> bytes:
    """Export `network` to ONNX, add biounet metadata and check it with ONNX Runtime.

    Args:
        network: the module to export (a `UNet`, or a wrapper around one).
        config: the U-Net's architecture, stored in the metadata.
        inputs: float32 batches from `check_inputs`; the first is the export example.
        opset: ONNX opset version.
        exporter: "dynamo" or "legacy" (see the module docstring).
        outputs_scores: True if `network` outputs class scores (compared after a
            softmax), False if it already outputs probabilities.
        preprocessing: the weight file's "normalization" and "polarity"
            (`biounet.weightfile.stored_preprocessing`), kept in the metadata so that
            `biounet predict` applies them to an .onnx model too.

    Raises:
        ValueError: for a bad `opset`, `exporter` or `preprocessing`, or if the export
            disagrees with PyTorch.
    """
    from biounet.weightfile import check_preprocessing

    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    preprocessing = check_preprocessing(preprocessing)
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {sorted(EXPORTERS)}, got {exporter!r}")
    onnx = require("onnx", "ONNX export")
    ort = require("onnxruntime", "checking the ONNX export")
    if opset > onnx.defs.onnx_opset_version():
        raise ValueError(
            f"opset {opset} is newer than the installed onnx supports "
            f"({onnx.defs.onnx_opset_version()})"
        )
    output_name = "scores" if outputs_scores else "probabilities"
    reference = frozen_copy(network)
    try:
        with torch.no_grad():
            proto = EXPORTERS[exporter](
                frozen_copy(network), torch.from_numpy(inputs[0]), config, opset, output_name
            )
    except torch.onnx.errors.OnnxExporterError as error:
        other = "legacy" if exporter == "dynamo" else "dynamo"
        reason = first_line(error.__cause__ or error)
        raise ValueError(
            f"the {exporter} ONNX exporter failed ({reason}); exporter={other!r} may succeed"
        ) from None
    for key, value in {**_metadata(config, output_name), **preprocessing}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"biounet U-Net (Ronneberger et al. 2015): image (B, {config.in_channels}, "
        f"{', '.join(_spatial_axes(config)).upper()}) float32 -> "
        f"{'class scores' if outputs_scores else 'probabilities'} (B, {config.n_classes}, ...)"
    )
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run_session(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {session.get_inputs()[0].name: batch})[0]

    compare_with_pytorch(reference, run_session, inputs, name="ONNX", outputs_scores=outputs_scores)
    return data


def _metadata(config: UNetConfig, output_name: str) -> dict[str, str]:
    return {
        "biounet_config": config.to_json(),
        "biounet_output": output_name,
        "halo": _per_axis_text(config_halo(config)),
        "min_input_size": _per_axis_text(config_min_input_shape(config)),
        "input_size_step": _per_axis_text(config_size_step(config)),
    }


def _per_axis_text(values: tuple[int, ...]) -> str:
    # One number for isotropic networks, as files of earlier versions hold.
    return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    tile_shape: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    overwrite: bool = False,
    preprocessing: Mapping[str, str] | None = None,
) -> Path:
    """Write `model` as an ONNX file with dynamic batch and spatial axes, checked first.

    Args:
        model: a `UNet` (anything with a `config: UNetConfig`).
        path: output file, written atomically (weights inside, no external data).
        tile_shape: an extra valid tile shape to check the export on.
        opset: ONNX opset version (default 18).
        exporter: "dynamo" (default) or "legacy".
        overwrite: replace an existing file.
        preprocessing: {"normalization": ..., "polarity": ...} the model was trained
            with, stored in the metadata (`biounet export` passes the weight file's).

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False.
        ModuleNotFoundError: if onnx, onnxscript or onnxruntime is missing.
        ValueError: for bad options, or if the export disagrees with PyTorch.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {path} already exists; pass overwrite to replace it")
    inputs = check_inputs(model.config, tile_shape)
    data = onnx_bytes(
        model, model.config, inputs, opset=opset, exporter=exporter, preprocessing=preprocessing
    )
    with atomic_path(path, overwrite=overwrite) as temporary:
        temporary.write_bytes(data)
    return path


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
