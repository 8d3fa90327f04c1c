"""Benchmark probabilities -> labels: speed on synthetic maps, DSB 2018 score on real masks.

The real-data rows feed the reference masks of the project's 40 DSB 2018 evaluation images
to `probabilities_to_labels` as a perfect foreground map, once as is (touching nuclei
merged) and once with a 1-px border cut between touching nuclei (what a U-Net trained with
the border weights of Ronneberger et al. 2015 should predict), and score the result.

Run: python benchmarks/bench_postprocess.py   (real data from BIOUNET_DATA, default ../shared/data)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.segmentation import find_boundaries

from biounet.metrics.matching import dsb_score
from biounet.postprocess import PostprocessConfig, probabilities_to_labels

DATA_ROOT = Path(
    os.environ.get("BIOUNET_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
)
SHAPE_2D = (1040, 1388)
SHAPE_3D = (64, 256, 256)
N_EVALUATION_IMAGES = 40  # the last 40 ids of dsb2018/ids.txt (README of the data set)
CONFIGS = {"watershed": PostprocessConfig(), "components": PostprocessConfig(watershed=False)}


def random_balls(shape, n_objects, radius_range, rng) -> np.ndarray:
    """Paint `n_objects` balls of random radius at random places; later ones overwrite."""
    rng = np.random.default_rng(rng)
    labels = np.zeros(shape, dtype=np.int32)
    grid = np.indices(shape, sparse=True)
    for label in range(1, n_objects + 1):
        radius = rng.uniform(*radius_range)
        centre = [rng.integers(0, size) for size in shape]
        squared = sum((axis - c) ** 2 for axis, c in zip(grid, centre))
        labels[squared <= radius**2] = label
    return labels


def soft_foreground(labels: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """A smooth probability map whose 0.5 level set is close to the objects' outline."""
    return ndimage.gaussian_filter((labels > 0).astype(np.float32), sigma).clip(0, 1)


def _median_seconds(function, n_repeats: int) -> float:
    times = []
    for _ in range(n_repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _load_dsb_labels(folder: Path) -> np.ndarray:
    labels = None
    for label, path in enumerate(sorted(folder.glob("*.png")), start=1):
        mask = np.asarray(Image.open(path)) > 0
        if labels is None:
            labels = np.zeros(mask.shape, dtype=np.int32)
        labels[mask] = label  # overlapping masks (3 images, 1-2 px): the later mask wins
    return labels


def _real_data_rows() -> list[tuple]:
    root = DATA_ROOT / "dsb2018"
    if not root.is_dir():
        return [("dsb2018 (absent)", "skipped: no data", float("nan"), "-", "-")]
    ids = [line.split("/")[-1] for line in (root / "ids.txt").read_text().split()]
    references = [_load_dsb_labels(root / "labels" / name) for name in ids[-N_EVALUATION_IMAGES:]]
    rows = []
    for mode in ("merged masks", "1-px borders"):
        for config_name, config in CONFIGS.items():
            scores, start = [], time.perf_counter()
            for reference in references:
                foreground = (reference > 0).astype(np.float32)
                if mode == "1-px borders":
                    is_contact = find_boundaries(reference, mode="inner") & find_boundaries(
                        reference, mode="outer"
                    )
                    foreground[is_contact & (reference > 0)] = 0.0
                labels = probabilities_to_labels(foreground, config=config)
                scores.append(dsb_score(reference, labels))
            seconds = (time.perf_counter() - start) / len(references)
            benchmark = f"dsb2018 eval {len(references)} images, {mode}"
            target = ">= 0.8" if config_name == "watershed" else "-"
            rows.append((benchmark, f"DSB score, {config_name}", float(np.mean(scores)), "-", target))
            rows.append((benchmark, f"time per image incl. scoring, {config_name}",
                         seconds * 1e3, "ms", "-"))
    return rows


def run() -> list[dict]:
    reference = random_balls(SHAPE_2D, 250, (6, 16), rng=2015)
    foreground = soft_foreground(reference)
    probabilities_to_labels(foreground)  # warm-up
    name = f"{SHAPE_2D[0]}x{SHAPE_2D[1]}, 250 random discs"
    rows = []
    for config_name, config in CONFIGS.items():
        seconds = _median_seconds(lambda c=config: probabilities_to_labels(foreground, config=c), 3)
        rows.append((name, f"time, {config_name}", seconds * 1e3, "ms",
                     "<= 500 ms" if config_name == "watershed" else "<= 100 ms"))
        labels = probabilities_to_labels(foreground, config=config)
        rows.append((name, f"DSB score, {config_name}", dsb_score(reference, labels), "-", "-"))
    volume = random_balls(SHAPE_3D, 300, (4, 9), rng=2016)
    volume_foreground = soft_foreground(volume)
    seconds = _median_seconds(lambda: probabilities_to_labels(volume_foreground), 1)
    name_3d = "x".join(map(str, SHAPE_3D)) + ", 300 random balls"
    rows.append((name_3d, "time, watershed", seconds * 1e3, "ms", "<= 5000 ms"))
    rows += _real_data_rows()
    keys = ("benchmark", "metric", "value", "unit", "target")
    return [dict(zip(keys, row)) for row in rows]


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']:42} {row['metric']:42} {row['value']:10.4g} {row['unit']:3} "
            f"target {row['target']}"
        )
