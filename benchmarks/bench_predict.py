"""Overlap-tile prediction on a 2048x2048 image: throughput, peak memory, and the limit.

The limit is this machine's fp32 matmul GFLOP/s, measured in the same run, divided by
the FLOPs per output pixel of one whole-image pass of the default network (1.56 M).
Every prediction runs in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

SIZE = 2048
CASE = r"""
import json, sys, time
import numpy as np, torch
from biounet import UNet, UNetConfig, predict_tiled
from biounet.geometry import count_flops
from biounet.inference.predict import plan_tiles
kind, base = sys.argv[1], int(sys.argv[2])
size = %d
torch.manual_seed(0)
image = np.random.default_rng(0).random((size, size), dtype=np.float32)
if kind == "biounet":
    model = UNet(UNetConfig(base_channels=base)).eval()
    grid = plan_tiles(model.config, image.shape)
    start = time.perf_counter()
    predict_tiled(model, image)
    seconds = time.perf_counter() - start
    flops = len(grid) * count_flops(model.config, grid.tile_shape)
    extra = {"tile_shape": list(grid.tile_shape), "n_tiles": len(grid)}
else:
    from monai.inferers import sliding_window_inference
    model = UNet(UNetConfig(base_channels=base, padding="same")).eval()
    tensor = torch.from_numpy(image)[None, None]
    start = time.perf_counter()
    with torch.inference_mode():
        result = sliding_window_inference(tensor, roi_size=(512, 512), sw_batch_size=1,
                                          predictor=model, overlap=0.25)
        torch.softmax(result, dim=1)
    seconds = time.perf_counter() - start
    flops, extra = float("nan"), {"roi": 512, "overlap": 0.25}
# VmHWM is this process image's own high-water mark; ru_maxrss also counts the RSS
# inherited from the forking parent, which is large after earlier benchmarks.
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss": peak, "flops": flops, **extra}))
""" % SIZE


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def run_case(kind: str, base: int) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", CASE, kind, str(base)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def run() -> list[dict]:
    from biounet import UNetConfig
    from biounet.geometry import count_flops

    gflops_before = matmul_gflops()
    ours = run_case("biounet", 64)
    narrow = run_case("biounet", 16)
    try:
        monai = run_case("monai", 64)
    except subprocess.CalledProcessError as error:  # monai is an optional bench extra
        print(f"monai case failed: {error.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        monai = None
    gflops = (gflops_before + matmul_gflops()) / 2
    pixels = SIZE * SIZE
    whole_flops_per_pixel = count_flops(UNetConfig(), (SIZE + 188, SIZE + 188)) / pixels
    limit = gflops * 1e9 / whole_flops_per_pixel / 1e6
    ours_rate = pixels / ours["seconds"] / 1e6
    rows = [
        {"benchmark": "matmul fp32 2048", "metric": "GFLOP/s", "value": gflops, "unit": "GFLOP/s"},
        {"benchmark": "limit (matmul / whole-pass FLOPs)", "metric": "throughput",
         "value": limit, "unit": "Mpx/s"},
        {"benchmark": f"predict_tiled 2048^2 default net, tiles {ours['tile_shape']} x{ours['n_tiles']}",
         "metric": "throughput", "value": ours_rate, "unit": "Mpx/s"},
        {"benchmark": "predict_tiled default net", "metric": "fraction of limit",
         "value": ours_rate / limit, "unit": "", "target": ">= 0.75"},
        {"benchmark": "predict_tiled default net", "metric": "peak RSS",
         "value": ours["peak_rss"] / 1e9, "unit": "GB", "target": "<= 3"},
        {"benchmark": "predict_tiled default net", "metric": "FLOPs per output pixel",
         "value": ours["flops"] / pixels / 1e6, "unit": "MFLOP/px"},
        {"benchmark": "predict_tiled default net", "metric": "achieved conv GFLOP/s",
         "value": ours["flops"] / ours["seconds"] / 1e9, "unit": "GFLOP/s"},
        {"benchmark": f"predict_tiled 2048^2 base 16, tiles {narrow['tile_shape']} x{narrow['n_tiles']}",
         "metric": "throughput", "value": pixels / narrow["seconds"] / 1e6, "unit": "Mpx/s"},
        {"benchmark": "predict_tiled base 16", "metric": "peak RSS",
         "value": narrow["peak_rss"] / 1e9, "unit": "GB"},
    ]
    if monai is not None:
        monai_rate = pixels / monai["seconds"] / 1e6
        rows += [
            {"benchmark": "MONAI sliding_window_inference roi 512 overlap 0.25, same-padded net",
             "metric": "throughput", "value": monai_rate, "unit": "Mpx/s"},
            {"benchmark": "MONAI sliding_window_inference", "metric": "peak RSS",
             "value": monai["peak_rss"] / 1e9, "unit": "GB"},
            {"benchmark": "biounet / MONAI", "metric": "throughput ratio",
             "value": ours_rate / monai_rate, "unit": "x", "target": ">= 1.3"},
        ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
