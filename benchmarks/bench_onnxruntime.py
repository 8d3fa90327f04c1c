"""ONNX Runtime vs PyTorch for tiled prediction with the paper's network, 2 threads each.

One image per tile size, exactly one tile (572 -> 388 and 1212 -> 1028 px output; the
latter is what `biounet predict` plans for a 1024 x 1024 image with the default 2 GB
budget), predicted by `predict_tiled` with the PyTorch module and with
`OnnxRuntimeBackend` (the same tiling, batching and softmax, i.e. `biounet predict
--backend torch|onnxruntime`). Runs alternate between the two so that load from other
processes hits both alike; the median of REPEATS[size] runs is reported, and the
ratio of CPU seconds, which other processes sway less than wall time. About 2-3.5
minutes on 2 loaded cores, a quarter of it the ONNX export.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TILE_SIZES = (572, 1212)
REPEATS = {572: 2, 1212: 1}  # a 1212 tile takes 30-60 s on 2 loaded cores
THREADS = 2


def run() -> list[dict]:
    from biounet import UNet, UNetConfig, predict_tiled
    from biounet.export.onnx import export_onnx
    from biounet.export.onnx_runtime import OnnxRuntimeBackend
    from biounet.geometry import output_shape

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = UNet(UNetConfig()).eval()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        path = export_onnx(model, Path(folder) / "unet.onnx")
        export_seconds = time.perf_counter() - start
        backend = OnnxRuntimeBackend(path, n_threads=THREADS)
    rows.append(
        {"benchmark": "export_onnx default net (dynamo exporter + check)", "metric": "time",
         "value": export_seconds, "unit": "s", "target": ""}
    )
    rng = np.random.default_rng(0)
    for size in TILE_SIZES:
        image = rng.random(output_shape((size, size)), dtype=np.float32)
        tile = (size, size)
        seconds = {"pytorch": [], "onnxruntime": []}
        cpu_seconds = {"pytorch": [], "onnxruntime": []}
        results = {}
        for _ in range(REPEATS[size]):
            for name, network in (("pytorch", model), ("onnxruntime", backend)):
                start, cpu_start = time.perf_counter(), time.process_time()
                results[name] = predict_tiled(network, image, tile_shape=tile)
                seconds[name].append(time.perf_counter() - start)
                cpu_seconds[name].append(time.process_time() - cpu_start)
        torch_median = statistics.median(seconds["pytorch"])
        ort_median = statistics.median(seconds["onnxruntime"])
        difference = float(np.abs(results["pytorch"] - results["onnxruntime"]).max())
        label = f"predict_tiled one {size}x{size} tile, default net, {THREADS} threads"
        megapixels = image.size / 1e6
        rows += [
            {"benchmark": label, "metric": "PyTorch throughput", "value":
             megapixels / torch_median, "unit": "Mpx/s", "target": ""},
            {"benchmark": label, "metric": "ONNX Runtime throughput", "value":
             megapixels / ort_median, "unit": "Mpx/s", "target": ""},
            {"benchmark": label, "metric": "PyTorch median", "value": torch_median, "unit": "s",
             "target": ""},
            {"benchmark": label, "metric": "ONNX Runtime median", "value": ort_median,
             "unit": "s", "target": ""},
            {"benchmark": label, "metric": "PyTorch / ONNX Runtime time", "value":
             torch_median / ort_median, "unit": "x", "target": "> 1 (else drop the backend)"},
            # CPU seconds of this process: less swayed than wall time when other
            # processes share the cores
            {"benchmark": label, "metric": "PyTorch / ONNX Runtime CPU time", "value":
             statistics.median(cpu_seconds["pytorch"])
             / statistics.median(cpu_seconds["onnxruntime"]), "unit": "x", "target": "> 1"},
            {"benchmark": label, "metric": "max abs difference of probabilities",
             "value": difference, "unit": "", "target": "<= 1e-4"},
        ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
