"""Time `generate_sample` (image + instance labels) at 256x256, 512x512 and 2048x2048.

Targets on 2 cores: tens of ms at 256x256 and well under 3 s at 2048x2048 (the large
image of `biounet demo`). Run: ``python benchmarks/bench_synthetic.py``.
"""

from __future__ import annotations

import time

import numpy as np

from biounet.datasets.synthetic import generate_sample

CASES = (
    ((256, 256), 20, "<= 50 ms"),
    ((512, 512), 10, "<= 200 ms"),
    ((2048, 2048), 3, "< 3000 ms"),
)


def _row(name: str, metric: str, value: float, unit: str, target: str = "") -> dict:
    return {"benchmark": name, "metric": metric, "value": value, "unit": unit, "target": target}


def run() -> list[dict]:
    rows = []
    for shape, repeats, target in CASES:
        generate_sample(shape, rng=0)  # warm-up: imports, allocator
        times = []
        n_cells = []
        for seed in range(1, repeats + 1):
            start = time.perf_counter()
            _, labels = generate_sample(shape, rng=seed)
            times.append(time.perf_counter() - start)
            n_cells.append(int(labels.max()))
        name = f"synthetic_{shape[0]}x{shape[1]}"
        rows.append(_row(name, "median_time", 1e3 * float(np.median(times)), "ms", target))
        rows.append(_row(name, "min_time", 1e3 * float(np.min(times)), "ms", target))
        rows.append(_row(name, "median_cells", float(np.median(n_cells)), "cells"))
    return rows


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']:<24} {row['metric']:<13} {row['value']:>10.1f} {row['unit']:<6} "
            f"{row['target']}"
        )
