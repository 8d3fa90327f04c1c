"""Named starting points for training, and run configs as JSON (model, train, augment).

`paper`: Ronneberger et al. 2015, Sec. 3 and 3.1: the paper's network, 572x572 tiles,
batch 1, SGD with momentum 0.99, w0 = 10, sigma = 5 px, elastic deformation on a 3x3
grid with 10 px standard deviation. `cpu`: the same recipe scaled to learn something
useful within minutes on 2 CPU cores: 16 base channels, smaller tiles, Adam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from biounet.augment.pipeline import AugmentConfig
from biounet.config import TrainConfig, UNetConfig


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run; saved as the run folder's config.json."""

    model: UNetConfig
    train: TrainConfig
    augment: AugmentConfig | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
            "augment": None if self.augment is None else self.augment.to_dict(),
        }

    def updated(self, values: Mapping[str, Any]) -> RunConfig:
        """Return a copy with sections overridden by `values` ({"train": {...}, ...}).

        The augmentation follows the network's ndim (a {"model": {"ndim": 3}} run gets
        3-D elastic deformation) unless the augment section names its own ndim.

        Raises:
            ValueError: for unknown sections or keys (named).
        """
        unknown = set(values) - {"model", "train", "augment"}
        if unknown:
            raise ValueError(
                f"unknown config sections {sorted(unknown)}; expected model, train, augment"
            )
        sections = {}
        for name, section_type in (
            ("model", UNetConfig),
            ("train", TrainConfig),
            ("augment", AugmentConfig),
        ):
            current = getattr(self, name)
            if name not in values:
                sections[name] = current
            elif values[name] is None:
                if name != "augment":
                    raise ValueError(f"config section {name!r} cannot be null")
                sections[name] = None
            else:
                if not isinstance(values[name], Mapping):
                    raise TypeError(f"config section {name!r} must be an object")
                base = current.to_dict() if current is not None else {}
                if name == "augment":  # per-axis values given for the network's axes
                    base["ndim"] = sections["model"].ndim
                sections[name] = section_type.from_dict({**base, **values[name]})
        model, augment = sections["model"], sections["augment"]
        if augment is not None and augment.ndim != model.ndim and "augment" not in values:
            sections["augment"] = dataclasses.replace(augment, ndim=model.ndim)
        return RunConfig(**sections)


PRESETS = ("paper", "cpu")


def preset(name: str) -> RunConfig:
    """Return the named preset.

    Example:
        >>> preset("paper").train.momentum, preset("paper").model.base_channels
        (0.99, 64)
    """
    if name == "paper":
        return RunConfig(
            model=UNetConfig(),
            train=TrainConfig(
                iterations=10000,
                tile_shape=(572, 572),
                batch_size=1,
                optimizer="sgd",
                learning_rate=0.01,
                momentum=0.99,
                validate_every=500,
                checkpoint_every=500,
            ),
            augment=AugmentConfig(),
        )
    if name == "cpu":
        return RunConfig(
            model=UNetConfig(base_channels=16),
            train=TrainConfig(
                iterations=1500,
                tile_shape=(380, 380),  # measured 0.26 s per tile forward+backward on 2 cores
                batch_size=2,
                optimizer="adam",
                learning_rate=1e-3,
                lr_schedule="cosine",
                validate_every=100,
                checkpoint_every=100,
                # on 2 cores a loader process steals from the step's threads: bench_train
                # measured +16% per step with 1 worker, +6-7% preparing tiles in-process
                workers=0,
            ),
            augment=AugmentConfig(),
        )
    raise ValueError(f"preset must be one of {list(PRESETS)}, got {name!r}")


def replace_train(config: RunConfig, **changes: Any) -> RunConfig:
    """Return `config` with the given TrainConfig fields replaced (None values ignored)."""
    changes = {key: value for key, value in changes.items() if value is not None}
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))
