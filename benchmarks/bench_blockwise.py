"""Out-of-core prediction: peak memory on a 16384^2 zarr, throughput against predict_tiled.

Every prediction runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own.
Sources are uint8 noise in zarr chunks of 1024^2 under a temporary folder. On 2 cores
the default network needs about 45 min for 16384^2, so the memory case uses a narrow
one (base_channels=4); set BIOUNET_BENCH_BLOCKWISE_FULL=1 to add the default network.
Throughput cases alternate in-memory and blockwise runs and keep the best of each, as
this machine's load varies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LARGE, SMALL, CHUNK = 16384, 4096, 1024
REPEATS = 2
CASE = r"""
import json, resource, sys, time
import torch, zarr
from biounet import UNet, UNetConfig, predict_tiled
from biounet.inference.blockwise import predict_blockwise
mode, source, target, base = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
model = UNet(UNetConfig(base_channels=base)).eval()
array = zarr.open_array(source, mode="r")
if mode == "memory":
    image = array[...]
    start = time.perf_counter()
    predict_tiled(model, image)
    extra = {}
else:
    start = time.perf_counter()
    output = predict_blockwise(model, array, target, resume=False)
    extra = {"block_shape": list(output.chunks[1:]),
             "tile_shape": output.attrs["biounet_blockwise"]["signature"]["tile_shape"]}
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_rss": peak, **extra}))
"""


def write_source(path: Path, size: int) -> None:
    """Write a (size, size) uint8 noise zarr one band of chunks at a time."""
    import numpy as np
    import zarr

    array = zarr.create_array(
        store=str(path), shape=(size, size), chunks=(CHUNK, CHUNK), dtype="uint8", overwrite=True
    )
    rng = np.random.default_rng(0)
    for row in range(0, size, CHUNK):
        array[row : row + CHUNK] = rng.integers(0, 256, (min(CHUNK, size - row), size), np.uint8)


def run_case(mode: str, source: Path, target: Path, base: int) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", CASE, mode, str(source), str(target), str(base)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_blockwise_") as folder:
        folder = Path(folder)
        small, large = folder / "small.zarr", folder / "large.zarr"
        write_source(small, SMALL)
        write_source(large, LARGE)

        memory_runs, blockwise_runs = [], []
        for _ in range(REPEATS):
            memory_runs.append(run_case("memory", small, folder / "unused", 16))
            blockwise_runs.append(run_case("blockwise", small, folder / "out_small.zarr", 16))
        memory = min(memory_runs, key=lambda case: case["seconds"])
        blockwise = min(blockwise_runs, key=lambda case: case["seconds"])
        pixels = SMALL * SMALL
        rows += [
            {"benchmark": f"predict_tiled {SMALL}^2 base 16, in memory", "metric": "throughput",
             "value": pixels / memory["seconds"] / 1e6, "unit": "Mpx/s"},
            {"benchmark": f"predict_blockwise {SMALL}^2 base 16, zarr -> zarr, blocks "
             f"{blockwise['block_shape']}", "metric": "throughput",
             "value": pixels / blockwise["seconds"] / 1e6, "unit": "Mpx/s"},
            {"benchmark": "blockwise / in-memory", "metric": "throughput ratio",
             "value": memory["seconds"] / blockwise["seconds"], "unit": "x", "target": ">= 0.9"},
            {"benchmark": f"predict_tiled {SMALL}^2 base 16", "metric": "peak RSS",
             "value": memory["peak_rss"] / 1e9, "unit": "GB"},
            {"benchmark": f"predict_blockwise {SMALL}^2 base 16", "metric": "peak RSS",
             "value": blockwise["peak_rss"] / 1e9, "unit": "GB"},
        ]

        narrow_small = run_case("blockwise", small, folder / "out_small.zarr", 4)
        narrow_large = run_case("blockwise", large, folder / "out_large.zarr", 4)
        in_memory_arrays = LARGE * LARGE * 4 * (1 + 2) / 1e9  # float32 image + 2 classes
        rows += [
            {"benchmark": f"predict_blockwise {LARGE}^2 base 4, tiles "
             f"{narrow_large['tile_shape']}, blocks {narrow_large['block_shape']}",
             "metric": "throughput", "value": LARGE * LARGE / narrow_large["seconds"] / 1e6,
             "unit": "Mpx/s"},
            {"benchmark": f"predict_blockwise {LARGE}^2 base 4", "metric": "peak RSS",
             "value": narrow_large["peak_rss"] / 1e9, "unit": "GB",
             "target": f"< {in_memory_arrays:.1f} (in-memory image + output alone)"},
            {"benchmark": f"predict_blockwise {SMALL}^2 base 4 (16x fewer pixels)",
             "metric": "peak RSS", "value": narrow_small["peak_rss"] / 1e9, "unit": "GB"},
        ]
        if os.environ.get("BIOUNET_BENCH_BLOCKWISE_FULL"):
            full = run_case("blockwise", large, folder / "out_large.zarr", 64)
            rows += [
                {"benchmark": f"predict_blockwise {LARGE}^2 default net", "metric": "throughput",
                 "value": LARGE * LARGE / full["seconds"] / 1e6, "unit": "Mpx/s"},
                {"benchmark": f"predict_blockwise {LARGE}^2 default net", "metric": "peak RSS",
                 "value": full["peak_rss"] / 1e9, "unit": "GB"},
            ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
