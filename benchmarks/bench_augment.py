"""Time one training-sample augmentation (image + labels + weights, 512x512) per backend.

Target: <= 15 ms per 512x512 sample on 2 cores (elasticdeform's coarse-grid deformation
takes ~74 ms, torch grid_sample on an upsampled grid ~9 ms). Run:
``python benchmarks/bench_augment.py``. Uses torch's thread setting as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from biounet.augment import torch_backend
from biounet.augment.elastic import sample_displacement, upsample_displacement
from biounet.augment.geometric import sample_rigid_transform, source_coordinates
from biounet.augment.intensity import apply_intensity_change, sample_intensity_change
from biounet.augment.pipeline import COORDINATE_DTYPES, AugmentConfig, augment

SHAPE = (512, 512)
TARGET = "<= 15 ms"


def _median_ms(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    function()  # warm-up: imports, allocator, torch kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)), 1e3 * float(np.min(times))


def _sample(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.random(shape, dtype=np.float32)
    labels = rng.integers(0, 200, shape).astype(np.int32)
    weights = (1 + 9 * rng.random(shape)).astype(np.float32)
    return image, labels, weights


def _row(name: str, metric: str, value: float, unit: str = "ms", target: str = "") -> dict:
    return {"benchmark": name, "metric": metric, "value": value, "unit": unit, "target": target}


def run() -> list[dict]:
    image, labels, weights = _sample(SHAPE)
    seeds = iter(range(10**6))
    rows = [_row("augment", "torch_threads", float(torch.get_num_threads()), unit="threads")]
    for backend, repeats in (("torch", 60), ("scipy", 10)):
        median, best = _median_ms(
            lambda backend=backend: augment(
                image, labels, weights, rng=next(seeds), backend=backend
            ),
            repeats,
        )
        target = TARGET if backend == "torch" else "reference path, no target"
        rows.append(_row(f"augment_512x512_{backend}", "median_time", median, target=target))
        rows.append(_row(f"augment_512x512_{backend}", "min_time", best, target=target))

    # Stages of the torch path (each warp builds its own grid here), to see where time goes.
    config = AugmentConfig()
    displacement = sample_displacement(SHAPE, rng=0)
    transform = sample_rigid_transform(2, rng=0)
    dtype = COORDINATE_DTYPES["torch"]
    field = upsample_displacement(displacement, SHAPE, dtype=dtype)
    coordinates = source_coordinates(
        SHAPE, transform=transform, displacement_field=field, dtype=dtype
    )
    change = sample_intensity_change(
        brightness_range=config.brightness_range,
        contrast_range=config.contrast_range,
        gamma_range=config.gamma_range,
        rng=0,
    )
    stages = {
        "upsample_displacement": lambda: upsample_displacement(displacement, SHAPE, dtype=dtype),
        "source_coordinates": lambda: source_coordinates(
            SHAPE, transform=transform, displacement_field=field, dtype=dtype
        ),
        "coordinates_to_grid": lambda: torch_backend.coordinates_to_grid(coordinates, SHAPE),
        "torch_warp_image_cubic": lambda: torch_backend.warp_arrays(
            [image], coordinates, orders=[3]
        ),
        "torch_warp_labels_nearest": lambda: torch_backend.warp_arrays(
            [labels], coordinates, orders=[0]
        ),
        "torch_warp_weights_linear": lambda: torch_backend.warp_arrays(
            [weights], coordinates, orders=[1]
        ),
        "intensity_change": lambda: apply_intensity_change(image, change),
    }
    for stage, function in stages.items():
        rows.append(_row(f"augment_stage_{stage}", "median_time", _median_ms(function, 30)[0]))

    volume = _sample((64, 128, 128))
    config_3d = AugmentConfig(ndim=3)
    for backend in ("torch", "scipy"):
        median, _ = _median_ms(
            lambda backend=backend: augment(
                *volume, config=config_3d, rng=next(seeds), backend=backend
            ),
            5,
        )
        rows.append(_row(f"augment_64x128x128_{backend}", "median_time", median))
    return rows


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']:<40} {row['metric']:<14} {row['value']:9.2f} {row['unit']:<8}"
            f"{row['target']}"
        )
