"""Benchmark the instance metrics on a DSB-sized image and a 3-D volume.

Run: python benchmarks/bench_metrics.py
"""

from __future__ import annotations

import time

import numpy as np

from biounet.metrics.ctc import seg_score
from biounet.metrics.matching import dsb_score, match_instances
from biounet.metrics.overlap import contingency_table
from biounet.metrics.semantic import variation_of_information

SHAPE_2D = (1040, 1388)  # the largest DSB 2018 image
N_OBJECTS_2D = 250  # about the most nuclei of one DSB 2018 image (258)
SHAPE_3D = (64, 256, 256)
N_OBJECTS_3D = 400
N_REPEATS = 5


def random_balls(shape, n_objects, radius_range, rng) -> np.ndarray:
    """Paint `n_objects` balls of random radius at random places; later ones overwrite."""
    rng = np.random.default_rng(rng)
    labels = np.zeros(shape, dtype=np.int32)
    for label in range(1, n_objects + 1):
        radius = rng.uniform(*radius_range)
        centre = [rng.integers(0, size) for size in shape]
        box = tuple(
            slice(max(int(c - radius), 0), min(int(c + radius) + 1, size))
            for c, size in zip(centre, shape)
        )
        grid = np.indices([s.stop - s.start for s in box])
        squared = sum((axis + s.start - c) ** 2 for axis, s, c in zip(grid, box, centre))
        labels[box][squared <= radius**2] = label
    return labels


def imperfect_prediction(reference: np.ndarray, rng) -> np.ndarray:
    """Shift by 1 px, drop 5 % of the objects, merge 5 % into a neighbour id, add 20 blobs."""
    rng = np.random.default_rng(rng)
    prediction = np.roll(reference, 1, axis=-1)
    n_objects = int(reference.max())
    mapping = np.arange(n_objects + 1)
    dropped = rng.choice(np.arange(1, n_objects + 1), size=n_objects // 20, replace=False)
    mapping[dropped] = 0
    merged = rng.choice(np.arange(2, n_objects + 1), size=n_objects // 20, replace=False)
    mapping[merged] = merged - 1
    prediction = mapping[prediction]
    spurious = random_balls(reference.shape, 20, (3, 6), rng)
    return np.where((prediction == 0) & (spurious > 0), spurious + n_objects, prediction)


def naive_contingency(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The common approach: np.unique over the stacked (reference, prediction) pairs."""
    pairs = np.stack([reference.ravel(), prediction.ravel()])
    _, counts = np.unique(pairs, axis=1, return_counts=True)
    return counts


def _median_seconds(function, n_repeats: int = N_REPEATS) -> float:
    function()  # warm-up
    times = []
    for _ in range(n_repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run() -> list[dict]:
    reference = random_balls(SHAPE_2D, N_OBJECTS_2D, (6, 16), rng=2015)
    prediction = imperfect_prediction(reference, rng=2016)
    name = f"{SHAPE_2D[0]}x{SHAPE_2D[1]}, {N_OBJECTS_2D} objects"
    table_time = _median_seconds(lambda: contingency_table(reference, prediction))
    naive_time = _median_seconds(lambda: naive_contingency(reference, prediction), 1)
    table, _, _ = contingency_table(reference, prediction)
    assert table.nnz == naive_contingency(reference, prediction).size
    rows = [
        (name, "contingency_table", table_time * 1e3, "ms", "<= 20 ms"),
        (name, "contingency_table speed-up over np.unique(axis=1)",
         naive_time / table_time, "x", ">= 20 x"),
        (name, "match_instances at 0.5, 0.75, 0.9", _median_seconds(
            lambda: match_instances(reference, prediction, thresholds=(0.5, 0.75, 0.9))
        ) * 1e3, "ms", "<= 30 ms"),
        (name, "dsb_score (10 thresholds)",
         _median_seconds(lambda: dsb_score(reference, prediction)) * 1e3, "ms", "<= 30 ms"),
        (name, "seg_score",
         _median_seconds(lambda: seg_score(reference, prediction)) * 1e3, "ms", "<= 30 ms"),
        (name, "variation_of_information", _median_seconds(
            lambda: variation_of_information(reference, prediction)
        ) * 1e3, "ms", "<= 30 ms"),
    ]
    volume = random_balls(SHAPE_3D, N_OBJECTS_3D, (4, 10), rng=2017)
    volume_prediction = imperfect_prediction(volume, rng=2018)
    name_3d = "x".join(map(str, SHAPE_3D)) + f", {N_OBJECTS_3D} objects"
    rows += [
        (name_3d, "match_instances at 0.5", _median_seconds(
            lambda: match_instances(volume, volume_prediction), 3
        ) * 1e3, "ms", "<= 100 ms"),
        (name_3d, "seg_score", _median_seconds(
            lambda: seg_score(volume, volume_prediction), 3
        ) * 1e3, "ms", "<= 100 ms"),
    ]
    keys = ("benchmark", "metric", "value", "unit", "target")
    return [dict(zip(keys, row)) for row in rows]


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']:30} {row['metric']:52} {row['value']:10.4g} {row['unit']:3} "
            f"target {row['target']}"
        )
