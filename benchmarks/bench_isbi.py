"""Benchmark the ISBI 2012 pixel, Rand and warping errors over their thresholds on one slice,
and `close_boundaries` (the watershed lines `reproduce isbi2012` also scores) on it.

The ground truth is ISBI 2012 train/labels/20.png (a synthetic Voronoi membrane map if the
data is absent); the probability map is that ground truth blurred plus seeded noise.
Run: python benchmarks/bench_isbi.py
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from biounet.boundaries import close_boundaries
from biounet.metrics.isbi import pixel_error, rand_error, warping_error

DATA_ROOT = Path(
    os.environ.get("BIOUNET_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
)
LABELS = DATA_ROOT / "isbi2012" / "train" / "labels" / "20.png"
N_REPEATS = 5


def ground_truth_slice() -> tuple[np.ndarray, str]:
    """Return a (512, 512) uint8 membrane map (0 = membrane, 255 = interior) and its name."""
    if LABELS.is_file():
        from PIL import Image

        return np.asarray(Image.open(LABELS)), "isbi2012 train/labels/20.png"
    rng = np.random.default_rng(2012)
    seeds = np.zeros((512, 512), dtype=np.int32)
    seeds.flat[rng.choice(seeds.size, 300, replace=False)] = np.arange(1, 301)
    nearest = ndimage.distance_transform_edt(
        seeds == 0, return_distances=False, return_indices=True
    )
    labels = seeds[tuple(nearest)]
    is_membrane = ndimage.morphological_gradient(labels, size=3) > 0
    return np.where(is_membrane, 0, 255).astype(np.uint8), "synthetic Voronoi 512x512"


def blurred_probabilities(truth: np.ndarray, rng: np.random.Generator | int | None) -> np.ndarray:
    """Return a float32 map in [0, 1]: the ground truth blurred (sigma 2 px) plus noise."""
    rng = np.random.default_rng(rng)
    blurred = ndimage.gaussian_filter((truth > 0).astype(np.float32), 2.0)
    return np.clip(blurred + rng.normal(0.0, 0.15, truth.shape), 0, 1).astype(np.float32)


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
    truth, source = ground_truth_slice()
    probabilities = blurred_probabilities(truth, rng=2012)
    metrics = {"pixel_error": pixel_error, "rand_error": rand_error, "warping_error": warping_error}
    for metric in metrics.values():  # warm-up: imports, allocator
        metric(truth, probabilities)
    name = f"ISBI 2012 metrics, {source}, blurred + noise"
    rows = []
    for metric_name, metric in metrics.items():
        median, _ = _median_seconds(lambda metric=metric: metric(truth, probabilities), N_REPEATS)
        rows.append(
            {
                "benchmark": name,
                "metric": f"{metric_name} median time (all thresholds)",
                "value": median * 1e3,
                "unit": "ms",
                "target": "-",
            }
        )

    def all_three() -> None:
        for metric in metrics.values():
            metric(truth, probabilities)

    median, median_cpu = _median_seconds(all_three, N_REPEATS)
    for metric_name, value in (("median time", median), ("median CPU time", median_cpu)):
        rows.append(
            {
                "benchmark": name,
                "metric": f"all three errors, {metric_name}",
                "value": value * 1e3,
                "unit": "ms",
                "target": "<= 1000 ms",
            }
        )
    close_boundaries(probabilities)
    median, _ = _median_seconds(lambda: close_boundaries(probabilities), N_REPEATS)
    rows.append(
        {
            "benchmark": name,
            "metric": "close_boundaries median time",
            "value": median * 1e3,
            "unit": "ms",
            "target": "-",
        }
    )
    for metric_name, metric in metrics.items():
        rows.append(
            {
                "benchmark": name,
                "metric": f"{metric_name} value",
                "value": metric(truth, probabilities).value,
                "unit": "-",
                "target": "-",
            }
        )
    return rows


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']:60} {row['metric']:45} {row['value']:12.4g} {row['unit']:3} "
            f"target {row['target']}"
        )
