"""Frozen, JSON round-tripping configuration dataclasses (architecture, tiling)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from biounet.data.normalize import POLARITIES

PADDINGS = ("valid", "same")
NORMS = (None, "batch", "group", "instance")
UPSAMPLINGS = ("upconv", "bilinear")

_Config = TypeVar("_Config", bound="_JsonConfig")


class _JsonConfig:
    """Mixin: `to_dict` / `from_dict` / JSON for a frozen dataclass, unknown keys rejected."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[_Config], values: Mapping[str, Any]) -> _Config:
        if not isinstance(values, Mapping):
            raise TypeError(
                f"{cls.__name__} must be built from a mapping, got {type(values).__name__}"
            )
        known = {field.name: field for field in fields(cls)}  # type: ignore[arg-type]
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} keys {sorted(unknown)}; known keys: {sorted(known)}"
            )
        converted = {key: _from_json_value(value) for key, value in values.items()}
        return cls(**converted)

    @classmethod
    def from_json(cls: type[_Config], text: str) -> _Config:
        return cls.from_dict(json.loads(text))


def _from_json_value(value: Any) -> Any:
    # JSON has no tuples; configs store sequences as tuples so they stay hashable.
    return tuple(value) if isinstance(value, list) else value


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


# Upper bounds of UNetConfig. A config arrives from files (weight files, checkpoints, run
# configs) that may be damaged or hostile; without bounds a few bytes could ask for any
# amount of memory. Each is many times what biomedical U-Nets use (the paper: depth 4,
# 64 base channels, 1024 at the widest level).
MAX_DEPTH = 10
MAX_CHANNELS = 1024  # in_channels, n_classes and base_channels each
MAX_WIDTH = 8192  # channels of the widest level, base_channels * 2**depth


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class UNetConfig(_JsonConfig):
    """Architecture of a U-Net; the defaults are the network of Ronneberger et al. 2015, Fig. 1.

    Stored verbatim (as JSON) in every weight file and checkpoint. Sizes are bounded
    (`MAX_DEPTH`, `MAX_CHANNELS`, `MAX_WIDTH`), so a config read from a file cannot ask
    for unbounded memory.

    Attributes:
        in_channels: image channels.
        n_classes: output classes of the final 1x1 convolution (softmax over them).
        depth: number of 2x2 max-poolings (the paper: 4, i.e. 5 resolution levels).
        base_channels: feature channels of the first level, doubled at every level (64).
        ndim: spatial axes: 2 -> (Y, X), 3 -> (Z, Y, X) (Cicek et al. 2016).
        padding: "valid" (unpadded 3x3 convs, the paper) or "same" (zero-padded).
        norm: None (the paper), "batch", "group" or "instance" after every 3x3 conv.
        upsampling: "upconv" (2x2 up-convolution, the paper) or "bilinear" + 1x1 conv.
        dropout: drop-out probability at the end of the contracting path (Sec. 3.1: 0.5).
        pool_z: 3-D only, for anisotropic stacks: one bool per pooling level, True where
            that level pools Z too (2x2x2, Cicek et al. 2016), False where it pools and
            up-convolves only Y and X ((1, 2, 2)); the convolutions stay 3x3x3 at every
            level. None (default): every level pools Z (isotropic). `biounet.geometry`
            knows the per-axis sizes this gives.
        boundary_class: the three output classes are 0 background, 1 cell interior,
            2 cell boundary (the pixels of a cell that face the background or another
            cell), a target training derives from instance labels; needs
            ``n_classes=3``. Post-processing then seeds the watershed with the predicted
            interiors, to split touching cells that share a long contact, where a
            one-pixel background gap is hard to predict. The "U-Net (3 class)" baseline
            of Schmidt et al. 2018 (StarDist) and Caicedo et al. 2019, not part of the
            2015 paper. Part of the config, so every weight file and export says how
            its outputs are read.

    Example:
        >>> UNetConfig.from_json(UNetConfig(depth=3).to_json()) == UNetConfig(depth=3)
        True
        >>> UNetConfig(ndim=3, depth=3, pool_z=(False, True, True)).pool_z
        (False, True, True)
    """

    in_channels: int = 1
    n_classes: int = 2
    depth: int = 4
    base_channels: int = 64
    ndim: int = 2
    padding: str = "valid"
    norm: str | None = None
    upsampling: str = "upconv"
    dropout: float = 0.5
    pool_z: tuple[bool, ...] | None = None
    boundary_class: bool = False

    def __post_init__(self) -> None:
        _check_int("in_channels", self.in_channels, 1, MAX_CHANNELS)
        _check_int("n_classes", self.n_classes, 2, MAX_CHANNELS)
        _check_int("depth", self.depth, 0, MAX_DEPTH)
        _check_int("base_channels", self.base_channels, 1, MAX_CHANNELS)
        if self.base_channels * 2**self.depth > MAX_WIDTH:
            raise ValueError(
                f"base_channels * 2**depth (the widest level) must be <= {MAX_WIDTH}, got "
                f"{self.base_channels} * 2**{self.depth} = {self.base_channels * 2**self.depth}"
            )
        _check_choice("ndim", self.ndim, (2, 3))
        _check_choice("padding", self.padding, PADDINGS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("upsampling", self.upsampling, UPSAMPLINGS)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise TypeError(f"dropout must be a number, got {type(self.dropout).__name__}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm == "group" and self.base_channels % 2:
            raise ValueError(
                f"base_channels must be even for norm='group', got {self.base_channels}"
            )
        _check_pool_z(self.pool_z, ndim=self.ndim, depth=self.depth)
        if not isinstance(self.boundary_class, bool):
            raise TypeError(f"boundary_class must be true or false, got {self.boundary_class!r}")
        if self.boundary_class and self.n_classes != 3:
            raise ValueError(
                "boundary_class needs n_classes=3 (background, interior, boundary), got "
                f"n_classes={self.n_classes}"
            )


def _check_pool_z(pool_z: Any, *, ndim: int, depth: int) -> None:
    if pool_z is None:
        return
    if not isinstance(pool_z, tuple) or not all(isinstance(value, bool) for value in pool_z):
        raise TypeError(f"pool_z must be None or a tuple of bools, got {pool_z!r}")
    if ndim != 3:
        raise ValueError(f"pool_z applies to 3-D networks only (ndim=3), got ndim={ndim}")
    if len(pool_z) != depth:
        raise ValueError(
            f"pool_z {pool_z} needs one bool per pooling level, {depth} for depth={depth}"
        )


OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("float32", "bfloat16")
VALIDATION_METRICS = ("foreground_iou", "rand", "closed_rand", "ap50")


@dataclass(frozen=True)
class TrainConfig(_JsonConfig):
    """How to train; the `paper` preset is Ronneberger et al. 2015, Sec. 3.

    Attributes:
        iterations: optimiser steps.
        tile_shape: input tile per axis, a valid input size of the network; the
            paper favours large tiles over large batches (572 with batch 1).
        batch_size: tiles per step (paper: 1).
        optimizer: "sgd" (paper, with `momentum` 0.99) or "adam".
        learning_rate, momentum, weight_decay: optimiser settings.
        lr_schedule: "constant" (the paper) or "cosine": the learning rate falls from
            `learning_rate` to 0 along half a cosine over `iterations` (Loshchilov and
            Hutter 2017); a function of the step, so resume stays exact. Resuming
            with other `iterations` bends the rest of the cosine to the new end.
        w0, sigma_px, class_weights: weight map of eq. 2 (paper: 10, 5 px, balanced).
        separate_touching: with 2 classes, cell pixels that touch a different cell
            become background in the target, the separation border of Sec. 3 and
            Fig. 3c that the border term of eq. 2 then stresses.
        foreground_fraction: share of tiles centred on a random foreground pixel
            (0: tiles uniformly placed, as in the paper).
        validate_every, checkpoint_every: in iterations.
        seed: seeds tile sampling, augmentation, initialisation and drop-out.
        workers: DataLoader worker processes preparing tiles beside the training step.
        normalization: intensity normalisation of every image ("percentile", "zscore").
        polarity: "as_is", or "bright_objects": images (channels) with a brighter
            background than objects are inverted as they are normalised, so that a set
            mixing fluorescence with brightfield or H&E shows the network bright nuclei
            only (`biounet.data.normalize.bright_background`). Stored in the weight
            file beside `normalization`, and applied by `biounet predict` as stored.
        validation_metric: what picks best.safetensors: "foreground_iou", "rand"
            (1 - ISBI Rand error, for membranes), "closed_rand" (the same after
            `biounet.boundaries.close_boundaries`) or "ap50" (instance AP at IoU 0.5).
        precision: "float32" (the paper) or "bfloat16": the forward pass runs under
            torch.autocast with bfloat16 matrix products, while weights, optimiser state
            and the loss stay float32. Faster on CPUs with bfloat16 dot-product
            instructions (AVX512-BF16, AMX); validation and prediction stay float32.
        skeleton_recall: weight of the skeleton recall term (Kirchhoff et al. 2024,
            `biounet.losses.skeleton_recall`) added to the loss of eq. 1; 0 (the paper)
            leaves it out. It stresses the connectivity of thin structures (membrane gaps
            merge cells, spurious membranes split them); costs a skeletonisation per
            class, tile and (in 3-D) slice, in the training step.
        spacing: size of a pixel (voxel) along each spatial axis, in the unit of
            `sigma_px`, for the distances d1, d2 of eq. 2; None is 1 on every axis (the
            paper's isotropic pixels). For an anisotropic stack with 40 nm sections and
            5 nm pixels, (8, 1, 1) keeps sigma at 5 in-plane pixels while the border term
            reaches across 8 times fewer sections.
    """

    iterations: int = 2000
    tile_shape: tuple[int, ...] = (572, 572)
    batch_size: int = 1
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    w0: float = 10.0
    sigma_px: float = 5.0
    class_weights: str | None = "balanced"
    separate_touching: bool = True
    foreground_fraction: float = 0.0
    validate_every: int = 100
    checkpoint_every: int = 100
    seed: int = 0
    workers: int = 1
    normalization: str = "percentile"
    polarity: str = "as_is"
    validation_metric: str = "foreground_iou"
    precision: str = "float32"
    skeleton_recall: float = 0.0
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _check_choice("validation_metric", self.validation_metric, VALIDATION_METRICS)
        _check_choice("precision", self.precision, PRECISIONS)
        for name in ("iterations", "batch_size", "validate_every", "checkpoint_every"):
            _check_int(name, getattr(self, name), 1)
        _check_int("seed", self.seed, 0)
        _check_int("workers", self.workers, 0)
        if not isinstance(self.tile_shape, tuple) or not self.tile_shape:
            raise TypeError(f"tile_shape must be a tuple of sizes, got {self.tile_shape!r}")
        for size in self.tile_shape:
            _check_int("tile_shape", size, 1)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("class_weights", self.class_weights, ("balanced", None))
        _check_choice("normalization", self.normalization, ("percentile", "zscore"))
        _check_choice("polarity", self.polarity, POLARITIES)
        if not isinstance(self.separate_touching, bool):
            raise TypeError(
                f"separate_touching must be true or false, got {self.separate_touching!r}"
            )
        for name, low, high in (
            ("learning_rate", 0.0, None),
            ("momentum", 0.0, 1.0),
            ("weight_decay", 0.0, None),
            ("w0", 0.0, None),
            ("sigma_px", 0.0, None),
            ("foreground_fraction", 0.0, 1.0),
            ("skeleton_recall", 0.0, None),
        ):
            _check_number(name, getattr(self, name), low, high)
        if self.sigma_px == 0 or self.learning_rate == 0:
            raise ValueError("sigma_px and learning_rate must be positive")
        object.__setattr__(self, "spacing", check_spacing(self.spacing))


def check_spacing(spacing: Any, name: str = "spacing") -> tuple[float, ...] | None:
    """Return a pixel size per axis as a tuple of floats (None stays None), or raise.

    Shared by `TrainConfig.spacing`, `PostprocessConfig.spacing` and the CLI's --spacing.

    Raises:
        TypeError: for something other than a non-empty list of numbers.
        ValueError: for a size that is not finite and > 0.
    """
    if spacing is None:
        return None
    if not isinstance(spacing, (tuple, list)) or not spacing or any(
        isinstance(size, bool) or not isinstance(size, (int, float)) for size in spacing
    ):
        raise TypeError(f"{name} must be None or a list of sizes, one per axis, got {spacing!r}")
    if not all(math.isfinite(size) and size > 0 for size in spacing):
        raise ValueError(f"{name} must be finite and > 0 on every axis, got {list(spacing)}")
    return tuple(float(size) for size in spacing)


def _check_number(name: str, value: Any, low: float, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
