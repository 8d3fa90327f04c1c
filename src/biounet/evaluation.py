"""Score predictions against ground truth with the challenges' definitions, per image and pooled.

Metric groups:
  isbi      ISBI 2012 pixel, Rand and warping error (best over the organisers' thresholds)
  ctc       Cell Tracking Challenge SEG
  instance  one-to-one IoU matching at 0.5 (precision, recall, F1, AP), DSB 2018 score

A prediction is either a foreground probability map (float, in [0, 1]) or a label
image (integer). Instance metrics need labels, so probability maps are first turned
into instances by `biounet.postprocess.probabilities_to_labels`; ISBI metrics need
probabilities, so label images count as maps of 0 and 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from biounet.metrics.ctc import seg_score
from biounet.metrics.isbi import pixel_error, rand_error, warping_error
from biounet.metrics.matching import dsb_score, match_instances, pool_matches
from biounet.postprocess import PostprocessConfig, probabilities_to_labels

METRIC_GROUPS = ("isbi", "ctc", "instance")


@dataclass
class EvaluationReport:
    """Per-image rows and overall figures; `overall` pools counts where the metric allows."""

    rows: list[dict] = field(default_factory=list)
    overall: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"images": self.rows, "overall": self.overall}


def parse_metric_groups(names: str | Sequence[str]) -> tuple[str, ...]:
    """Return metric groups from "all", "isbi,ctc" or a sequence of names.

    Example:
        >>> parse_metric_groups("all")
        ('isbi', 'ctc', 'instance')
        >>> parse_metric_groups("ctc,instance")
        ('ctc', 'instance')
    """
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    if "all" in names:
        return METRIC_GROUPS
    unknown = [name for name in names if name not in METRIC_GROUPS]
    if unknown or not names:
        raise ValueError(
            f"metrics must be 'all' or a comma-separated subset of {list(METRIC_GROUPS)}, "
            f"got {list(names)}"
        )
    return tuple(name for name in METRIC_GROUPS if name in names)


def as_probabilities(prediction: np.ndarray, *, name: str = "prediction") -> np.ndarray:
    """Return a float map in [0, 1]: floats as they are, labels as foreground 0/1."""
    prediction = np.asarray(prediction)
    if prediction.dtype.kind == "f":
        if not np.isfinite(prediction).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        if prediction.min() < 0 or prediction.max() > 1:
            raise ValueError(
                f"{name} is a float map with values in [{prediction.min():.3g}, "
                f"{prediction.max():.3g}]; expected probabilities in [0, 1]"
            )
        return prediction.astype(np.float32, copy=False)
    if prediction.dtype.kind in "biu":
        return (prediction > 0).astype(np.float32)
    raise ValueError(f"{name} has dtype {prediction.dtype}; expected float probabilities or labels")


def as_instances(
    prediction: np.ndarray, *, postprocess: PostprocessConfig | None = None
) -> np.ndarray:
    """Return instance labels: integer input as is, probability maps post-processed."""
    prediction = np.asarray(prediction)
    if prediction.dtype.kind in "biu":
        return prediction.astype(np.int64, copy=False)
    return probabilities_to_labels(as_probabilities(prediction), config=postprocess)


def evaluate(
    pairs: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    metrics: str | Sequence[str] = "all",
    postprocess: PostprocessConfig | None = None,
) -> EvaluationReport:
    """Score (name, ground-truth labels, prediction) triples; see the module docstring.

    ISBI errors are computed per image and, overall, with TP/FP/FN pooled over all images
    of one shape (as the organisers pool over the slices of a stack); SEG pools all
    reference objects; AP pools matches over images; the DSB score averages images.
    """
    groups = parse_metric_groups(metrics)
    report = EvaluationReport()
    seg_jaccards, matches, dsb_scores = [], [], []
    truths, maps = [], []
    for name, truth, prediction in pairs:
        truth = np.asarray(truth)
        if truth.shape != np.shape(prediction):
            raise ValueError(
                f"prediction for {name} has shape {np.shape(prediction)}; its ground truth "
                f"has {truth.shape}"
            )
        row: dict = {"image": name}
        if "isbi" in groups:
            probabilities = as_probabilities(prediction, name=f"prediction {name}")
            row.update(_isbi_row(truth, probabilities))
            truths.append(truth)
            maps.append(probabilities)
        if "ctc" in groups or "instance" in groups:
            instances = as_instances(prediction, postprocess=postprocess)
            if "ctc" in groups:
                seg = seg_score(truth, instances)
                seg_jaccards.append(seg.jaccard)
                row["seg"] = seg.score
            if "instance" in groups:
                row.update(_instance_row(truth, instances, matches, dsb_scores))
        report.rows.append(row)
    if "isbi" in groups and truths:
        report.overall.update(_pooled_isbi(truths, maps))
    if "ctc" in groups:
        joined = np.concatenate(seg_jaccards) if seg_jaccards else np.zeros(0)
        report.overall["seg"] = float(joined.mean()) if joined.size else math.nan
    if "instance" in groups and matches:
        pooled = pool_matches(matches)
        report.overall.update(
            precision_50=pooled.precision,
            recall_50=pooled.recall,
            f1_50=pooled.f1,
            ap_50=pooled.average_precision,
            dsb_score=float(np.mean(dsb_scores)),
        )
    report.overall["n_images"] = len(report.rows)
    return report


def _isbi_row(truth: np.ndarray, probabilities: np.ndarray) -> dict:
    return {
        "pixel_error": pixel_error(truth, probabilities).value,
        "rand_error": rand_error(truth, probabilities).value,
        "warping_error": warping_error(truth, probabilities).value,
    }


def _pooled_isbi(truths: list[np.ndarray], maps: list[np.ndarray]) -> dict:
    shapes = {truth.shape for truth in truths}
    if len(shapes) == 1 and truths[0].ndim == 2:
        return _isbi_row(np.stack(truths), np.stack(maps))
    # slices of different sizes cannot form one stack: average the per-image errors
    rows = [_isbi_row(truth, probabilities) for truth, probabilities in zip(truths, maps)]
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def _instance_row(truth, instances, matches: list, dsb_scores: list) -> dict:
    (at_half,) = match_instances(truth, instances, thresholds=(0.5,))
    matches.append(at_half)
    dsb = dsb_score(truth, instances)
    dsb_scores.append(dsb)
    return {
        "n_true": at_half.n_true,
        "n_pred": at_half.n_pred,
        "precision_50": at_half.precision,
        "recall_50": at_half.recall,
        "f1_50": at_half.f1,
        "ap_50": at_half.average_precision,
        "dsb_score": dsb,
    }


# Distance-seed settings `select_postprocess` tries: the default first, so that a tie
# keeps it. Thresholds above 0.5 cut the thin necks between touching nuclei; larger
# prominences and smoothing merge the spurious maxima of ragged or elongated objects.
POSTPROCESS_GRID = tuple(
    PostprocessConfig(threshold=t, min_seed_prominence_px=p, distance_sigma_px=s)
    for t, p, s in [(0.5, 1.5, 1.0)]
    + [
        (t, p, s)
        for t in (0.4, 0.5, 0.6, 0.7)
        for p in (1.0, 1.5, 2.0, 3.0)
        for s in (1.0, 2.0)
        if (t, p, s) != (0.5, 1.5, 1.0)
    ]
)


def select_postprocess(
    pairs: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    metric: str = "ap_50",
    candidates: Sequence[PostprocessConfig] = POSTPROCESS_GRID,
) -> tuple[PostprocessConfig, list[dict]]:
    """Pick the post-processing that scores best on held-out (validation) predictions.

    As nnU-Net chooses its post-processing on the cross-validation folds, not on the
    test set: every candidate turns the probability maps of `pairs` into instances and
    is scored with `evaluate`; the first of the best wins, so ties keep the earlier
    candidate (`POSTPROCESS_GRID` starts with the defaults).

    Args:
        pairs: (name, ground-truth labels, foreground probability map) triples.
        metric: an overall figure of the "ctc" or "instance" group to maximise:
            "ap_50", "f1_50", "dsb_score" or "seg".
        candidates: the configs to try.

    Returns:
        The best config, and one row per candidate: its threshold, prominence and
        smoothing with the score.

    Raises:
        ValueError: for an unknown `metric`, no candidates, or label images in `pairs`
            (post-processing needs probability maps).
    """
    groups = {"ap_50": "instance", "f1_50": "instance", "dsb_score": "instance", "seg": "ctc"}
    if metric not in groups:
        raise ValueError(f"metric must be one of {sorted(groups)}, got {metric!r}")
    if not candidates:
        raise ValueError("candidates must hold at least one PostprocessConfig")
    for name, _, prediction in pairs:
        if np.asarray(prediction).dtype.kind in "biu":
            raise ValueError(
                f"prediction {name} is a label image; post-processing is chosen on "
                "probability maps"
            )
    rows, best, best_score = [], None, -math.inf
    for candidate in candidates:
        score = evaluate(pairs, metrics=groups[metric], postprocess=candidate).overall[metric]
        rows.append(
            {
                "threshold": candidate.threshold,
                "min_seed_prominence_px": candidate.min_seed_prominence_px,
                "distance_sigma_px": candidate.distance_sigma_px,
                metric: score,
            }
        )
        if score > best_score:
            best, best_score = candidate, score
    return (best if best is not None else candidates[0]), rows  # all NaN: the first
