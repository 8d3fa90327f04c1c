"""Export a U-Net to TorchScript, and the on-the-spot check that every export format passes.

TorchScript files are for deployment (C++ libtorch, Java/DJL, deepImageJ, bioimage.io
consumers). Loading one runs the code stored in it, so treat it like a program:
biounet's own `load_model` never loads TorchScript (nor ONNX); it reads only its
pickle-free safetensors weight files. What the network expects (its configuration and
how its training images were normalised) is kept beside the code as the extra file
`biounet.json` (`RECORD`), which `read_record` reads without running anything.

Every export is checked before anything is written: the exported network and the
PyTorch module must give the same class probabilities, within `TOLERANCE`, on seeded
random tiles of two different shapes and batch sizes, which also shows that the
batch and spatial axes of the export are not frozen to the traced shape.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from biounet.config import UNetConfig
from biounet.data.outputs import atomic_path
from biounet.geometry import (
    config_halo,
    config_min_input_shape,
    config_size_step,
    is_valid_input_size,
    nearest_valid_sizes,
    pooling_per_axis,
)

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max abs difference of probabilities between an export and PyTorch
_CHECK_SEED = 0
RECORD = "biounet.json"  # the extra file of an export: config and preprocessing


def trace_shape(config: UNetConfig) -> tuple[int, ...]:
    """Return the spatial shape an export is traced on: `min + step * n` per axis.

    n >= 2 and the sizes distinct, because torch.export specialises an axis whose
    example size is 0 or 1 steps, or equal to another axis, to a constant. Min and
    step are per axis (`config_min_input_shape`, `config_size_step`), so an
    anisotropic network (`pool_z`) is traced on its own valid sizes.

    Example:
        >>> trace_shape(UNetConfig())
        (220, 236)
        >>> trace_shape(UNetConfig(depth=2, ndim=3))
        (52, 56, 60)
        >>> trace_shape(UNetConfig(depth=2, ndim=3, pool_z=(False, True)))
        (30, 56, 60)
    """
    shape: list[int] = []
    for axis, (smallest, step) in enumerate(
        zip(config_min_input_shape(config), config_size_step(config), strict=True)
    ):
        size = smallest + step * (2 + axis)
        while size in shape:
            size += step
        shape.append(size)
    return tuple(shape)


def check_inputs(config: UNetConfig, tile_shape: Sequence[int] | None = None) -> list[np.ndarray]:
    """Return the seeded random batches an export is checked on, float32 (B, C, *spatial).

    The first batch (2 tiles of `trace_shape`) is the one traced; the second (1 tile
    of `tile_shape`, or of one step less/more than the trace per axis) must agree too.

    Raises:
        ValueError: if `tile_shape` is not a valid input shape of the network.
    """
    traced = trace_shape(config)
    if tile_shape is None:
        other = tuple(
            size + step * (1 if axis % 2 else -1)
            for axis, (size, step) in enumerate(zip(traced, config_size_step(config)))
        )
    else:
        other = check_tile_shape(config, tile_shape)
    rng = np.random.default_rng(_CHECK_SEED)
    return [
        rng.random((2, config.in_channels, *traced), dtype=np.float32),
        rng.random((1, config.in_channels, *other), dtype=np.float32),
    ]


def check_tile_shape(config: UNetConfig, tile_shape: Sequence[int]) -> tuple[int, ...]:
    """Return `tile_shape` as a tuple after checking it is a valid input shape.

    Raises:
        ValueError: naming the nearest valid sizes of an invalid axis.
    """
    shape = tuple(int(size) for size in tile_shape)
    if len(shape) != config.ndim:
        raise ValueError(
            f"tile_shape {shape} needs {config.ndim} sizes for this {config.ndim}-D network"
        )
    names = "ZYX"[3 - config.ndim :]
    for name, size, factors in zip(names, shape, pooling_per_axis(config)):
        kwargs = {"depth": config.depth, "padding": config.padding, "pooling": factors}
        if not is_valid_input_size(size, **kwargs):
            below, above = nearest_valid_sizes(size, **kwargs)
            nearest = f"{below} and {above}" if below is not None else f"{above} (the minimum)"
            # valid sizes differ per axis in anisotropic networks, so the axis is named
            raise ValueError(
                f"tile_shape {shape}: {name} = {size} is not a valid input size of this "
                f"network; nearest valid sizes along {name} are {nearest}"
            )
    return shape


def frozen_copy(network: nn.Module) -> nn.Module:
    """Return a CPU copy of `network` in eval mode; the caller's module is left untouched."""
    network = copy.deepcopy(network).cpu().eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def compare_with_pytorch(
    reference: nn.Module,
    run_export: Callable[[np.ndarray], np.ndarray],
    inputs: Sequence[np.ndarray],
    *,
    name: str,
    outputs_scores: bool = True,
) -> float:
    """Run `reference` and an exported network on `inputs`; return the max abs difference.

    Compared are softmax probabilities (eq. 1 of Ronneberger et al. 2015) when the
    networks output class scores, so the tolerance means the same for any weights.

    Raises:
        ValueError: if shapes differ or the difference exceeds `TOLERANCE`; the
            export must then not be written.
    """
    largest = 0.0
    for batch in inputs:
        with torch.no_grad():
            expected = reference(torch.from_numpy(batch))
        actual = torch.from_numpy(np.asarray(run_export(batch)))
        if actual.shape != expected.shape:
            raise ValueError(
                f"{name} export gives shape {tuple(actual.shape)} for input {batch.shape}; "
                f"PyTorch gives {tuple(expected.shape)}"
            )
        if outputs_scores:
            expected, actual = torch.softmax(expected, dim=1), torch.softmax(actual, dim=1)
        difference = float((expected - actual).abs().max())
        largest = max(largest, difference)
        if not difference <= TOLERANCE:  # also catches NaN
            raise ValueError(
                f"{name} export disagrees with PyTorch on input {batch.shape}: max abs "
                f"difference of probabilities {difference:.3g} > {TOLERANCE:g}; not written"
            )
    logger.info("%s export agrees with PyTorch: max abs difference %.3g", name, largest)
    return largest


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
    shape (`min + step * n` per axis, see `trace_shape`) and returns (B, n_classes,
    *output_shape) class scores, like `UNet.forward`; apply a softmax over axis 1 for
    probabilities. Load it with `torch.jit.load` (this runs code: trusted files only).
    Its extra file `biounet.json` (`read_record`) holds what the ONNX export's
    metadata holds: the network's configuration ("biounet_config", an object),
    "biounet_output" ("scores"), "halo", "min_input_size" and "input_size_step" (lists
    of one integer per spatial axis, where ONNX metadata has comma-separated text), and
    `preprocessing`.

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
