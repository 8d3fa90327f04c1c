"""The optimiser and learning-rate schedule of a training run (Ronneberger et al. 2015, Sec. 3)."""

from __future__ import annotations

import math

import torch

from biounet.config import TrainConfig


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with high momentum (paper: 0.99, so many past tiles steer each update) or Adam."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )


def learning_rate_at(config: TrainConfig, step: int) -> float:
    """Return the learning rate of the step that follows `step` completed steps.

    Example:
        >>> from biounet.config import TrainConfig
        >>> cosine = TrainConfig(iterations=100, learning_rate=1.0, lr_schedule="cosine")
        >>> learning_rate_at(cosine, 0), learning_rate_at(cosine, 50)
        (1.0, 0.5)
    """
    if config.lr_schedule == "cosine":
        progress = min(step / config.iterations, 1.0)
        return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.learning_rate
