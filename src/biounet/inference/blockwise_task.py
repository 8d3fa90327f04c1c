"""One task of `predict_blockwise`: predict an output block from its tiles and write it.

Every network travels to the workers as its config and CPU weights (`_ModelSpec`) and
is rebuilt once per process. A block reads the union of the input windows of all its
passes' tiles in one go, mirrored at the source's borders by `read_window`; each pass
(a member on one flip/rotation of the image, `_Pass`) transforms its part, predicts
its tiles in batches and maps its output back; the block averages the passes and is
written to the target once it is complete.
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
from biounet.inference.tta import Symmetry
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


_MODEL_CACHE: dict[str, nn.Module] = {}  # rebuilt networks per process, by digest
_MODEL_LOCK = threading.Lock()


def _cached_model(spec: _ModelSpec, *, capacity: int = 1) -> nn.Module:
    """The network of `spec`, rebuilt once per process; keeps the `capacity` latest."""
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
            _MODEL_CACHE[spec.digest] = model
        # An ensemble's members stay side by side; an earlier run's networks go.
        for digest in [key for key in _MODEL_CACHE if key != spec.digest]:
            if len(_MODEL_CACHE) <= max(capacity, 1):
                break
            del _MODEL_CACHE[digest]
    return model


@dataclasses.dataclass(frozen=True)
class _Pass:
    """One prediction averaged into every block: a member on one transform of the image.

    `grid` tiles the transformed image as `predict_tiled` tiles it in memory.
    """

    member: int
    symmetry: Symmetry
    grid: TileGrid
    batch_size: int


@dataclasses.dataclass(frozen=True)
class _BlockJob:
    """Everything a block task needs; shared by all tasks of one run.

    `grid` is the first member's grid on the image itself, which lays out the blocks;
    `passes` lists, member by member, the predictions averaged: one per member, or the
    8 symmetries of `biounet.inference.tta` each (`tta`).
    """

    models: tuple[_ModelSpec, ...]
    passes: tuple[_Pass, ...]
    source: _SourceReference
    target: Any
    grid: TileGrid
    block_shape: tuple[int, ...]
    normalizer: Callable[[np.ndarray], np.ndarray] | None

    @property
    def tta(self) -> bool:
        """Whether each member is averaged over its transforms."""
        return len(self.passes) > len(self.models)


def _predict_block(job: _BlockJob, index: tuple[int, ...], tiles: list[Tile]) -> tuple:
    """Predict one output block and write it; return its index.

    `tiles` are the first member's tiles filling the block. With an ensemble or `tta`
    the block averages its passes as `predict_ensemble` and `predict_tta` average whole
    images: a member's 8 transforms in float64, then the members in float64.
    """
    start = tuple(i * size for i, size in zip(index, job.block_shape))
    stop = tuple(
        min(s + size, n) for s, size, n in zip(start, job.block_shape, job.grid.image_shape)
    )
    # Pass 0 is the first member on the image itself: its tiles are the ones given.
    plans = [
        _plan_pass(job, one, start, stop, tiles if number == 0 else None)
        for number, one in enumerate(job.passes)
    ]
    # One read of the union of all passes' input windows, mirrored at the source's borders.
    window_start = tuple(min(axis) for axis in zip(*(plan[0] for plan in plans)))
    window_stop = tuple(max(axis) for axis in zip(*(plan[1] for plan in plans)))
    config = UNetConfig.from_dict(job.models[0].config)  # of all members: they share input
    raw = read_window(
        job.source.open(), window_start, [b - a for a, b in zip(window_start, window_stop)]
    )
    if isinstance(job.normalizer, _Affine):
        # whole-image statistics apply to the raw values, in float64 for wide sources
        channels = _with_channel_axis(raw, config, name="source")
        window = _finite_float32(job.normalizer(channels), name="normalised source")
    else:
        window = _normalized(as_network_input(raw, config, name="source"), job.normalizer)
    members: dict[int, np.ndarray] = {}
    for one, (low, high, pass_tiles) in zip(job.passes, plans):
        box = tuple(slice(a - w, b - w) for a, b, w in zip(low, high, window_start))
        part = window[(slice(None), *box)]
        probabilities = _predict_pass(job, one, part, low, pass_tiles, (start, stop))
        if job.tta:
            members.setdefault(one.member, np.zeros(probabilities.shape, np.float64))
            members[one.member] += probabilities
        else:
            members[one.member] = probabilities
    if job.tta:
        per_symmetry = len(job.passes) // len(job.models)
        members = {key: (total / per_symmetry).astype(np.float32) for key, total in members.items()}
    if len(members) == 1:
        output = members[0]
    else:
        total = members[0].astype(np.float64)
        for member in range(1, len(members)):
            total += members[member]
        output = (total / len(members)).astype(np.float32)
    job.target[(slice(None), *(slice(a, b) for a, b in zip(start, stop)))] = output
    return index


def _plan_pass(job: _BlockJob, one: _Pass, start, stop, tiles: list[Tile] | None) -> tuple:
    """The pass's input box for the block, in image coordinates, and the tiles filling it."""
    if tiles is None:
        low, high, _ = one.symmetry.apply_box(start, stop, job.grid.image_shape)
        tiles = one.grid.overlapping(low, high)
    tile_shape = one.grid.tile_shape
    window_start = tuple(min(axis) for axis in zip(*(tile.input_start for tile in tiles)))
    window_stop = tuple(
        max(axis) + size
        for axis, size in zip(zip(*(tile.input_start for tile in tiles)), tile_shape)
    )
    image_start, image_stop, _ = one.symmetry.invert_box(
        window_start, window_stop, one.grid.image_shape
    )
    return image_start, image_stop, tiles


def _predict_pass(
    job: _BlockJob, one: _Pass, window: np.ndarray, window_start, tiles, block
) -> np.ndarray:
    """One pass over the block (start, stop): (C, *block) float32, mapped back.

    `window` is the (C, *spatial) normalised input from `window_start` on, in image
    coordinates; it is transformed once and the pass's tiles are read from it.
    """
    start, stop = block
    model = _cached_model(job.models[one.member], capacity=len(job.models))
    transformed = np.ascontiguousarray(one.symmetry.apply(window))
    low, high, _ = one.symmetry.apply_box(start, stop, job.grid.image_shape)
    # where the window starts in the transformed image
    origin, _, _ = one.symmetry.apply_box(
        window_start, [a + n for a, n in zip(window_start, window.shape[1:])],
        job.grid.image_shape,
    )
    n_classes = model.config.n_classes  # type: ignore[union-attr]
    output = np.empty((n_classes, *(b - a for a, b in zip(low, high))), np.float32)
    tile_shape = one.grid.tile_shape
    with inference_mode(model, channels_last=False):  # the cached model is channels-last
        for first in range(0, len(tiles), one.batch_size):
            batch = tiles[first : first + one.batch_size]
            starts = [[a - b for a, b in zip(t.input_start, origin)] for t in batch]
            windows = np.stack([read_window(transformed, s, tile_shape) for s in starts])
            probabilities = predict_batch(model, windows, channels_last=True)
            for tile, tile_probabilities in zip(batch, probabilities):
                _paste(output, low, high, tile, tile_probabilities)
    return np.ascontiguousarray(one.symmetry.invert(output))


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
