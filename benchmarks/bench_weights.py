"""Benchmark the eq. 2 weight map against one full distance transform per cell.

Run: python benchmarks/bench_weights.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from biounet.weights import weight_map

SHAPE = (512, 512)
N_CELLS = 300
N_REPEATS = 9


def touching_cells(
    shape: tuple[int, ...], n_cells: int, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Return a Voronoi tessellation of `n_cells` random seeds with 1-2 px background gaps."""
    rng = np.random.default_rng(rng)
    seeds = np.zeros(shape, dtype=np.int32)
    positions = rng.choice(seeds.size, size=n_cells, replace=False)
    seeds.flat[positions] = np.arange(1, n_cells + 1)
    nearest_seed = ndimage.distance_transform_edt(
        seeds == 0, return_distances=False, return_indices=True
    )
    labels = seeds[tuple(nearest_seed)]
    # one side of each boundary becomes background: 1 px straight, up to 2 px diagonal
    is_gap = np.zeros(shape, dtype=bool)
    for axis in range(len(shape)):
        lower = [slice(None)] * len(shape)
        upper = [slice(None)] * len(shape)
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        is_gap[tuple(upper)] |= labels[tuple(upper)] > labels[tuple(lower)]
    labels[is_gap] = 0
    return labels


def scattered_discs(
    shape: tuple[int, int], n_cells: int, radius: float, rng: np.random.Generator | int | None
) -> np.ndarray:
    """Return `n_cells` discs at random places on background (later discs overwrite)."""
    rng = np.random.default_rng(rng)
    y, x = np.indices(shape)
    labels = np.zeros(shape, dtype=np.int32)
    for cell in range(1, n_cells + 1):
        centre_y, centre_x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        labels[(y - centre_y) ** 2 + (x - centre_x) ** 2 <= radius**2] = cell
    return labels


def naive_weight_map(labels: np.ndarray, *, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Return eq. 2 from one whole-image distance transform per cell (as in the tests)."""
    cells = np.unique(labels)
    cells = cells[cells != 0]
    distances = np.sort(np.stack([ndimage.distance_transform_edt(labels != c) for c in cells]), 0)
    border = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
    border[labels != 0] = 0
    n_foreground = np.count_nonzero(labels)
    background_weight = labels.size / (2 * (labels.size - n_foreground))
    foreground_weight = labels.size / (2 * n_foreground)
    return np.where(labels != 0, foreground_weight, background_weight) + border


def _median_seconds(function, n_repeats: int) -> tuple[float, float]:
    """Return the median wall time and the median CPU time of this process (less noisy)."""
    wall, cpu = [], []
    for _ in range(n_repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall)), float(np.median(cpu))


def run() -> list[dict]:
    labels = touching_cells(SHAPE, N_CELLS, rng=2015)
    weight_map(labels)  # warm-up: imports, allocator
    median, median_cpu = _median_seconds(lambda: weight_map(labels), N_REPEATS)
    start = time.perf_counter()
    reference = naive_weight_map(labels)
    naive = time.perf_counter() - start
    error = float(np.abs(weight_map(labels) - reference).max())

    discs = scattered_discs(SHAPE, 100, 8.0, rng=2015)  # wide gaps: the full cut-off pass
    median_discs, _ = _median_seconds(lambda: weight_map(discs), 3)
    volume = touching_cells((64, 128, 128), 100, rng=2015)
    median_3d, _ = _median_seconds(lambda: weight_map(volume), 3)

    name = f"weight_map {SHAPE[0]}x{SHAPE[1]}, {N_CELLS} touching cells"
    return [
        {
            "benchmark": name,
            "metric": "median time",
            "value": median * 1e3,
            "unit": "ms",
            "target": "<= 100 ms",
        },
        {
            "benchmark": name,
            "metric": "median CPU time",
            "value": median_cpu * 1e3,
            "unit": "ms",
            "target": "<= 100 ms",
        },
        {
            "benchmark": name,
            "metric": "naive reference time",
            "value": naive * 1e3,
            "unit": "ms",
            "target": "-",
        },
        {
            "benchmark": name,
            "metric": "speed-up over naive (median)",
            "value": naive / median,
            "unit": "x",
            "target": ">= 30 x",
        },
        {
            "benchmark": name,
            "metric": "max abs difference to naive",
            "value": error,
            "unit": "-",
            "target": "<= 1e-5",
        },
        {
            "benchmark": f"weight_map {SHAPE[0]}x{SHAPE[1]}, 100 scattered discs",
            "metric": "median time",
            "value": median_discs * 1e3,
            "unit": "ms",
            "target": "-",
        },
        {
            "benchmark": "weight_map 64x128x128, 100 touching cells",
            "metric": "median time",
            "value": median_3d * 1e3,
            "unit": "ms",
            "target": "-",
        },
    ]


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']:45} {row['metric']:30} {row['value']:12.4g} {row['unit']:3} "
            f"target {row['target']}"
        )
