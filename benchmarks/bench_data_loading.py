"""Benchmark reading the annotated data sets (layouts) and intensity normalisation.

The out-of-core rows time `predict_blockwise`'s whole-image percentile statistics
(radix selection, one pass over the zarr per 16 key bits) on an 8192^2 zarr in
1024^2 chunks, beside `np.percentile` of the same array held in memory.

Run: python benchmarks/bench_data_loading.py   (real data from BIOUNET_DATA, default ../shared/data)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from biounet.data.layouts import open_dataset
from biounet.data.normalize import normalize_percentile, normalize_zscore, to_float_image

_DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DATA_ROOT = Path(os.environ.get("BIOUNET_DATA", _DEFAULT_ROOT))
N_REPEATS = 7


def _median_seconds(function, n_repeats: int = N_REPEATS) -> float:
    times = []
    for _ in range(n_repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _read_all(dataset) -> tuple[float, int]:
    start = time.perf_counter()
    n_instances = sum(int(sample.labels.max()) for sample in dataset)
    return time.perf_counter() - start, n_instances


def _normalisation_rows() -> list[dict]:
    rng = np.random.default_rng(2015)
    rows = []
    for shape in ((512, 512), (1040, 1388)):
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        name = f"normalise uint8 {shape[0]}x{shape[1]}"
        percentile = _median_seconds(lambda image=image: normalize_percentile(image))
        zscore = _median_seconds(lambda image=image: normalize_zscore(image))
        rows += [
            {"benchmark": name, "metric": "normalize_percentile median", "value": percentile * 1e3,
             "unit": "ms", "target": "<= 50 ms"},
            {"benchmark": name, "metric": "normalize_zscore median", "value": zscore * 1e3,
             "unit": "ms", "target": "<= 20 ms"},
        ]
    rgba = rng.integers(0, 256, size=(1040, 1388, 4), dtype=np.uint8)
    grey = _median_seconds(lambda: to_float_image(rgba))
    rows.append({"benchmark": "to_float_image RGBA 1040x1388", "metric": "grey median",
                 "value": grey * 1e3, "unit": "ms", "target": "<= 30 ms"})
    return rows


def _out_of_core_rows(size: int = 8192) -> list[dict]:
    import zarr

    from biounet.inference.blockwise_executors import _make_executor
    from biounet.inference.blockwise_normalization import _make_normalizer
    from biounet.inference.blockwise_source import _open_source

    rng = np.random.default_rng(2015)
    rows = []
    for dtype, passes in (("uint16", 1), ("float32", 2)):
        image = (rng.standard_normal((size, size), dtype=np.float32) * 500 + 3000).astype(dtype)
        with tempfile.TemporaryDirectory(prefix="bench_statistics_") as folder:
            array = zarr.create_array(
                store=folder, shape=image.shape, chunks=(1024, 1024), dtype=dtype
            )
            array[...] = image
            executor = _make_executor(None)
            statistics = _median_seconds(
                lambda f=folder, e=executor: _make_normalizer(
                    "percentile", _open_source(f), (size, size), e
                ),
                n_repeats=3,
            )
        in_memory = _median_seconds(
            lambda i=image: np.percentile(i.astype(np.float32), [1.0, 99.8]), n_repeats=3
        )
        name = f"blockwise percentile {dtype} {size}^2 zarr ({passes} pass{'es' * (passes > 1)})"
        rows += [
            {"benchmark": name, "metric": "statistics, median", "value": statistics,
             "unit": "s", "target": "-"},
            {"benchmark": name, "metric": "np.percentile in memory, median", "value": in_memory,
             "unit": "s", "target": "-"},
        ]
    return rows


def _dataset_rows() -> list[dict]:
    if not DATA_ROOT.is_dir():
        return []
    rows = []
    isbi = open_dataset(DATA_ROOT / "isbi2012" / "train")
    _read_all(isbi[:2])  # warm-up: scipy import, file cache
    seconds, n_instances = _read_all(isbi)
    rows += [
        {"benchmark": "isbi2012 train (30 pairs)", "metric": "read + components per sample",
         "value": seconds / len(isbi) * 1e3, "unit": "ms", "target": "<= 30 ms"},
        {"benchmark": "isbi2012 train (30 pairs)", "metric": "instances found", "value":
         n_instances, "unit": "-", "target": "-"},
    ]
    start = time.perf_counter()
    dsb = open_dataset(DATA_ROOT / "dsb2018")
    opening = time.perf_counter() - start
    seconds, n_instances = _read_all(dsb)
    rows += [
        {"benchmark": "dsb2018 (166 images)", "metric": "open (discovery)", "value": opening * 1e3,
         "unit": "ms", "target": "<= 100 ms"},
        {"benchmark": "dsb2018 (166 images)", "metric": "read all + build instances",
         "value": seconds, "unit": "s", "target": "<= 30 s"},
        {"benchmark": "dsb2018 (166 images)", "metric": "instances found", "value": n_instances,
         "unit": "-", "target": "7581"},
    ]
    return rows


def run() -> list[dict]:
    return _normalisation_rows() + _out_of_core_rows() + _dataset_rows()


if __name__ == "__main__":
    for row in run():
        print(f"{row['benchmark']:32} {row['metric']:32} {row['value']:10.4g} {row['unit']:3} "
              f"target {row['target']}")
