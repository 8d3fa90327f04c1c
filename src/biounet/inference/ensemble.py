"""Model ensembles: average the class probabilities of several trained networks.

Averaging the softmax outputs of independently trained networks, or of checkpoints of
one run, cancels part of each network's errors. nnU-Net ensembles its cross-validation
folds this way (Isensee et al. 2021); snapshot ensembles take the checkpoints of one run
(Huang et al. 2017). The paper itself predicts with one network. Every member is
predicted with the overlap-tile strategy (`predict_tiled`, optionally `predict_tta`), so
members may differ in depth, width or padding; they must agree on what they predict.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from biounet.inference.predict import predict_tiled
from biounet.inference.tta import predict_tta

# What the members must share for their probabilities to be averaged as one prediction.
_SHARED_FIELDS = ("ndim", "in_channels", "n_classes", "boundary_class")


def check_ensemble(models: Sequence[nn.Module], *, name: str = "models") -> None:
    """Raise unless `models` is a non-empty sequence of networks that predict alike.

    Raises:
        ValueError: no models, or a member that differs from the first (`check_members`).
        TypeError: `models` not a sequence, or a member without a `config`.
    """
    if isinstance(models, nn.Module) or not isinstance(models, Sequence):
        raise TypeError(f"{name} must be a sequence of networks, got {type(models).__name__}")
    if not models:
        raise ValueError(f"{name} must hold at least one network, got none")
    configs = []
    for index, model in enumerate(models):
        config = getattr(model, "config", None)
        if config is None:
            raise TypeError(
                f"{name}[{index}] must be a biounet network with a config, "
                f"got {type(model).__name__}"
            )
        configs.append(config)
    check_members(configs, [f"{name}[{index}]" for index in range(len(configs))])


def check_members(configs: Sequence, names: Sequence[str]) -> None:
    """Raise ValueError naming the first member whose `UNetConfig` predicts differently.

    Members must share the spatial axes, input channels, classes and boundary class of
    the first; depth, width, padding and normalisation may differ.
    """
    for config, name in zip(configs[1:], names[1:]):
        for field in _SHARED_FIELDS:
            first, this = getattr(configs[0], field), getattr(config, field)
            if this != first:
                raise ValueError(
                    f"{name} has {field}={this!r} but {names[0]} has {first!r}; "
                    "ensemble members must predict the same classes from the same input"
                )


def predict_ensemble(
    models: Sequence[nn.Module], image, *, tta: bool = False, **predict_tiled_kwargs
) -> np.ndarray:
    """Return the class probabilities averaged over the networks in `models`.

    Each member predicts the whole image with the overlap-tile strategy (`predict_tiled`,
    or `predict_tta` with `tta`), and the members' probabilities are averaged with equal
    weights in float64. One member gives exactly that member's prediction.

    Args:
        models: networks with one `config.ndim`, `in_channels`, `n_classes` and
            `boundary_class` (`UNet`s, or anything `predict_tiled` accepts).
        image: (*spatial) or (C, *spatial) real-valued array, already normalised.
        tta: average every member over the 8 flips/rotations too (8x the time).
        **predict_tiled_kwargs: passed on (tile_shape, batch_size, memory_budget, ...);
            a given `tile_shape` must be valid for every member.

    Returns:
        (n_classes, *spatial) float32 probabilities; they sum to 1 over classes.

    Example:
        >>> from biounet.config import UNetConfig
        >>> from biounet.model.unet import UNet
        >>> members = [UNet(UNetConfig(depth=1, base_channels=2)) for _ in range(2)]
        >>> predict_ensemble(members, np.zeros((12, 12))).shape
        (2, 12, 12)
    """
    check_ensemble(models)
    predict = predict_tta if tta else predict_tiled
    if len(models) == 1:
        return predict(models[0], image, **predict_tiled_kwargs)
    total = None
    for model in models:
        probabilities = predict(model, image, **predict_tiled_kwargs)
        if total is None:
            total = probabilities.astype(np.float64)
        else:
            total += probabilities
    return (total / len(models)).astype(np.float32)
