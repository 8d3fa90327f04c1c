"""Frozen, JSON round-tripping configuration dataclasses (architecture, tiling)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

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


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class UNetConfig(_JsonConfig):
    """Architecture of a U-Net; the defaults are the network of Ronneberger et al. 2015, Fig. 1.

    Stored verbatim (as JSON) in every weight file and checkpoint.

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

    Example:
        >>> UNetConfig.from_json(UNetConfig(depth=3).to_json()) == UNetConfig(depth=3)
        True
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

    def __post_init__(self) -> None:
        _check_int("in_channels", self.in_channels, 1)
        _check_int("n_classes", self.n_classes, 2)
        _check_int("depth", self.depth, 0)
        _check_int("base_channels", self.base_channels, 1)
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
