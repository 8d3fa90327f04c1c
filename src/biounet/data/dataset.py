"""Training tiles: random windows of annotated images with targets, weight maps, augmentation.

Ronneberger et al. 2015, Sec. 3: large input tiles of a valid size, the loss taken over
the output window only, border pixels extrapolated by mirroring, and the augmentations
of Sec. 3.1 applied on the fly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from biounet.augment.pipeline import AugmentConfig, augment
from biounet.config import TrainConfig, UNetConfig
from biounet.data.normalize import normalize_percentile, normalize_zscore
from biounet.geometry import config_output_shape
from biounet.inference.tiling import read_window
from biounet.targets import boundary_classes, touching_borders
from biounet.weights import balanced_class_map, border_weight_map, weight_map


@dataclass(frozen=True, eq=False)
class TrainingImage:
    """One image ready for tile sampling.

    Attributes:
        name: where it came from.
        image: (C, *spatial) float32, normalised.
        target: (*spatial) int64 class per pixel.
        weights: (*spatial) float32 loss weights w(x) of eq. 2.
        labels: (*spatial) int32 instance ids, kept for validation.
    """

    name: str
    image: np.ndarray
    target: np.ndarray
    weights: np.ndarray
    labels: np.ndarray


def normalize(image: np.ndarray, method: str, polarity: str = "as_is") -> np.ndarray:
    """Normalise a (C, *spatial) image channel by channel ("percentile" or "zscore").

    `polarity` "bright_objects" inverts the channels with a bright background
    (`biounet.data.normalize.bright_background`) as it scales them.
    """
    axes = tuple(range(1, image.ndim))
    if method == "percentile":
        return normalize_percentile(image, axis=axes, polarity=polarity)
    if method == "zscore":
        return normalize_zscore(image, axis=axes, polarity=polarity)
    raise ValueError(f"normalization must be 'percentile' or 'zscore', got {method!r}")


def make_training_image(
    name: str,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    model_config: UNetConfig,
    train_config: TrainConfig,
    source: str = "",
) -> TrainingImage:
    """Normalise an image and derive its target classes and weight map from `labels`.

    With two classes the target is foreground (any id > 0) against background, with the
    pixels where two instances touch made background (`TrainConfig.separate_touching`,
    Sec. 3 and Fig. 3c), and the weight map of eq. 2 stresses those borders; with more
    classes the label values are the classes. `labels` are kept as given, for
    validation against the original instances.

    Args:
        image: (C, *spatial) float32 image, channels as the network expects.
        labels: (*spatial) int32 instance ids (2 classes) or class ids.
        source: the file the image came from, named in errors beside `name`.
    """
    if image.shape[1:] != labels.shape:
        raise ValueError(
            f"{name}: image spatial shape {image.shape[1:]} differs from labels {labels.shape}"
        )
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError(
            f"training image {name}{f' ({source})' if source else ''} contains NaN or "
            "infinite pixels; replace them (e.g. by the image's median) before training"
        )
    spacing = train_config.spacing
    if spacing is not None and len(spacing) != labels.ndim:
        raise ValueError(
            f"train.spacing must have one size per axis of the {model_config.ndim}-D "
            f"network, got {list(spacing)}"
        )
    if model_config.boundary_class:
        target, weights = _boundary_target_and_weights(labels, train_config)
    else:
        target, weights = _target_and_weights(name, labels, model_config, train_config)
    return TrainingImage(
        name=name,
        image=normalize(
            image.astype(np.float32), train_config.normalization, train_config.polarity
        ),
        target=target,
        weights=weights.astype(np.float32),
        labels=labels.astype(np.int32),
    )


def _target_and_weights(
    name: str, labels: np.ndarray, model_config: UNetConfig, train_config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's target (foreground with separation borders, or label classes) and eq. 2."""
    separated = labels
    if model_config.n_classes == 2:
        if train_config.separate_touching:
            separated = np.where(touching_borders(labels), 0, labels)
        target = (separated > 0).astype(np.int64)
    else:
        if labels.max() >= model_config.n_classes:
            raise ValueError(
                f"{name}: label value {labels.max()} is not a class of a "
                f"{model_config.n_classes}-class network"
            )
        target = labels.astype(np.int64)
    weights = weight_map(
        separated,
        w0=train_config.w0,
        sigma=train_config.sigma_px,
        class_weights=train_config.class_weights,
        spacing=train_config.spacing or 1.0,
    )
    return target, weights


def _boundary_target_and_weights(
    labels: np.ndarray, train_config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Background / interior / boundary (`UNetConfig.boundary_class`) and its weights:
    class balance over the three classes + the border term of eq. 2, which stays on the
    background gaps between nearby cells."""
    target = boundary_classes(labels)
    if train_config.class_weights == "balanced":
        weights = balanced_class_map(target)
    else:
        weights = np.ones(labels.shape, dtype=np.float32)
    border = border_weight_map(
        labels, w0=train_config.w0, sigma=train_config.sigma_px, spacing=train_config.spacing or 1.0
    )
    return target, weights + border


class TileDataset(torch.utils.data.Dataset):
    """Item i is the training tile of iteration-slot i, drawn from a generator seeded by (seed, i).

    Seeding per item makes every tile independent of worker count and order, so a
    resumed run sees exactly the tiles the uninterrupted run would have seen.
    Returns (image (C, *tile_shape) float32, target (*output) int64, weights (*output) float32).
    """

    def __init__(
        self,
        images: Sequence[TrainingImage],
        *,
        model_config: UNetConfig,
        tile_shape: Sequence[int],
        length: int,
        seed: int = 0,
        foreground_fraction: float = 0.0,
        augment_config: AugmentConfig | None = None,
    ) -> None:
        if not images:
            raise ValueError("images must hold at least one training image")
        if augment_config is not None and augment_config.ndim != model_config.ndim:
            # a 2-D augmentation would silently deform a volume slice by slice
            raise ValueError(
                f"augment_config.ndim is {augment_config.ndim} but the network is "
                f"{model_config.ndim}-D; set AugmentConfig(ndim={model_config.ndim})"
            )
        self.images = list(images)
        self.tile_shape = tuple(int(size) for size in tile_shape)
        self.output_shape = config_output_shape(model_config, self.tile_shape)
        self.offset = tuple((t - o) // 2 for t, o in zip(self.tile_shape, self.output_shape))
        self.length = length
        self.seed = seed
        self.foreground_fraction = foreground_fraction
        self.augment_config = augment_config
        self.margin = _augment_margin(self.tile_shape, augment_config)
        areas = np.array([math.prod(item.target.shape) for item in self.images], dtype=float)
        self.image_probabilities = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        item = self.images[int(rng.choice(len(self.images), p=self.image_probabilities))]
        output_start = self._output_start(item, rng)
        window_start = [s - o - m for s, o, m in zip(output_start, self.offset, self.margin)]
        window_shape = [t + 2 * m for t, m in zip(self.tile_shape, self.margin)]
        image = read_window(item.image, window_start, window_shape)
        labels = read_window(item.target, window_start, window_shape)
        weights = read_window(item.weights, window_start, window_shape)
        if self.augment_config is not None:
            image, labels, weights = augment(
                image, labels, weights, config=self.augment_config, rng=rng
            )
        image = image[(slice(None), *_centre(image.shape[1:], self.tile_shape))]
        output = _centre(labels.shape, self.output_shape)
        return (
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(labels[output], dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(weights[output], dtype=np.float32)),
        )

    def _output_start(self, item: TrainingImage, rng: np.random.Generator) -> list[int]:
        shape = item.target.shape
        # every pixel can fall into an output window; smaller images are mirrored
        low = [min(0, size - out) for size, out in zip(shape, self.output_shape)]
        high = [max(0, size - out) for size, out in zip(shape, self.output_shape)]
        if self.foreground_fraction > 0 and rng.random() < self.foreground_fraction:
            foreground = np.flatnonzero(item.target)
            if foreground.size:
                centre = np.unravel_index(int(rng.choice(foreground)), shape)
                return [
                    int(np.clip(c - out // 2, lo, hi))
                    for c, out, lo, hi in zip(centre, self.output_shape, low, high)
                ]
        return [int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high)]


def _centre(shape: Sequence[int], target: Sequence[int]) -> tuple[slice, ...]:
    return tuple(
        slice((size - want) // 2, (size - want) // 2 + want) for size, want in zip(shape, target)
    )


def _augment_margin(tile_shape: tuple[int, ...], config: AugmentConfig | None) -> tuple[int, ...]:
    """Extra context read around a tile so rotation and deformation never pull in mirrors."""
    if config is None:
        return (0,) * len(tile_shape)
    sigma = np.broadcast_to(np.asarray(config.elastic_sigma_px, dtype=float), (len(tile_shape),))
    shift = np.broadcast_to(np.asarray(config.max_shift_px, dtype=float), (len(tile_shape),))
    # Without tilt a 3-D tile turns in the (Y, X) plane only, so Z needs no rotation margin
    # (anisotropic stacks are thin: a full 3-D diagonal would double their Z reads).
    is_tilted = config.max_tilt_deg > 0
    rotating = range(len(tile_shape)) if is_tilted else range(len(tile_shape) - 2, len(tile_shape))
    rotates = config.max_rotation_deg > 0 or is_tilted
    diagonal = math.sqrt(sum(tile_shape[axis] ** 2 for axis in rotating))
    # a zoom below 1 shows 1/zoom times more of the input, shift included
    widest = 1.0 / min(float(config.scale_range[0]), 1.0)
    margins = []
    # the shift acts before the inverse rotation, so on a rotating axis it can reach its norm
    shift_norm = math.sqrt(sum(shift[axis] ** 2 for axis in rotating))
    for axis, size in enumerate(tile_shape):
        turns = rotates and axis in rotating
        reach = ((diagonal if turns else size) * widest - size) / 2
        moved = (shift_norm if turns else shift[axis]) * widest
        margins.append(int(math.ceil(reach + 3 * sigma[axis] + moved)))
    return tuple(margins)


def training_images(
    samples, *, model_config: UNetConfig, train_config: TrainConfig
) -> list[TrainingImage]:
    """Turn annotated samples (`biounet.data.layouts.Sample`) into `TrainingImage`s.

    Colour images become grey (BT.601 luma) for a one-channel network and RGB for a
    three-channel one; see `biounet.data.normalize.to_float_image`.
    """
    from biounet.data.normalize import to_float_image

    channels = "grey" if model_config.in_channels == 1 else "rgb"
    if model_config.in_channels not in (1, 3):
        raise ValueError(
            f"training from files supports 1 or 3 input channels, got {model_config.in_channels}"
        )
    items = []
    for sample in samples:
        image = to_float_image(sample.image, channels=channels)
        if channels == "grey":
            image = image[None]
        if image.ndim - 1 != model_config.ndim:
            raise ValueError(
                f"sample {sample.name} has {image.ndim - 1} spatial axes; the network is "
                f"{model_config.ndim}-D"
            )
        items.append(
            make_training_image(
                sample.name,
                image,
                sample.labels,
                model_config=model_config,
                train_config=train_config,
                source=sample.source,
            )
        )
    return items
