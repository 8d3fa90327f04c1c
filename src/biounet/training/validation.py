"""Validation scores that pick a run's best checkpoint (`TrainConfig.validation_metric`).

Each takes a network's (K, *spatial) soft-max output on one whole validation image and
the image's `TrainingImage` and returns a score, higher is better.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from biounet.config import TrainConfig, UNetConfig
from biounet.data.dataset import TrainingImage

# (probabilities (K, *spatial), training image) -> score, higher is better
ScoreFunction = Callable[[np.ndarray, TrainingImage], float]


def foreground_iou(probabilities: np.ndarray, item: TrainingImage) -> float:
    """Jaccard index of predicted foreground (p > 0.5) against target foreground."""
    predicted = probabilities[0] < 0.5
    truth = item.target > 0
    union = np.logical_or(predicted, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(predicted, truth).sum() / union)


def rand_score(probabilities: np.ndarray, item: TrainingImage) -> float:
    """1 - ISBI 2012 Rand error (higher is better), for membrane segmentation."""
    from biounet.metrics.isbi import rand_error

    return 1.0 - rand_error(item.labels, 1.0 - probabilities[0]).value


def closed_rand_score(probabilities: np.ndarray, item: TrainingImage) -> float:
    """1 - ISBI 2012 Rand error of the map after `biounet.boundaries.close_boundaries`.

    What `reproduce isbi2012` reports beside the raw map's error; picking the checkpoint
    by it selects for the post-processed segmentation that is scored.
    """
    from biounet.boundaries import close_boundaries
    from biounet.metrics.isbi import rand_error

    foreground = (1.0 - probabilities[0]).astype(np.float32)
    return 1.0 - rand_error(item.labels, close_boundaries(foreground)).value


def ap50_score(
    probabilities: np.ndarray,
    item: TrainingImage,
    *,
    boundary_class: bool = False,
    spacing: tuple[float, ...] | None = None,
) -> float:
    """Instance AP at IoU 0.5 after the default post-processing, for cells and nuclei.

    With `boundary_class` (a background / interior / boundary network) the predicted
    interiors seed the watershed (`biounet.postprocess.instances_from_probabilities`);
    otherwise its distance seeds are measured with `spacing` (`TrainConfig.spacing`).
    """
    from biounet.metrics.matching import match_instances
    from biounet.postprocess import PostprocessConfig, instances_from_probabilities

    config = None if boundary_class or spacing is None else PostprocessConfig(spacing=spacing)
    instances = instances_from_probabilities(
        probabilities, boundary_class=boundary_class, config=config
    )
    return match_instances(item.labels, instances, thresholds=(0.5,))[0].average_precision


SCORES: dict[str, ScoreFunction] = {
    "foreground_iou": foreground_iou,
    "rand": rand_score,
    "closed_rand": closed_rand_score,
    "ap50": ap50_score,
}


def check_metric(metric: str, model_config: UNetConfig) -> None:
    from biounet.boundaries import membrane_network_problem

    problem = membrane_network_problem(model_config) if metric == "closed_rand" else None
    if problem:
        raise ValueError(
            "validation_metric closed_rand closes the membranes of a two-class cell/membrane "
            f"network; this model {problem} (use ap50 for its objects)"
        )


def score_function(model_config: UNetConfig, train_config: TrainConfig) -> ScoreFunction:
    """Return the score of `train_config.validation_metric` for this network.

    `ap50` seeds the watershed with the interiors of a boundary-class network and measures
    distance seeds with `train_config.spacing`, as prediction does.

    Raises:
        ValueError: if the metric does not apply to the network (closed_rand needs a
            two-class membrane network).
    """
    check_metric(train_config.validation_metric, model_config)
    score = SCORES[train_config.validation_metric]
    if score is ap50_score and model_config.boundary_class:
        return functools.partial(ap50_score, boundary_class=True)
    if score is ap50_score and train_config.spacing is not None:
        return functools.partial(ap50_score, spacing=train_config.spacing)
    return score
