"""The target of `predict_blockwise`: its output blocks and the record of finished blocks.

Blocks are whole numbers of tile steps and own whole chunks (or shards) of the
target, so no two tasks write into one chunk. The record in the target's attributes
holds the run's signature and the finished blocks; a later run resumes from it only
if its signature matches.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from biounet.inference.blockwise_normalization import Normalization
from biounet.inference.blockwise_task import _ModelSpec, _Pass
from biounet.inference.tiling import Tile, TileGrid

# predict_blockwise's logger, as before the split, so existing logging set-ups still apply
logger = logging.getLogger("biounet.inference.blockwise")

RECORD_KEY = "biounet_blockwise"  # target attribute: run signature + finished blocks
_DEFAULT_BLOCK_PIXELS = 2**22  # ~2048^2 or 161^3: tens of MB in and out per block
_RECORD_INTERVAL_S = 1.0  # rewriting the target's metadata more often only costs I/O


def _open_target(target, shape, grid: TileGrid, block_shape, *, resume: bool):
    """Return the output array and its block shape, creating the array at a path."""
    import zarr

    if isinstance(target, zarr.Array):
        _check_target_shape(target, shape, name="target")
        return target, _blocks_of_chunks(target, grid, block_shape)
    if not isinstance(target, (str, os.PathLike)):
        raise TypeError(f"target must be a path or a zarr array, got {type(target).__name__}")
    path = Path(target)
    if _is_occupied(path):
        try:
            existing = zarr.open_array(str(path), mode="r+")
        except Exception:  # anything but a zarr array: never overwrite it
            raise ValueError(
                f"target {path} exists and is not a zarr array; choose another path"
            ) from None
        _check_target_shape(existing, shape, name=f"target {path}")
        if resume:
            chunks = _chunk_shape(existing)
            if any(chunk % step for chunk, step in zip(chunks, grid.step)):
                raise ValueError(
                    f"target {path} holds blocks {chunks} of another prediction, not whole "
                    f"numbers of the tile step {grid.step}; pass resume=False (biounet predict "
                    "--overwrite) to start over"
                )
            return existing, _blocks_of_chunks(existing, grid, block_shape)
    blocks = _round_block_shape(grid, block_shape)
    array = zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=(shape[0], *blocks),
        dtype="float32",
        fill_value=np.nan,
        overwrite=True,
    )
    return array, blocks


def _is_new_target(target) -> bool:
    """Whether `_open_target` will create the target rather than open an existing one."""
    return isinstance(target, (str, os.PathLike)) and not _is_occupied(Path(target))


def _is_occupied(path: Path) -> bool:
    """A file, or a folder with anything in it: `_open_target` opens it, never overwrites."""
    return path.exists() and (path.is_file() or any(path.iterdir()))


def _check_target_shape(array, shape: tuple[int, ...], *, name: str) -> None:
    if tuple(array.shape) != shape or np.dtype(array.dtype) != np.float32:
        raise ValueError(
            f"{name} has shape {tuple(array.shape)} and dtype {array.dtype}; this prediction "
            f"needs {shape} float32; delete it or choose another target"
        )


def _round_block_shape(grid: TileGrid, block_shape) -> tuple[int, ...]:
    """Return `block_shape` (default ~4 Mpx) as whole numbers of tile steps per axis."""
    ndim = len(grid.step)
    if block_shape is None:
        block_shape = (round(_DEFAULT_BLOCK_PIXELS ** (1 / ndim)),) * ndim
    block_shape = tuple(block_shape)
    if len(block_shape) != ndim or not all(
        isinstance(size, (int, np.integer)) and size > 0 for size in block_shape
    ):
        raise ValueError(f"block_shape must be {ndim} positive integers, got {block_shape}")
    steps = (
        min(max(round(size / step), 1), count)
        for size, step, count in zip(block_shape, grid.step, grid.counts)
    )
    rounded = tuple(n_steps * step for n_steps, step in zip(steps, grid.step))
    if rounded != block_shape:
        logger.info("block_shape %s rounded to %s (tile step %s)", block_shape, rounded, grid.step)
    return rounded


def _chunk_shape(array) -> tuple[int, ...]:
    """Spatial shape of the array's unit of writing: its shards if sharded, else its chunks."""
    return tuple(getattr(array, "shards", None) or array.chunks)[1:]


def _blocks_of_chunks(array, grid: TileGrid, block_shape) -> tuple[int, ...]:
    # Blocks must own whole chunks: two tasks writing into one chunk would race.
    chunks = _chunk_shape(array)
    steps = grid.step
    if any(chunk % step for chunk, step in zip(chunks, steps)):
        example = tuple(step * max(round(chunk / step), 1) for chunk, step in zip(chunks, steps))
        raise ValueError(
            f"target chunks {chunks} are not whole numbers of the tile step {grid.step}; "
            f"create it with spatial chunks such as {example}, or pass a path"
        )
    if block_shape is None:
        return chunks
    blocks = _round_block_shape(grid, block_shape)
    if any(block % chunk for block, chunk in zip(blocks, chunks)):
        raise ValueError(
            f"block_shape {blocks} (rounded to tile steps) must be a multiple of the target's "
            f"chunks {chunks}"
        )
    return blocks


def _tiles_per_block(grid: TileGrid, block_shape) -> dict[tuple[int, ...], list[Tile]]:
    """Group the grid's tiles by the output blocks they fill (the last may fill two)."""
    tiles: dict[tuple[int, ...], list[Tile]] = {}
    for tile in grid:
        ranges = (
            range(start // size, (stop - 1) // size + 1)
            for start, stop, size in zip(tile.output_start, tile.output_stop, block_shape)
        )
        for index in itertools.product(*ranges):
            tiles.setdefault(index, []).append(tile)
    n_blocks = math.prod(-(-size // block) for size, block in zip(grid.image_shape, block_shape))
    assert len(tiles) == n_blocks, "every block must be filled by some tile"
    return tiles


def _signature(
    specs: Sequence[_ModelSpec],
    passes: Sequence[_Pass],
    blocks,
    normalization: Normalization,
    *,
    tta: bool,
    polarity: str = "as_is",
) -> dict:
    """What must match for a finished block of an earlier run to be kept.

    One network without `tta` keeps the signature of earlier versions, so their
    targets resume; an ensemble adds every member, `tta` says so, and either adds the
    tile shape of every pass (member by member, transform by transform); a polarity
    other than "as_is" is recorded too.
    """
    if callable(normalization):
        normalization = f"callable {getattr(normalization, '__qualname__', '?')}"
    grid = passes[0].grid
    signature = {
        "config": specs[0].config,
        "weights_sha256": specs[0].digest,
        "image_shape": grid.image_shape,
        "tile_shape": grid.tile_shape,
        "block_shape": blocks,
        "normalization": normalization,
    }
    if len(specs) > 1:
        signature["members"] = [
            {"config": spec.config, "weights_sha256": spec.digest} for spec in specs
        ]
    if tta:
        signature["tta"] = True
    if polarity != "as_is":
        signature["polarity"] = polarity
    if len(passes) > 1:
        signature["tile_shapes"] = [one.grid.tile_shape for one in passes]
    return json.loads(json.dumps(signature))  # tuples become lists, as stored


class _Record:
    """Finished blocks, kept as flat block indices in the target's attributes."""

    def __init__(self, array, signature: dict, *, resume: bool) -> None:
        self.array, self.signature = array, signature
        self.block_counts = tuple(
            -(-size // chunk) for size, chunk in zip(array.shape[1:], signature["block_shape"])
        )
        stored = dict(array.attrs).get(RECORD_KEY) if resume else None
        if stored is not None and stored.get("signature") != signature:
            old = stored.get("signature") or {}
            keys = set(signature) | set(old)
            differing = sorted(key for key in keys if old.get(key) != signature.get(key))
            hint = ""
            if set(differing) <= {"tile_shape", "tile_shapes"}:
                hint = " (tiles follow the memory budget: give the first run's budget or tiles)"
            raise ValueError(
                f"target holds blocks of another prediction (differing in {differing}){hint}; "
                "pass resume=False (biounet predict --overwrite) to start over, or choose "
                "another target"
            )
        self.done: set[int] = set(stored["done"]) if stored is not None else set()
        self.flush()

    def is_done(self, index: tuple[int, ...]) -> bool:
        return int(np.ravel_multi_index(index, self.block_counts)) in self.done

    def mark(self, index: tuple[int, ...]) -> None:
        self.done.add(int(np.ravel_multi_index(index, self.block_counts)))
        if time.monotonic() - self._written >= _RECORD_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        self.array.attrs[RECORD_KEY] = {"signature": self.signature, "done": sorted(self.done)}
        self._written = time.monotonic()
