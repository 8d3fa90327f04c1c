"""The paper's experiments on real data: train, predict held-out images, score.

Protocols (data sets are never mixed across the split):
  isbi2012  train slices 00-17, select the model on 18-19 (Rand error), evaluate 20-29
            with the ISBI 2012 pixel, Rand and warping errors (Table 1 of the paper
            reports the challenge's hidden test set, so figures are comparable in kind,
            not identical), on the network's map as the paper did and again after
            `biounet.boundaries.close_boundaries` (results["closed_boundaries"]).
  dsb2018   train the first 126 ids of ids.txt (the last 10 of them for selection by
            AP@0.5), evaluate the last 40: AP@0.5, DSB 2018 score, SEG; optionally
            two networks, with and without eq. 2's class balance, whose mean map is
            scored (`biounet.protocols.PROTOCOL_MEMBERS`).
  ctc       Table 2 protocol on a Cell Tracking Challenge training folder: train on the
            annotated frames of sequence 01, evaluate SEG and IoU on those of 02.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from biounet.protocols import protocol_config, protocol_members

if TYPE_CHECKING:
    from biounet.protocols import Split
    from biounet.training.presets import RunConfig

PAPER_TABLE_1 = {"warping_error": 0.000353, "rand_error": 0.0382, "pixel_error": 0.0611}
PAPER_TABLE_2 = {"PhC-C2DH-U373": 0.9203, "DIC-C2DH-HeLa": 0.7756}


def run_experiment(
    experiment: str,
    split: Split,
    out: str | Path,
    *,
    preset_name: str = "cpu",
    iterations: int | None = None,
    progress: bool = True,
    label: str | None = None,
    tta: bool = True,
    overrides: dict | None = None,
    two_networks: bool = False,
) -> dict:
    """Train on `split.train`, select on `split.val`, score `split.test`; write results.json.

    With `tta` the test images are predicted as the paper's ISBI submission was, averaged
    over rotated and flipped versions of the input (Sec. 4: "averaged over 7 rotated
    versions"; here the 8 symmetries of the square, identity included). `overrides`
    ({"model": {...}, "train": {...}, "augment": {...}}) change the preset's fields, as
    `protocol_config` says. With `two_networks`, DSB 2018 trains the two networks of
    `PROTOCOL_MEMBERS` (one run folder each) and scores the mean of their probabilities,
    as `predict_ensemble` does; results.json also has each network's own scores
    (`members`). The test images are scored with the default post-processing; for
    instances (not isbi2012, not a boundary-class network) results.json also records the
    threshold and distance seeds `biounet.evaluation.select_postprocess` chooses on the
    validation images, with the test figures they give (on DSB 2018 they did not beat the
    defaults in 2 of 3 seeds, so they stay a record, not the score).
    """
    from biounet.evaluation import evaluate, select_postprocess

    out = Path(out)
    config = protocol_config(experiment, preset_name, iterations, overrides)
    members = protocol_members(experiment, config, two_networks=two_networks)
    started = time.perf_counter()
    models, records = [], {}
    for name, member in members.items():
        model, records[name] = _train_member(member, split, out / name, progress)
        models.append(model)
    train_seconds = time.perf_counter() - started
    test = _images(split.test, config)
    maps = [_member_maps(models, item.image, tta) for item in test]
    predictions = [
        (item.name, item.labels, _prediction(_mean(member_maps), config.model))
        for item, member_maps in zip(test, maps)
    ]
    groups = "isbi" if experiment == "isbi2012" else "ctc,instance"
    if len(models) > 1:
        for index, record in enumerate(records.values()):
            alone = [
                (item.name, item.labels, _prediction(member_maps[index], config.model))
                for item, member_maps in zip(test, maps)
            ]
            record["overall"] = evaluate(alone, metrics=groups).overall
    chosen = None
    if experiment != "isbi2012" and not config.model.boundary_class and split.val:
        # threshold and watershed seeds chosen on the validation ids, never on test
        selection_metric = "ap_50" if experiment == "dsb2018" else "seg"
        validation = [
            (item.name, item.labels, _prediction(
                _mean(_member_maps(models, item.image, tta)), config.model
            ))
            for item in _images(split.val, config)
        ]
        postprocess, candidates = select_postprocess(validation, metric=selection_metric)
        chosen = {
            "selected_by": f"{selection_metric} on the {len(validation)} validation images",
            "threshold": postprocess.threshold,
            "min_seed_prominence_px": postprocess.min_seed_prominence_px,
            "distance_sigma_px": postprocess.distance_sigma_px,
            "candidates": candidates,
            "test": evaluate(predictions, metrics=groups, postprocess=postprocess).overall,
        }
    report = evaluate(predictions, metrics=groups)
    if experiment == "ctc":
        report.overall["foreground_iou"] = _foreground_iou(predictions)
    results = {
        "experiment": experiment if label is None else f"{experiment} {label}",
        "preset": preset_name,
        "config": config.to_dict(),
        "iterations": next(iter(records.values()))["iterations"],
        "tta": tta,
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - started,
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(test),
        "overall": report.overall,
        "images": report.rows,
    }
    if len(models) > 1:
        results["members"] = records
    if chosen is not None:
        results["postprocess_chosen_on_validation"] = chosen
    if experiment == "isbi2012":
        from biounet.boundaries import close_boundaries

        closed = [(name, truth, close_boundaries(p)) for name, truth, p in predictions]
        results["closed_boundaries"] = evaluate(closed, metrics=groups).overall
        results["paper_table_1"] = PAPER_TABLE_1
    if experiment == "ctc" and label in PAPER_TABLE_2:
        results["paper_table_2_iou"] = PAPER_TABLE_2[label]
    from biounet.data.jsontext import json_text
    from biounet.data.outputs import atomic_path

    with atomic_path(out / "results.json") as temporary:
        temporary.write_text(json_text(results))
    return results


def _images(samples: Sequence, config: RunConfig) -> list:
    from biounet.data.dataset import training_images

    return training_images(samples, model_config=config.model, train_config=config.train)


def _train_member(config: RunConfig, split: Split, run_dir: Path, progress: bool) -> tuple:
    """Train (or resume) one network in `run_dir`; return its best model and a record."""
    from biounet.training.trainer import Trainer
    from biounet.weightfile import load_model

    started = time.perf_counter()
    trainer = Trainer(
        model_config=config.model,
        train_config=config.train,
        augment_config=config.augment,
        train_images=_images(split.train, config),
        val_images=_images(split.val, config),
        run_dir=run_dir,
        progress=progress,
    )
    result = trainer.fit(resume=(run_dir / "checkpoint.safetensors").is_file())
    record = {
        "run_dir": run_dir.name,
        "class_weights": config.train.class_weights,
        "iterations": result.step,
        "best_score": result.best_score,
        "train_seconds": time.perf_counter() - started,
    }
    return load_model(run_dir / "best.safetensors"), record


def _mean(member_maps: np.ndarray) -> np.ndarray:
    """The members' mean in float32, summed in float64 as `predict_ensemble` does."""
    if len(member_maps) == 1:
        return member_maps[0]
    return member_maps.mean(axis=0, dtype=np.float64).astype(np.float32)


def _member_maps(models: Sequence, image: np.ndarray, tta: bool) -> np.ndarray:
    """(members, K, *spatial) probabilities of each network, averaged over 8 flips with tta."""
    from biounet.inference.predict import predict_tiled
    from biounet.inference.tta import predict_tta

    predict = predict_tta if tta else predict_tiled
    return np.stack([predict(model, image) for model in models])


def _prediction(probabilities: np.ndarray, model_config) -> np.ndarray:
    """What `evaluate` scores: the foreground map, or instances from a 3-class network."""
    if model_config.boundary_class:
        from biounet.postprocess import instances_from_probabilities

        return instances_from_probabilities(probabilities, boundary_class=True)
    return probabilities[1]


def _foreground_iou(predictions: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> float:
    intersection = union = 0
    for _, truth, probability in predictions:
        predicted, actual = probability > 0.5, truth > 0
        intersection += int(np.logical_and(predicted, actual).sum())
        union += int(np.logical_or(predicted, actual).sum())
    return intersection / union if union else 1.0


def format_results(results: dict) -> str:
    """Return the overall figures, beside the paper's where it reports them."""
    lines = [
        f"{results['experiment']}: {results['iterations']} iterations "
        f"({results['preset']} preset), {results['n_test']} test images"
        + (", predicted averaged over 8 flips/rotations" if results.get("tta") else "")
        + (f", mean of {len(results['members'])} networks" if "members" in results else "")
    ]
    paper = results.get("paper_table_1", {})
    for key, value in results["overall"].items():
        if key == "n_images":
            continue
        beside = f"   (paper, Table 1: {paper[key]})" if key in paper else ""
        lines.append(f"  {key:<16} {value:.4f}{beside}")
    closed = results.get("closed_boundaries")
    if closed:
        lines.append("  with closed boundaries (seeded watershed lines, biounet.boundaries):")
        for key, value in closed.items():
            if key != "n_images":
                lines.append(f"  {key:<16} {value:.4f}")
    if paper:
        lines.append(
            "  note: the paper's figures are on the challenge's hidden test set; "
            "these are on training slices 20-29, held out from training and selection"
        )
    for name, member in results.get("members", {}).items():
        alone = member.get("overall", {})
        lines.append(
            f"  network {name} alone (class_weights {member['class_weights']}): "
            + ", ".join(f"{key} {alone[key]:.4f}" for key in ("ap_50", "seg") if key in alone)
        )
    chosen = results.get("postprocess_chosen_on_validation")
    if chosen:
        scored = chosen["test"]
        lines.append(
            f"  post-processing chosen by {chosen['selected_by']} (biounet predict "
            f"--instances --threshold {chosen['threshold']:g} --seed-prominence "
            f"{chosen['min_seed_prominence_px']:g} --distance-sigma "
            f"{chosen['distance_sigma_px']:g}) would score: "
            + ", ".join(
                f"{key} {scored[key]:.4f}" for key in ("ap_50", "seg") if key in scored
            )
        )
    if "paper_table_2_iou" in results:
        lines.append(f"  paper, Table 2 IoU: {results['paper_table_2_iou']} (challenge test set)")
    return "\n".join(lines)
