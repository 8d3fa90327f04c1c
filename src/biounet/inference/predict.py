"""In-memory overlap-tile prediction (Ronneberger et al. 2015, Fig. 2), batched and exact."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from biounet.config import UNetConfig
from biounet.inference.memory import (
    DEFAULT_MEMORY_BUDGET,
    check_fits_in_memory,
    estimate_tile_bytes,
    too_large_message,
)
from biounet.inference.tile_shape import choose_tile_shape, whole_image_grid
from biounet.inference.tiling import Tile, TileGrid, make_tile_grid, read_window

logger = logging.getLogger(__name__)


def plan_tiles(
    config: UNetConfig,
    spatial_shape: Sequence[int],
    *,
    tile_shape: Sequence[int] | str | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> TileGrid:
    """Return the tile grid for an image: given, chosen from the budget, or one whole pass.

    Args:
        tile_shape: a valid input shape of the network; None to choose the tile that
            computes the least within `memory_budget`; "whole" for one pass over the
            mirror-extended image, whatever it costs.
        memory_budget: bytes the activations of one tile may take.
    """
    if isinstance(tile_shape, str):
        if tile_shape != "whole":
            raise ValueError(f"tile_shape must be a shape, None or 'whole', got {tile_shape!r}")
        return whole_image_grid(config, spatial_shape)
    if tile_shape is None:
        if memory_budget <= 0:
            raise ValueError(f"memory_budget must be positive, got {memory_budget}")
        per_pixel = estimate_tile_bytes(config, (1,) * config.ndim)
        chosen = choose_tile_shape(
            config,
            spatial_shape,
            max_tile_pixels=int(memory_budget // per_pixel),
            bytes_per_pixel=per_pixel,
        )
        return make_tile_grid(config, spatial_shape, chosen)
    return make_tile_grid(config, spatial_shape, tuple(tile_shape))


def as_network_input(image, config: UNetConfig, *, name: str = "image") -> np.ndarray:
    """Check an image against the network and return it as float32 (C, *spatial).

    Accepts (*spatial) for single-channel networks and (C, *spatial) otherwise.

    Raises:
        TypeError: for non-numeric data.
        ValueError: for a wrong number of axes or channels, an empty image or
            non-finite pixels.
    """
    return _finite_float32(_with_channel_axis(image, config, name=name), name=name)


def _with_channel_axis(image, config: UNetConfig, *, name: str) -> np.ndarray:
    """Check dtype, axes and channels of `image`; return it as (C, *spatial), uncopied."""
    array = np.asarray(image)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real-valued array, got dtype {array.dtype}")
    ndim = config.ndim
    axes = "Z, Y, X" if ndim == 3 else "Y, X"
    if array.ndim == ndim:
        array = array[None]
    if array.ndim != ndim + 1:
        raise ValueError(
            f"{name} must be ({axes}) or (C, {axes}) for a {ndim}-D network, got shape "
            f"{array.shape}"
        )
    if array.shape[0] != config.in_channels:
        raise ValueError(
            f"{name} has {array.shape[0]} channel(s) (shape {array.shape}); the model "
            f"expects {config.in_channels}"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    return array


def _finite_float32(array: np.ndarray, *, name: str) -> np.ndarray:
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite pixels")
    return array


@contextlib.contextmanager
def inference_mode(model: nn.Module, *, channels_last: bool) -> Iterator[None]:
    """Put `model` in eval mode (and channels-last layout) for the block, then restore it.

    channels_last measured 1.5x faster for inference on this kind of CPU, but makes
    backward passes slower, so the model's own layout is restored afterwards.
    """
    was_training = model.training
    model.eval()
    layout = torch.channels_last if _ndim(model) == 2 else torch.channels_last_3d
    if channels_last:
        model.to(memory_format=layout)
    try:
        with torch.inference_mode():
            yield
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


def _ndim(model: nn.Module) -> int:
    return model.config.ndim  # type: ignore[union-attr]


def predict_batch(model: nn.Module, windows: np.ndarray, *, channels_last: bool) -> np.ndarray:
    """Return softmax probabilities (B, n_classes, ...) for a batch of input windows.

    Must run inside `inference_mode(model, ...)`.
    """
    device = next(model.parameters()).device
    batch = torch.from_numpy(windows).to(device)
    if channels_last:
        layout = torch.channels_last if windows.ndim == 4 else torch.channels_last_3d
        batch = batch.contiguous(memory_format=layout)
    scores = model(batch)
    probabilities = torch.softmax(scores, dim=1).float().cpu().numpy()  # eq. 1
    if not np.isfinite(probabilities).all():
        # finite input near float32's limits overflows in the convolutions, and diverged
        # weights give NaN anywhere; NaN output would pass for an unfinished zarr block
        low, high = float(windows.min()), float(windows.max())
        raise ValueError(
            f"the network's output is NaN or infinite for input values in [{low:.3g}, "
            f"{high:.3g}]; normalise the image (percentile or zscore normalization), or, "
            "for normalised input, the weights have diverged"
        )
    return probabilities


def predict_tiled(
    model: nn.Module,
    image,
    *,
    tile_shape: Sequence[int] | str | None = None,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    channels_last: bool | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Predict per-class probabilities for an image of any size with the overlap-tile strategy.

    The image is extended by mirroring at its borders (Ronneberger et al. 2015, Fig. 2)
    and cut into overlapping input windows whose outputs tile the image seamlessly.
    Window offsets are multiples of 2**depth, so for a valid-padded network the result
    equals one whole-image pass over the mirrored image (to float32 rounding). For
    a "same"-padded network each tile is cropped by the halo; results then differ
    slightly from a whole-image pass, where zero padding reaches into the tile.

    Args:
        model: a `UNet` (anything with a `config: UNetConfig` and the same geometry).
        image: (*spatial) or (C, *spatial) real-valued array, already normalised.
        tile_shape: input window shape; None chooses it from `memory_budget`; "whole"
            runs one pass over the whole (mirror-extended) image.
        batch_size: windows per forward pass; None fits as many as `memory_budget` allows.
        memory_budget: bytes for activations, used when tile_shape or batch_size is None.
        channels_last: run in channels-last layout (default: on CPU).
        progress: show a progress bar over tiles.

    Returns:
        (n_classes, *spatial) float32 softmax probabilities.
    """
    config: UNetConfig = model.config  # type: ignore[assignment]
    array = _with_channel_axis(image, config, name="image")
    check_fits_in_memory(array, config)  # before the float32 copy and the finiteness mask
    array = _finite_float32(array, name="image")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    spatial_shape = array.shape[1:]
    grid = plan_tiles(config, spatial_shape, tile_shape=tile_shape, memory_budget=memory_budget)
    if batch_size is None:
        per_tile = max(estimate_tile_bytes(config, grid.tile_shape), 1)
        batch_size = int(min(max(memory_budget // per_tile, 1), len(grid)))
    if channels_last is None:
        channels_last = next(model.parameters()).device.type == "cpu"
    logger.info(
        "predicting %s with %d tile(s) of %s, batch %d",
        spatial_shape,
        len(grid),
        grid.tile_shape,
        batch_size,
    )
    try:
        output = np.empty((config.n_classes, *spatial_shape), dtype=np.float32)
    except MemoryError:  # the estimate said it fits, the allocator disagrees
        needed = 4 * config.n_classes * math.prod(spatial_shape)
        raise ValueError(too_large_message(array.shape, needed, None, name="image")) from None
    tiles = list(grid)
    bar = _progress_bar(len(tiles), enabled=progress)
    with inference_mode(model, channels_last=channels_last):
        for first in range(0, len(tiles), batch_size):
            batch_tiles = tiles[first : first + batch_size]
            windows = np.stack(
                [read_window(array, tile.input_start, grid.tile_shape) for tile in batch_tiles]
            )
            probabilities = predict_batch(model, windows, channels_last=channels_last)
            for tile, tile_probabilities in zip(batch_tiles, probabilities):
                _paste(output, tile, tile_probabilities)
            bar.update(len(batch_tiles))
    bar.close()
    return output


def _paste(output: np.ndarray, tile: Tile, probabilities: np.ndarray) -> None:
    output[(slice(None), *tile.output_slices)] = probabilities[(slice(None), *tile.crop_slices())]


def _progress_bar(total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="tiles", unit="tile", disable=not enabled, leave=False)
