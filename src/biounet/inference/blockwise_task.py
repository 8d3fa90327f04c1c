"""One task of `predict_blockwise`: predict an output block from its tiles and write it.

The network travels to the workers as its config and CPU weights (`_ModelSpec`) and
is rebuilt once per process. A block reads the union of its tiles' input windows in
one go, mirrored at the source's borders by `read_window`, predicts the tiles in
batches and writes the block to the target once it is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from biounet.config import UNetConfig
from biounet.inference.blockwise_normalization import _Affine
from biounet.inference.blockwise_source import _SourceReference
from biounet.inference.predict import (
    _finite_float32,
    _with_channel_axis,
    as_network_input,
    inference_mode,
    predict_batch,
)
from biounet.inference.tiling import Tile, TileGrid, read_window
from biounet.model.unet import UNet


@dataclasses.dataclass(frozen=True)
class _ModelSpec:
    """A network as config + CPU weights: pickled once per worker, rebuilt once per process."""

    config: dict
    state: dict[str, torch.Tensor]
    digest: str

    @classmethod
    def from_model(cls, model: nn.Module) -> _ModelSpec:
        config = model.config.to_dict()  # type: ignore[union-attr]
        state = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
        hasher = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for name, value in state.items():
            hasher.update(name.encode())
            hasher.update(value.contiguous().reshape(-1).view(torch.uint8).numpy())
        return cls(config=config, state=state, digest=hasher.hexdigest())


_MODEL_CACHE: dict[str, nn.Module] = {}  # one rebuilt network per process, by digest
_MODEL_LOCK = threading.Lock()


def _cached_model(spec: _ModelSpec) -> nn.Module:
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(spec.digest)
        if model is None:
            # Initialisation draws from torch's global RNG: leave the caller's stream as it was.
            with torch.random.fork_rng(devices=[]):
                model = UNet(UNetConfig.from_dict(spec.config))
            model.load_state_dict(spec.state)
            layout = torch.channels_last if model.config.ndim == 2 else torch.channels_last_3d
            # Fixed once here: toggling layout or mode per task would race between threads.
            model.eval().to(memory_format=layout)
            _MODEL_CACHE.clear()
            _MODEL_CACHE[spec.digest] = model
    return model


@dataclasses.dataclass(frozen=True)
class _BlockJob:
    """Everything a block task needs; shared by all tasks of one run."""

    model: _ModelSpec
    source: _SourceReference
    target: Any
    grid: TileGrid
    block_shape: tuple[int, ...]
    batch_size: int
    normalizer: Callable[[np.ndarray], np.ndarray] | None


def _predict_block(job: _BlockJob, index: tuple[int, ...], tiles: list[Tile]) -> tuple:
    """Predict one output block from its tiles and write it; return its index."""
    model = _cached_model(job.model)
    config: UNetConfig = model.config  # type: ignore[assignment]
    tile_shape = job.grid.tile_shape
    start = tuple(i * size for i, size in zip(index, job.block_shape))
    stop = tuple(
        min(s + size, n) for s, size, n in zip(start, job.block_shape, job.grid.image_shape)
    )
    # One read of the union of the tiles' input windows instead of one per tile.
    window_start = tuple(min(axis) for axis in zip(*(tile.input_start for tile in tiles)))
    window_stop = tuple(
        max(axis) + size
        for axis, size in zip(zip(*(tile.input_start for tile in tiles)), tile_shape)
    )
    raw = read_window(
        job.source.open(), window_start, [b - a for a, b in zip(window_start, window_stop)]
    )
    if isinstance(job.normalizer, _Affine):
        # whole-image statistics apply to the raw values, in float64 for wide sources
        channels = _with_channel_axis(raw, config, name="source")
        window = _finite_float32(job.normalizer(channels), name="normalised source")
    else:
        window = _normalized(as_network_input(raw, config, name="source"), job.normalizer)
    output = np.empty((config.n_classes, *(b - a for a, b in zip(start, stop))), np.float32)
    with inference_mode(model, channels_last=False):  # the cached model is channels-last
        for first in range(0, len(tiles), job.batch_size):
            batch = tiles[first : first + job.batch_size]
            starts = [[a - b for a, b in zip(t.input_start, window_start)] for t in batch]
            windows = np.stack([read_window(window, s, tile_shape) for s in starts])
            probabilities = predict_batch(model, windows, channels_last=True)
            for tile, tile_probabilities in zip(batch, probabilities):
                _paste(output, start, stop, tile, tile_probabilities)
    job.target[(slice(None), *(slice(a, b) for a, b in zip(start, stop)))] = output
    return index


def _paste(output: np.ndarray, start, stop, tile: Tile, probabilities: np.ndarray) -> None:
    """Copy the part of a tile's output that falls inside the block [start, stop)."""
    into, out_of = [slice(None)], [slice(None)]
    for block_start, block_stop, tile_start, tile_stop, crop in zip(
        start, stop, tile.output_start, tile.output_stop, tile.crop_start
    ):
        low, high = max(tile_start, block_start), min(tile_stop, block_stop)
        into.append(slice(low - block_start, high - block_start))
        out_of.append(slice(low - tile_start + crop, high - tile_start + crop))
    output[tuple(into)] = probabilities[tuple(out_of)]


def _normalized(window: np.ndarray, normalizer) -> np.ndarray:
    if normalizer is None:
        return window
    result = np.asarray(normalizer(window), dtype=np.float32)
    if result.shape != window.shape:
        raise ValueError(
            f"normalization must return its input's shape {window.shape}, got {result.shape}"
        )
    return result
