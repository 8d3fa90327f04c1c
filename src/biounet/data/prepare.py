"""Turn an image array as read from disk into normalised network inputs, page by page."""

from __future__ import annotations

import numpy as np

from biounet.data.normalize import (
    check_polarity,
    normalize_percentile,
    normalize_zscore,
    to_float_image,
)

_MAX_SAMPLES = 4  # a last axis of at most 4 is colour samples (grey+alpha, RGB, RGBA)


def split_pages(raw: np.ndarray, *, ndim: int, name: str = "image") -> list[np.ndarray]:
    """Split a raw array into the images it holds, colour samples (if any) still last.

    A 2-D network takes (Y, X) and (Y, X, S) as one image and (N, Y, X) and
    (N, Y, X, S) as N pages (multi-page TIFF); a 3-D network takes (Z, Y, X) and
    (Z, Y, X, S) as one volume.

    Example:
        >>> [page.shape for page in split_pages(np.zeros((3, 8, 9)), ndim=2)]
        [(8, 9), (8, 9), (8, 9)]
        >>> [page.shape for page in split_pages(np.zeros((8, 9, 3)), ndim=2)]
        [(8, 9, 3)]
    """
    raw = np.asarray(raw)
    has_samples = raw.ndim > ndim and raw.shape[-1] <= _MAX_SAMPLES
    spatial_axes = raw.ndim - (1 if has_samples else 0)
    if spatial_axes == ndim:
        return [raw]
    if spatial_axes == ndim + 1 and ndim == 2:
        return [raw[index] for index in range(raw.shape[0])]
    axes = "Z, Y, X" if ndim == 3 else "Y, X"
    raise ValueError(
        f"{name} has shape {raw.shape}; a {ndim}-D network takes ({axes}) images"
        f"{' or (N, Y, X) stacks' if ndim == 2 else ''}, optionally with colour samples last"
    )


def prepare_page(
    page: np.ndarray,
    *,
    in_channels: int,
    normalization: str = "percentile",
    polarity: str = "as_is",
    name: str = "image",
) -> np.ndarray:
    """Return one page as float32 (C, *spatial), normalised, with C = `in_channels`.

    A grey network refuses true colour (it would have to guess the conversion);
    grey stored as RGB (R = G = B) is accepted as grey. Normalisation
    "percentile" maps the 1st/99.8th percentiles to 0/1 per channel (CSBDeep's
    convention), "zscore" gives zero mean and unit variance, "none" keeps values.
    Use what the model was trained with (`TrainConfig.normalization` and
    `TrainConfig.polarity`: "bright_objects" inverts a channel with a bright background
    as it normalises it, and needs "percentile" or "zscore").
    """
    page = np.asarray(page)
    if page.dtype.kind not in "biuf":
        raise ValueError(f"{name} has dtype {page.dtype}; expected integer, float or bool pixels")
    if page.size == 0:
        raise ValueError(f"{name} is empty (shape {page.shape})")
    if not np.isfinite(page).all():
        raise ValueError(f"{name} contains NaN or infinite pixels")
    is_colour = page.ndim >= 3 and page.shape[-1] in (3, 4)
    if in_channels == 1:
        if is_colour:
            rgb = page[..., :3]
            if not (
                np.array_equal(rgb[..., 0], rgb[..., 1])
                and np.array_equal(rgb[..., 0], rgb[..., 2])
            ):
                raise ValueError(
                    f"{name} has 3 colour channels; the model expects 1 (grey); convert it "
                    "to grey first or use a model trained on RGB"
                )
        array = to_float_image(page, channels="grey")[None]
    elif in_channels == 3:
        if not is_colour:
            raise ValueError(
                f"{name} is grey (shape {page.shape}); the model expects 3 channels (RGB)"
            )
        array = to_float_image(page, channels="rgb")
    else:
        raise ValueError(
            f"{name} has shape {page.shape}; a model with {in_channels} input channels needs "
            "arrays prepared in Python ((C, Y, X), see biounet.predict_tiled)"
        )
    spatial = tuple(range(1, array.ndim))
    if normalization == "percentile":
        return normalize_percentile(array, axis=spatial, polarity=polarity)
    if normalization == "zscore":
        return normalize_zscore(array, axis=spatial, polarity=polarity)
    if normalization == "none":
        check_polarity(polarity, normalization)
        return array
    raise ValueError(
        f"normalization must be 'percentile', 'zscore' or 'none', got {normalization!r}"
    )
