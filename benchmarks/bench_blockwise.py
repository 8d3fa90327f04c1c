"""Out-of-core prediction: peak memory on a 16384^2 zarr, throughput against predict_tiled.

Every prediction runs in a fresh subprocess so its peak RSS (VmHWM) is its own.
Sources are uint8 noise in zarr chunks of 1024^2 under a temporary folder; everything
else is left at its default (2 GB activation budget, its tile shape, ~2048^2 blocks).
On 2 shared cores the default network (base_channels 64, 31M parameters) took about
3 min per 2048^2 block (4 tiles of 1212^2), i.e. hours for all 64 blocks of 16384^2, so:

- peak RSS with the default network: the 16384^2 zarr is planned, opened and written
  as for a full run, but the run is stopped after its first block(s)
  (BIOUNET_BENCH_BLOCKWISE_BLOCKS, default 1); memory per block does not grow with
  the number of blocks, which the next case shows;
- peak RSS over all of 16384^2: a narrow network (base_channels 4), and the same on
  4096^2 to show that the peak does not grow with the image;
- throughput, blockwise against in-memory predict_tiled on 4096^2: base_channels 16
  (1/16 of the default's compute). The per-block overhead (zarr reads, writes,
  scheduling) weighs more against a cheaper network, so the ratio is a lower bound
  for the default network. The cases alternate and keep the best of each, as this
  machine's load varies.

Set BIOUNET_BENCH_BLOCKWISE_FULL=1 to add the whole 16384^2 with the default network.
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
DEFAULT_BASE = 64  # UNetConfig's base_channels: the paper's network
CASE = r"""
import json, sys, time
import torch, zarr
from biounet import UNet, UNetConfig, predict_tiled
from biounet.inference.blockwise import predict_blockwise
mode, source, target, base = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
max_blocks = int(sys.argv[5])  # 0: all blocks
class Enough(Exception):
    pass
def stop_after_max_blocks(window, calls=[]):  # called once per block, before its network pass
    calls.append(1)
    if len(calls) > max_blocks:
        raise Enough
    return window
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
    try:
        predict_blockwise(model, array, target, resume=False,
                          normalization=stop_after_max_blocks if max_blocks else None)
    except Enough:
        pass
    output = zarr.open_array(target, mode="r")
    record = output.attrs["biounet_blockwise"]
    extra = {"block_shape": list(output.chunks[1:]),
             "tile_shape": record["signature"]["tile_shape"],
             "n_done": len(record["done"]),
             "n_blocks": output.nchunks}
seconds = time.perf_counter() - start
# VmHWM is this process image's own high-water mark; ru_maxrss also counts the RSS
# inherited from the forking parent, which is large after earlier benchmarks.
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
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


def run_case(mode: str, source: Path, target: Path, base: int, max_blocks: int = 0) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", CASE, mode, str(source), str(target), str(base), str(max_blocks)],
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
        rows += _default_network_rows(large, folder)
        rows += _narrow_network_rows(small, large, folder)
        rows += _throughput_rows(small, folder)
        if os.environ.get("BIOUNET_BENCH_BLOCKWISE_FULL"):
            full = run_case("blockwise", large, folder / "out_large.zarr", DEFAULT_BASE)
            name = f"predict_blockwise {LARGE}^2 zarr, default net (base 64), all blocks"
            rows += [
                {"benchmark": name, "metric": "throughput",
                 "value": LARGE * LARGE / full["seconds"] / 1e6, "unit": "Mpx/s"},
                {"benchmark": name, "metric": "peak RSS", "value": full["peak_rss"] / 1e9,
                 "unit": "GB", "target": "<= 3"},
            ]
    return rows


def _default_network_rows(large: Path, folder: Path) -> list[dict]:
    n_blocks = int(os.environ.get("BIOUNET_BENCH_BLOCKWISE_BLOCKS", "1"))
    case = run_case("blockwise", large, folder / "out_default.zarr", DEFAULT_BASE, n_blocks)
    name = (
        f"predict_blockwise {LARGE}^2 zarr, default net (base 64), first {case['n_done']} of "
        f"{case['n_blocks']} blocks {case['block_shape']}, tiles {case['tile_shape']}"
    )
    return [
        {"benchmark": name, "metric": "peak RSS", "value": case["peak_rss"] / 1e9,
         "unit": "GB", "target": "<= 3"},
        {"benchmark": name, "metric": "time per block",
         "value": case["seconds"] / max(case["n_done"], 1), "unit": "s"},
    ]


def _narrow_network_rows(small: Path, large: Path, folder: Path) -> list[dict]:
    narrow_large = run_case("blockwise", large, folder / "out_large.zarr", 4)
    narrow_small = run_case("blockwise", small, folder / "out_small.zarr", 4)
    in_memory_arrays = LARGE * LARGE * 4 * (1 + 2) / 1e9  # float32 image + 2 classes
    name = (
        f"predict_blockwise {LARGE}^2 zarr, base 4, all {narrow_large['n_blocks']} blocks "
        f"{narrow_large['block_shape']}, tiles {narrow_large['tile_shape']}"
    )
    return [
        {"benchmark": name, "metric": "throughput",
         "value": LARGE * LARGE / narrow_large["seconds"] / 1e6, "unit": "Mpx/s"},
        {"benchmark": name, "metric": "peak RSS", "value": narrow_large["peak_rss"] / 1e9,
         "unit": "GB",
         "target": f"<= 3 (in memory: {in_memory_arrays:.1f} for image + output alone)"},
        {"benchmark": f"predict_blockwise {SMALL}^2 zarr, base 4 (16x fewer pixels)",
         "metric": "peak RSS", "value": narrow_small["peak_rss"] / 1e9, "unit": "GB"},
    ]


def _throughput_rows(small: Path, folder: Path) -> list[dict]:
    memory_runs, blockwise_runs = [], []
    for _ in range(REPEATS):
        memory_runs.append(run_case("memory", small, folder / "unused", 16))
        blockwise_runs.append(run_case("blockwise", small, folder / "out_small.zarr", 16))
    memory = min(memory_runs, key=lambda case: case["seconds"])
    blockwise = min(blockwise_runs, key=lambda case: case["seconds"])
    pixels = SMALL * SMALL
    return [
        {"benchmark": f"predict_tiled {SMALL}^2 array in memory, base 16", "metric": "throughput",
         "value": pixels / memory["seconds"] / 1e6, "unit": "Mpx/s"},
        {"benchmark": f"predict_blockwise {SMALL}^2 zarr -> zarr, base 16, blocks "
         f"{blockwise['block_shape']}", "metric": "throughput",
         "value": pixels / blockwise["seconds"] / 1e6, "unit": "Mpx/s"},
        {"benchmark": f"blockwise / in-memory, {SMALL}^2, base 16 (best of {REPEATS} each)",
         "metric": "throughput ratio", "value": memory["seconds"] / blockwise["seconds"],
         "unit": "x", "target": ">= 0.9"},
        {"benchmark": f"predict_tiled {SMALL}^2 array in memory, base 16", "metric": "peak RSS",
         "value": memory["peak_rss"] / 1e9, "unit": "GB"},
        {"benchmark": f"predict_blockwise {SMALL}^2 zarr -> zarr, base 16", "metric": "peak RSS",
         "value": blockwise["peak_rss"] / 1e9, "unit": "GB"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
