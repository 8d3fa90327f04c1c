"""Out-of-core prediction: a zarr or TIFF source, one dask task per output block, a zarr target.

The output is cut into blocks of a whole number of tiles of the grid that
`predict_tiled` uses for the whole image (`plan_tiles` on the full shape), so every
tile sits where the in-memory prediction puts it, with its origin a multiple of
2**depth in global coordinates, and the result equals `predict_tiled` on the whole
image (Ronneberger et al. 2015, Fig. 2). Each block reads its input window straight
from the source, mirrored at the source's borders by `read_window`, so a worker holds
one block, never the image. An ensemble, or test-time augmentation, adds passes: each
member on each flip/rotation of the image keeps the grid `predict_tiled` gives that
transformed image, and a block predicts the tiles of every pass that overlap it, so
the result equals `predict_ensemble` / `predict_tta` too.

Tasks run on dask: the local threaded scheduler by default, or a `dask.distributed`
cluster. Workers get the network as its config and weights and rebuild it once per
process. A block is recorded as finished in the target's attributes after its data
are written, so an interrupted run resumes where it stopped.

This module checks the inputs, plans the run and hands the blocks to an executor.
The parts live beside it: `blockwise_source` (opening the source),
`blockwise_target` (block layout and the record of finished blocks),
`blockwise_task` (predicting and writing one block), `blockwise_executors` (dask's
local scheduler or a distributed cluster) and `blockwise_normalization`
(whole-image statistics gathered block by block).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
from torch import nn

# The `name as name` imports re-export what the CLI, tests and benchmarks import from here.
from biounet.config import UNetConfig
from biounet.inference.blockwise_executors import _check_shareable, _make_executor
from biounet.inference.blockwise_normalization import NORMALIZATIONS as NORMALIZATIONS
from biounet.inference.blockwise_normalization import (
    Normalization,
    _check_normalization,
    _make_normalizer,
)
from biounet.inference.blockwise_source import (
    _check_source,
    _open_source,
    _output_scale_metadata,
)
from biounet.inference.blockwise_target import RECORD_KEY as RECORD_KEY
from biounet.inference.blockwise_target import (
    _is_new_target,
    _open_target,
    _Record,
    _signature,
    _tiles_per_block,
)
from biounet.inference.blockwise_task import _MODEL_CACHE as _MODEL_CACHE
from biounet.inference.blockwise_task import _BlockJob, _ModelSpec, _Pass, _predict_block
from biounet.inference.ensemble import check_ensemble
from biounet.inference.memory import DEFAULT_MEMORY_BUDGET, estimate_tile_bytes
from biounet.inference.predict import plan_tiles
from biounet.inference.tta import Symmetry, symmetries

logger = logging.getLogger(__name__)


def predict_blockwise(
    model: nn.Module | Sequence[nn.Module],
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
    tta: bool = False,
    polarity: str = "as_is",
):
    """Predict per-class probabilities of an image larger than memory into a zarr array.

    Equals `predict_tiled(model, whole_image, tile_shape=tile_shape)` (to float32
    rounding) while holding only a few blocks in memory at a time; for a list of models
    `predict_ensemble(models, whole_image, tta=tta, tile_shape=tile_shape)`, and with
    `tta` `predict_tta`. Every member and transform is tiled on its own grid, as in
    memory; a block predicts the tiles of each grid that overlap it.

    Args:
        model: a `UNet` (anything with a `config: UNetConfig` and a UNet's state dict),
            or a sequence of them, an ensemble (`biounet.inference.ensemble`) whose
            class probabilities are averaged.
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
            percentile of each channel to 0/1, the percentiles `np.percentile` gives in
            memory, for every integer and float dtype, found in one to four passes over
            the source), "zscore" (each channel to zero mean, unit variance), or a
            function of a (C, *spatial) float32 window that must act pixel by pixel (it
            sees blocks, not the image) and must not modify its input.
        tta: average every member over the 8 flips/rotations (2-D) or axis flips (3-D)
            of `biounet.inference.tta`: 8 predictions per block, 8x the time.
        polarity: "as_is", or "bright_objects" (with "percentile" or "zscore"): a
            channel with a bright background is inverted as it is normalised, as
            `biounet.data.normalize` does in memory (`TrainConfig.polarity`); its median
            costs no extra pass over the source for "percentile".

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
    models = _check_models(model)
    config = models[0].config
    if not isinstance(tta, (bool, np.bool_)):
        raise TypeError(f"tta must be true or false, got {tta!r}")
    tta = bool(tta)
    opened = _open_source(source)
    try:
        _check_source(opened.array, config)
        spatial_shape = tuple(int(size) for size in opened.array.shape[-config.ndim :])
        passes = _plan_passes(models, spatial_shape, tile_shape, memory_budget, tta=tta)
        grid = passes[0].grid
        _check_normalization(normalization, polarity)
        # Every check that needs no target comes first, so bad input leaves no target behind.
        executor = _make_executor(scheduler)
        try:
            if executor.is_distributed:
                _check_shareable(opened, target)
            # Whole-image statistics come first, so a NaN leaves the target as it was, unless
            # a resumed target may be finished already: then only if blocks remain.
            fresh = not resume or _is_new_target(target)
            if fresh:
                normalizer = _make_normalizer(
                    normalization, opened, spatial_shape, executor, polarity
                )
            output, blocks = _open_target(
                target, (config.n_classes, *spatial_shape), grid, block_shape, resume=resume
            )
            tiles = _tiles_per_block(grid, blocks)
            specs = tuple(_ModelSpec.from_model(member) for member in models)
            signature = _signature(
                specs, passes, blocks, normalization, tta=tta, polarity=polarity
            )
            record = _Record(output, signature, resume=resume)
            output.attrs.update(_output_scale_metadata(opened, config.ndim))
            if len(record.done) < len(tiles):
                if not fresh:
                    normalizer = _make_normalizer(
                        normalization, opened, spatial_shape, executor, polarity
                    )
                largest = max(map(len, tiles.values()))
                first = dataclasses.replace(
                    passes[0], batch_size=min(passes[0].batch_size, largest)
                )
                job = _BlockJob(
                    models=specs,
                    passes=(first, *passes[1:]),
                    source=opened.reference(),
                    target=output,
                    grid=grid,
                    block_shape=blocks,
                    normalizer=normalizer,
                )
                _run_blocks(job, tiles, record, executor, progress=progress)
        finally:
            executor.close()
    finally:
        opened.close()
    return output


def _check_models(model) -> list[nn.Module]:
    """The networks to predict with: one, or an ensemble's members that predict alike."""
    if isinstance(model, nn.Module) or not isinstance(model, Sequence):
        _check_model(model)
        return [model]
    check_ensemble(model, name="model")
    for member in model:
        _check_model(member)
    return list(model)


def _plan_passes(models, spatial_shape, tile_shape, memory_budget: int, *, tta: bool) -> list:
    """Member by member, each transform of the image with the grid `predict_tiled` uses."""
    passes = []
    for number, member in enumerate(models):
        config = member.config
        for symmetry in symmetries(config.ndim) if tta else (Symmetry(),):
            _, _, shape = symmetry.apply_box(spatial_shape, spatial_shape, spatial_shape)
            grid = plan_tiles(config, shape, tile_shape=tile_shape, memory_budget=memory_budget)
            per_tile = max(estimate_tile_bytes(config, grid.tile_shape), 1)
            batch_size = int(max(memory_budget // per_tile, 1))
            passes.append(_Pass(number, symmetry, grid, batch_size))
    return passes


def _check_model(model: nn.Module) -> UNetConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, UNetConfig):
        raise TypeError(f"model must have a UNetConfig as .config, got {type(config).__name__}")
    return config


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
        # `_predict_block` is looked up in this module at call time, so a test that
        # replaces `blockwise._predict_block` changes what every block runs.
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
