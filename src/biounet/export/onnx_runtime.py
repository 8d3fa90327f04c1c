"""Run a biounet ONNX file with ONNX Runtime in place of the PyTorch network.

`OnnxRuntimeBackend` is an `nn.Module` stand-in for a `UNet` that `predict_tiled` and
the blockwise prediction accept; `load_onnx_backend` also exports a weight file first.
Needs the optional `onnxruntime` (`pip install 'biounet[export]'`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from biounet.config import UNetConfig
from biounet.data.io import check_input_file
from biounet.export.onnx import export_onnx, first_line, require


class OnnxRuntimeBackend(nn.Module):
    """A biounet ONNX file run by ONNX Runtime, usable wherever a `UNet` is predicted with.

    `forward` maps a (B, C, *spatial) tensor to class scores like `UNet.forward`, and
    `config` is read from the file, so `predict_tiled(OnnxRuntimeBackend(path), image)`
    runs the same tiling, batching and softmax as for the PyTorch module. Measured
    on 2 shared CPU cores with the paper's network (benchmarks/bench_onnxruntime.py):
    1.3x faster than PyTorch on 572 px tiles; 1.2-1.5x on 1212 px tiles (one tile
    per 1024 x 1024 image) in 3 of 4 runs, 0.8x in one; within 1.1e-5 of its
    probabilities.
    Inference only: it has no trainable parameters.

    Args:
        path: an ONNX file written by `export_onnx`.
        n_threads: ONNX Runtime intra-op threads (default: torch.get_num_threads()).
    """

    def __init__(self, path: str | os.PathLike, *, n_threads: int | None = None) -> None:
        super().__init__()
        ort = require("onnxruntime", "OnnxRuntimeBackend")
        path = check_input_file(path, name="ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ValueError(f"ONNX file {path} cannot be loaded: {first_line(error)}") from None
        metadata = self._session.get_modelmeta().custom_metadata_map
        if "biounet_config" not in metadata or metadata.get("biounet_output") != "scores":
            raise ValueError(
                f"ONNX file {path} is not a biounet export of class scores; "
                "write it with biounet.export.onnx.export_onnx"
            )
        self.config = UNetConfig.from_dict(json.loads(metadata["biounet_config"]))
        self._input_name = self._session.get_inputs()[0].name
        # predict_tiled reads the device from the first parameter.
        self.device_marker = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return class scores (B, n_classes, *output_shape) for a (B, C, *spatial) batch."""
        array = np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self._session.run(None, {self._input_name: array})[0])


def load_onnx_backend(
    path: str | os.PathLike,
    *,
    n_threads: int | None = None,
    check: Callable[[UNetConfig], None] | None = None,
) -> OnnxRuntimeBackend:
    """Return an `OnnxRuntimeBackend` for a biounet ONNX file or any biounet model file.

    A `.onnx` file written by `export_onnx` (`biounet export --format onnx`) is run as
    it is. A safetensors weight file or bioimage.io package is exported first, with
    the default exporter and the same check against PyTorch as `export_onnx` (15-40 s
    for the paper's network on 2 cores), so export once to skip that on every run.
    `check`, if given, sees the network's config before that export, so a caller's
    refusal of the model costs no export.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ModuleNotFoundError: if onnx, onnxscript or onnxruntime is missing.
        ValueError: if the file is neither a biounet ONNX file nor a biounet model.
    """
    import tempfile

    from biounet.weightfile import load_model

    path = check_input_file(path, name="model")
    if path.suffix.lower() == ".onnx":
        return OnnxRuntimeBackend(path, n_threads=n_threads)
    model = load_model(path)
    if check is not None:
        check(model.config)
    with tempfile.TemporaryDirectory(prefix="biounet-onnx-") as folder:
        exported = export_onnx(model, Path(folder) / "model.onnx")
        return OnnxRuntimeBackend(exported, n_threads=n_threads)  # the session holds the graph
