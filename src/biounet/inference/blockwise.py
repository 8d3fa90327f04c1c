"""Out-of-core prediction: a zarr or TIFF source, one dask task per output block, a zarr target.

The output is cut into blocks of a whole number of tiles of the grid that
`predict_tiled` uses for the whole image (`plan_tiles` on the full shape), so every
tile sits where the in-memory prediction puts it, with its origin a multiple of
2**depth in global coordinates, and the result equals `predict_tiled` on the whole
image (Ronneberger et al. 2015, Fig. 2). Each block reads its input window straight
from the source, mirrored at the source's borders by `read_window`, so a worker holds
one block, never the image.

Tasks run on dask: the local threaded scheduler by default, or a `dask.distributed`
cluster. Workers get the network as its config and weights and rebuild it once per
process. A block is recorded as finished in the target's attributes after its data
are written, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biounet.config import UNetConfig
from biounet.data.io import TIFF_SUFFIXES
from biounet.inference.predict import (
    DEFAULT_MEMORY_BUDGET,
    as_network_input,
    estimate_tile_bytes,
    inference_mode,
    plan_tiles,
    predict_batch,
)
from biounet.inference.tiling import Tile, TileGrid, read_window
from biounet.model.unet import UNet

logger = logging.getLogger(__name__)

RECORD_KEY = "biounet_blockwise"  # target attribute: run signature + finished blocks
NORMALIZATIONS = ("percentile", "zscore")
_DEFAULT_BLOCK_PIXELS = 2**22  # ~2048^2 or 161^3: tens of MB in and out per block
_RECORD_INTERVAL_S = 1.0  # rewriting the target's metadata more often only costs I/O
_PERCENTILES = (1.0, 99.8)  # as data.normalize.normalize_percentile and the predict CLI

Normalization = str | Callable[[np.ndarray], np.ndarray] | None


def predict_blockwise(
    model: nn.Module,
    source,
    target,
    *,
    tile_shape: Sequence[int] | None = None,
    block_shape: Sequence[int] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    scheduler=None,
    resume: bool = True,
    progress: bool = False,
    normalization: Normalization = None,
):
    """Predict per-class probabilities of an image larger than memory into a zarr array.

    Equals `predict_tiled(model, whole_image, tile_shape=tile_shape)` (to float32
    rounding) while holding only a few blocks in memory at a time.

    Args:
        model: a `UNet` (anything with a `config: UNetConfig` and a UNet's state dict).
        source: (*spatial) or (C, *spatial) array-like with basic slicing (a zarr
            array, ...), or a path to a zarr array, an OME-Zarr multiscale group (level 0
            is used) or a TIFF file (read lazily through `tifffile`'s zarr store).
        target: path of the output zarr array, created with one chunk per block, or an
            existing zarr array of shape (n_classes, *spatial), whose chunks then set
            the blocks. Unfinished blocks read as NaN.
        tile_shape: input window shape; None chooses it from `memory_budget` exactly as
            `predict_tiled` does for the whole image.
        block_shape: output block per spatial axis, rounded to a whole number of tile
            steps; None takes about 4 Mpx (or the target's chunks).
        memory_budget: bytes for activations per running block; picks tiles and batches.
        scheduler: None or "threads" (local threads), "synchronous" (one thread, for
            debugging), a `dask.distributed.Client`, or a scheduler address "tcp://...".
        resume: skip blocks a previous run of the same prediction finished in `target`.
        progress: show a progress bar over blocks.
        normalization: None (the source is fed as it is), "percentile" (1st/99.8th
            percentile of each channel to 0/1, exact for integer sources of up to 16
            bits), "zscore" (each channel to zero mean, unit variance), or a function
            of a (C, *spatial) float32 window that must act pixel by pixel (it sees
            blocks, not the image) and must not modify its input.

    Returns:
        The output zarr array, (n_classes, *spatial) float32 probabilities.

    Raises:
        ValueError: for a source of the wrong shape or channel count, a target of the
            wrong shape or of another prediction, or an unusable block or tile shape.
        TypeError: for a model without a UNetConfig or a source that is not an array.
        FileNotFoundError: for a source path that does not exist.
        ConnectionError: for a scheduler address that cannot be reached (within dask's
            ``distributed.comm.timeouts.connect``).

    All of these are raised before the target is created or changed.
    """
    config = _check_model(model)
    opened = _open_source(source)
    try:
        _check_source(opened.array, config)
        spatial_shape = tuple(int(size) for size in opened.array.shape[-config.ndim :])
        grid = plan_tiles(config, spatial_shape, tile_shape=tile_shape, memory_budget=memory_budget)
        _check_normalization(normalization, np.dtype(opened.array.dtype))
        # Every check that needs no target comes first, so bad input leaves no target behind.
        executor = _make_executor(scheduler)
        try:
            if executor.is_distributed:
                _check_shareable(opened, target)
            output, blocks = _open_target(
                target, (config.n_classes, *spatial_shape), grid, block_shape, resume=resume
            )
            tiles = _tiles_per_block(grid, blocks)
            spec = _ModelSpec.from_model(model)
            signature = _signature(spec, grid, blocks, normalization)
            record = _Record(output, signature, resume=resume)
            output.attrs.update(_output_scale_metadata(opened, config.ndim))
            if len(record.done) < len(tiles):
                per_tile = max(estimate_tile_bytes(config, grid.tile_shape), 1)
                largest = max(map(len, tiles.values()))
                job = _BlockJob(
                    model=spec,
                    source=opened.reference(),
                    target=output,
                    grid=grid,
                    block_shape=blocks,
                    batch_size=int(min(max(memory_budget // per_tile, 1), largest)),
                    normalizer=_make_normalizer(normalization, opened, grid, blocks, executor),
                )
                _run_blocks(job, tiles, record, executor, progress=progress)
        finally:
            executor.close()
    finally:
        opened.close()
    return output


@dataclasses.dataclass
class _OpenedSource:
    """The source array, the path it can be reopened from, and its OME-Zarr metadata."""

    array: Any
    path: str | None = None
    scale: list[float] | None = None  # OME-Zarr level-0 scale per source axis
    axes: list | None = None
    store: Any = None  # a tifffile store opened here, closed at the end

    def reference(self) -> _SourceReference:
        return _SourceReference(path=self.path, array=self.array)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@dataclasses.dataclass
class _SourceReference:
    """What a task needs to read the source: the array, or a path workers reopen once."""

    path: str | None
    array: Any

    def __getstate__(self) -> dict:
        # an opened TIFF store holds a file handle; a worker reopens the path instead
        return {"path": self.path, "array": None if self.path is not None else self.array}

    def open(self):
        if self.array is None:
            self.array = _open_source(self.path).array
        return self.array


def _open_source(source) -> _OpenedSource:
    import zarr

    if not isinstance(source, (str, os.PathLike)):
        if isinstance(source, zarr.Group):
            return _multiscale_level_zero(source, _OpenedSource(array=None), name="source")
        if not all(hasattr(source, name) for name in ("shape", "dtype", "__getitem__")):
            raise TypeError(
                f"source must be an array-like, a zarr group or a path, got {type(source).__name__}"
            )
        return _OpenedSource(array=source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source {path} does not exist")
    opened = _OpenedSource(array=None, path=str(path))
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            opened.store = tifffile.imread(path, aszarr=True)
            node = zarr.open(opened.store, mode="r")
        else:
            node = zarr.open(str(path), mode="r")
    except Exception as error:  # zarr and tifffile raise many types for unreadable input
        opened.close()
        raise ValueError(
            f"source {path} cannot be opened as zarr or TIFF: {_first_line(error)}"
        ) from None
    if isinstance(node, zarr.Group):
        return _multiscale_level_zero(node, opened, name=f"source {path}")
    opened.array = node
    return opened


def _multiscale_level_zero(group, opened: _OpenedSource, *, name: str) -> _OpenedSource:
    """Fill `opened` with level 0 of an OME-Zarr multiscale group (v0.4 or v0.5 layout)."""
    attributes = dict(group.attrs)
    multiscales = attributes.get("ome", {}).get("multiscales") or attributes.get("multiscales")
    if not multiscales:
        opened.close()
        raise ValueError(
            f"{name} is a zarr group without OME-Zarr 'multiscales' metadata; pass one of "
            f"its arrays {sorted(group.array_keys())} instead"
        )
    level = multiscales[0]["datasets"][0]
    opened.array = group[level["path"]]
    transforms = level.get("coordinateTransformations", []) + multiscales[0].get(
        "coordinateTransformations", []
    )
    scale = np.ones(opened.array.ndim)
    for transform in transforms:
        if transform.get("type") == "scale" and "scale" in transform:
            scale = scale * np.asarray(transform["scale"], dtype=float)
    opened.scale = scale.tolist()
    opened.axes = multiscales[0].get("axes")
    return opened


def _output_scale_metadata(opened: _OpenedSource, ndim: int) -> dict:
    """OME-Zarr axes and level-0 scale for the output: a class axis, then the spatial ones."""
    if opened.scale is None:
        return {}
    spatial_axes = (
        opened.axes[-ndim:]
        if opened.axes
        else [{"name": name, "type": "space"} for name in "zyx"[-ndim:]]
    )
    return {
        "axes": [{"name": "c", "type": "channel"}, *spatial_axes],
        "coordinateTransformations": [{"type": "scale", "scale": [1.0, *opened.scale[-ndim:]]}],
    }


def _check_model(model: nn.Module) -> UNetConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, UNetConfig):
        raise TypeError(f"model must have a UNetConfig as .config, got {type(config).__name__}")
    return config


def _check_source(array, config: UNetConfig) -> None:
    shape, ndim = tuple(array.shape), config.ndim
    axes = "Z, Y, X" if ndim == 3 else "Y, X"
    if np.dtype(array.dtype).kind not in "biuf":
        raise TypeError(f"source must be real-valued, got dtype {array.dtype}")
    if len(shape) not in (ndim, ndim + 1):
        raise ValueError(
            f"source must be ({axes}) or (C, {axes}) for a {ndim}-D network, got shape {shape}"
        )
    channels = shape[0] if len(shape) == ndim + 1 else 1
    if channels != config.in_channels:
        raise ValueError(
            f"source has {channels} channel(s) (shape {shape}); the model expects "
            f"{config.in_channels}"
        )
    if 0 in shape:
        raise ValueError(f"source is empty (shape {shape})")


def _open_target(target, shape, grid: TileGrid, block_shape, *, resume: bool):
    """Return the output array and its block shape, creating the array at a path."""
    import zarr

    if isinstance(target, zarr.Array):
        _check_target_shape(target, shape, name="target")
        return target, _blocks_of_chunks(target, grid, block_shape)
    if not isinstance(target, (str, os.PathLike)):
        raise TypeError(f"target must be a path or a zarr array, got {type(target).__name__}")
    path = Path(target)
    if path.exists() and (path.is_file() or any(path.iterdir())):
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


def _signature(spec: _ModelSpec, grid: TileGrid, blocks, normalization: Normalization) -> dict:
    """What must match for a finished block of an earlier run to be kept."""
    if callable(normalization):
        normalization = f"callable {getattr(normalization, '__qualname__', '?')}"
    signature = {
        "config": spec.config,
        "weights_sha256": spec.digest,
        "image_shape": grid.image_shape,
        "tile_shape": grid.tile_shape,
        "block_shape": blocks,
        "normalization": normalization,
    }
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
            differing = sorted(key for key in signature if old.get(key) != signature[key])
            raise ValueError(
                f"target holds blocks of another prediction (differing in {differing}); pass "
                "resume=False (biounet predict --overwrite) to start over, or choose another "
                "target"
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


def _run_blocks(job: _BlockJob, tiles, record: _Record, executor, *, progress: bool) -> None:
    from tqdm.auto import tqdm

    todo = [index for index in sorted(tiles) if not record.is_done(index)]
    logger.info(
        "predicting %d of %d block(s) of %s, tiles %s",
        len(todo),
        len(tiles),
        job.block_shape,
        job.grid.tile_shape,
    )
    bar = tqdm(
        total=len(tiles),
        initial=len(tiles) - len(todo),
        desc="blocks",
        unit="block",
        disable=not progress,
    )

    def finished(index: tuple[int, ...]) -> None:
        record.mark(tuple(index))
        bar.update()

    try:
        executor.map(
            _predict_block,
            job,
            [(index, tiles[index]) for index in todo],
            name="biounet-block",
            on_result=finished,
        )
    finally:
        record.flush()
        bar.close()


class _LocalExecutor:
    """dask's local scheduler: a graph of one task per call, results reported by callback."""

    is_distributed = False

    def __init__(self, scheduler: str) -> None:
        self.scheduler = scheduler

    def map(self, function, shared, arguments, *, name: str, on_result=None) -> list:
        """Return ``[function(shared, *args) for args in arguments]``, computed by dask."""
        import dask
        from dask.callbacks import Callback

        token = uuid.uuid4().hex
        common = dask.delayed(shared, name=f"{name}-shared-{token}", traverse=False)
        tasks = [
            dask.delayed(function, pure=False)(common, *args, dask_key_name=f"{name}-{token}-{n}")
            for n, args in enumerate(arguments)
        ]
        keys = {task.key for task in tasks}

        def posttask(key, result, dsk, state, worker_id) -> None:
            if key in keys and on_result is not None:
                on_result(result)

        # One block at a time unless configured: torch already spreads one over every core.
        n_workers = dask.config.get("num_workers", None) or 1
        with Callback(posttask=posttask):
            return list(dask.compute(*tasks, scheduler=self.scheduler, num_workers=n_workers))

    def close(self) -> None:
        pass


class _DistributedExecutor:
    """A dask.distributed client: one submitted task per call, reported as each finishes."""

    is_distributed = True

    def __init__(self, client, *, owns_client: bool) -> None:
        self.client, self.owns_client = client, owns_client

    def map(self, function, shared, arguments, *, name: str, on_result=None) -> list:
        """Return ``[function(shared, *args) for args in arguments]``, computed on the cluster."""
        from distributed import as_completed

        token = uuid.uuid4().hex
        # sent to every worker once, instead of travelling with every task
        common = self.client.scatter(shared, broadcast=True, hash=False)
        futures = [
            self.client.submit(function, common, *args, key=f"{name}-{token}-{n}", pure=False)
            for n, args in enumerate(arguments)
        ]
        position = {future.key: number for number, future in enumerate(futures)}
        results: list = [None] * len(futures)
        try:
            for future in as_completed(futures):
                results[position[future.key]] = result = future.result()
                if on_result is not None:
                    on_result(result)
        except BaseException:
            self.client.cancel(futures)
            raise
        return results

    def close(self) -> None:
        if self.owns_client:
            self.client.close()


def _make_executor(scheduler):
    if scheduler is None or scheduler == "threads":
        return _LocalExecutor("threads")
    if scheduler in ("synchronous", "sync"):
        return _LocalExecutor("synchronous")
    is_address = isinstance(scheduler, str) and "://" in scheduler
    is_client = type(scheduler).__module__.split(".")[0] == "distributed"
    if is_address or is_client:
        try:
            import distributed
        except ImportError:
            raise ImportError(
                f"scheduler {scheduler!r} needs the dask.distributed package (distributed)"
            ) from None
        if is_client:
            return _DistributedExecutor(scheduler, owns_client=False)
        return _DistributedExecutor(_connect(distributed, scheduler), owns_client=True)
    raise ValueError(
        "scheduler must be None, 'threads', 'synchronous', a dask.distributed Client or a "
        f"scheduler address such as 'tcp://127.0.0.1:8786', got {scheduler!r}"
    )


def _connect(distributed, address: str):
    """Return a Client of the scheduler at `address`, or say in one line why there is none."""
    try:
        # waits up to the dask config's distributed.comm.timeouts.connect (30 s by default)
        return distributed.Client(address)
    except ValueError as error:  # unknown scheme, port that is not a number, ...
        raise ValueError(
            f"scheduler {address!r} is not a valid address ({_first_line(error)}); expected "
            "such as 'tcp://127.0.0.1:8786'"
        ) from None
    except OSError as error:  # refused, unknown host or timed out
        raise ConnectionError(
            f"scheduler {address} cannot be reached ({_first_line(error)}); start one with "
            f"`dask scheduler` and workers with `dask worker {address}`, or check the address"
        ) from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _check_shareable(opened: _OpenedSource, target) -> None:
    """Refuse arrays that worker processes cannot reach."""
    import pickle

    from zarr.storage import MemoryStore

    if isinstance(getattr(target, "store", None), MemoryStore):
        raise ValueError(
            "target is a zarr array in memory, which distributed workers cannot write to; "
            "pass a path"
        )
    if opened.path is None:
        try:
            pickle.dumps(opened.array)
        except Exception as error:
            raise TypeError(
                f"source cannot be sent to distributed workers ({error}); pass its path instead"
            ) from None


def _check_normalization(normalization: Normalization, dtype: np.dtype) -> None:
    if normalization is None or callable(normalization):
        return
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be None, one of {list(NORMALIZATIONS)} or a function, got "
            f"{normalization!r}"
        )
    if normalization == "percentile" and not (
        dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize <= 2)
    ):
        raise ValueError(
            f"normalization='percentile' is exact only for integer sources of up to 16 bits, "
            f"got dtype {dtype}; use 'zscore' (biounet predict --normalization zscore), "
            "normalise the source beforehand or pass a function"
        )


def _make_normalizer(normalization: Normalization, opened, grid, blocks, executor):
    """Return a per-window function applying `normalization` with whole-image statistics."""
    if normalization is None or callable(normalization):
        return normalization
    dtype = np.dtype(opened.array.dtype)
    regions = [
        tuple(slice(i * size, (i + 1) * size) for i, size in zip(index, blocks))
        for index in itertools.product(
            *(range(-(-extent // size)) for extent, size in zip(grid.image_shape, blocks))
        )
    ]
    parts = executor.map(
        _region_statistics,
        opened.reference(),
        [(region, normalization) for region in regions],
        name="biounet-statistics",
    )
    if normalization == "percentile":
        return _percentile_affine(np.sum(parts, axis=0), dtype)
    return _zscore_affine(parts)


def _region_statistics(source: _SourceReference, region, normalization: str) -> np.ndarray:
    """Per channel: a histogram of all values, or (count, mean, sum of squared deviations)."""
    values = np.asarray(source.open()[(Ellipsis, *region)])
    values = values.reshape(values.shape[0] if values.ndim > len(region) else 1, -1)
    if normalization == "percentile":
        low = 0 if values.dtype.kind == "b" else int(np.iinfo(values.dtype).min)
        n_values = 2 ** (8 * values.dtype.itemsize) if values.dtype.kind != "b" else 2
        shifted = values.astype(np.int64) - low
        return np.stack([np.bincount(row, minlength=n_values) for row in shifted])
    values = values.astype(np.float64)
    means = values.mean(axis=1)
    squares = ((values - means[:, None]) ** 2).sum(axis=1)
    return np.stack([np.full_like(means, values.shape[1]), means, squares], axis=1)


@dataclasses.dataclass(frozen=True)
class _Affine:
    """Per channel ``(window - offset) * inverse`` in float32, as data.normalize computes it."""

    offset: np.ndarray
    inverse: np.ndarray

    def __call__(self, window: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * (window.ndim - 1)
        result = window - self.offset.reshape(shape)
        result *= self.inverse.reshape(shape)
        return result


def _percentile_affine(histograms: np.ndarray, dtype: np.dtype) -> _Affine:
    # float64 statistics cast at the end, as normalize_percentile's np.percentile gives them
    first_value = 0 if dtype.kind == "b" else int(np.iinfo(dtype).min)
    offsets, inverses = [], []
    for counts in histograms:
        bottom, top = (
            _histogram_percentile(counts, q, first_value=first_value) for q in _PERCENTILES
        )
        divisor = top - bottom + 1e-20 if top > bottom else 1.0
        offsets.append(bottom)
        inverses.append(1.0 / divisor)
    return _Affine(np.array(offsets, np.float32), np.array(inverses, np.float32))


def _histogram_percentile(counts: np.ndarray, q: float, *, first_value: int = 0) -> float:
    """The `q`-th percentile of the values whose histogram is `counts`.

    Bin i counts the value ``first_value + i``. Linear interpolation between order
    statistics, computed as `np.percentile` does (including its symmetric lerp).

    Example:
        >>> values = np.array([3, 7, 7, 1, 9])
        >>> _histogram_percentile(np.bincount(values), 40.0)  # 3 + 0.6 * (7 - 3)
        5.4
        >>> np.percentile(values, [40.0]).item()
        5.4
    """
    cumulative = np.cumsum(counts)
    n_values = int(cumulative[-1])
    position = q / 100 * (n_values - 1)
    below = math.floor(position)
    ranks = [below, min(below + 1, n_values - 1)]
    lower, upper = np.searchsorted(cumulative, ranks, side="right") + float(first_value)
    fraction = position - below
    if fraction >= 0.5:
        return float(upper - (upper - lower) * (1 - fraction))
    return float(lower + (upper - lower) * fraction)


def _zscore_affine(parts: list[np.ndarray]) -> _Affine:
    # Chan et al.'s pairwise combination of per-block means and squared deviations
    count, mean, squares = (column.astype(np.float64) for column in np.moveaxis(parts[0], 1, 0))
    for part in parts[1:]:
        other_count, other_mean, other_squares = np.moveaxis(part, 1, 0)
        total = count + other_count
        delta = other_mean - mean
        squares = squares + other_squares + delta**2 * count * other_count / total
        mean = mean + delta * other_count / total
        count = total
    std = np.sqrt(squares / count)
    divisor = np.where(std > 0, std + 1e-20, 1.0)
    return _Affine(mean.astype(np.float32), (1.0 / divisor).astype(np.float32))
