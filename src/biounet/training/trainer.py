"""The training loop of Ronneberger et al. 2015, Sec. 3: SGD on weighted soft-max cross-entropy.

A run folder holds everything: `config.json`, `metrics.csv`, `checkpoint.safetensors`
(the last complete one), `best.safetensors` and `model.safetensors` (weight files for
`biounet predict`), `curves.png` and `overlays/`. All are written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from biounet.augment.pipeline import AugmentConfig
from biounet.config import TrainConfig, UNetConfig
from biounet.data.dataset import TileDataset, TrainingImage
from biounet.data.outputs import atomic_path, make_folder
from biounet.inference.predict import predict_tiled
from biounet.losses import skeleton_recall, target_skeletons, weighted_cross_entropy
from biounet.model.unet import UNet
from biounet.training import distributed
from biounet.training.checkpoint import load_checkpoint, restore, save_checkpoint
from biounet.training.optim import build_optimizer, learning_rate_at
from biounet.training.validation import ScoreFunction, score_function
from biounet.weightfile import save_model

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
METRICS_FIELDS = ("step", "loss", "val_score", "seconds")

@dataclass
class TrainResult:
    """Outcome of `Trainer.fit`."""

    step: int
    best_score: float | None
    interrupted: bool
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Trains a U-Net on tiles of `train_images`, validating on whole `val_images`."""

    def __init__(
        self,
        *,
        model_config: UNetConfig,
        train_config: TrainConfig,
        augment_config: AugmentConfig | None,
        train_images: Sequence[TrainingImage],
        val_images: Sequence[TrainingImage],
        run_dir: str | Path,
        score: ScoreFunction | None = None,
        progress: bool = True,
    ) -> None:
        self.model_config = model_config
        self.config = train_config
        self.augment_config = augment_config
        self.train_images = list(train_images)
        self.val_images = list(val_images)
        self.run_dir = Path(run_dir)
        self.score = score_function(model_config, train_config) if score is None else score
        self.progress = progress
        self._stop_requested = False
        self.history: list[dict] = []

    @property
    def configs(self) -> dict:
        return {
            "model": self.model_config.to_dict(),
            "train": self.config.to_dict(),
            "augment": None if self.augment_config is None else self.augment_config.to_dict(),
        }

    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train until `iterations`, or until SIGTERM / Ctrl-C, which checkpoint and return."""
        config = self.config
        self.rank, self.world = distributed.rank_and_world()
        is_main = self.rank == 0
        if is_main:
            make_folder(self.run_dir, name="run_dir")
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.model = model = UNet(self.model_config)
        torch.manual_seed(config.seed + 1 + self.rank)  # own drop-out masks per rank
        optimizer = build_optimizer(model, config)
        start, best = 0, None
        if resume:
            checkpoint = load_checkpoint(self.run_dir / CHECKPOINT)
            if _without_iterations(checkpoint.configs) != _without_iterations(self.configs):
                raise ValueError(
                    f"--resume: the configuration differs from the one in {self.run_dir}; "
                    "resume with the run's own config.json"
                )
            restore(checkpoint, model=model, optimizer=optimizer, rank=self.rank)
            start, best = checkpoint.step, checkpoint.extra.get("best_score")
            recorded = (checkpoint.configs.get("train") or {}).get("iterations")
            if is_main and recorded not in (None, config.iterations):
                # said: rerunning a finished command after a default changed trains on
                logger.warning(
                    "resuming %s at step %d: it was started for %d iterations and now "
                    "trains to %d", self.run_dir, start, recorded, config.iterations,
                )
            self.history = checkpoint.extra.get("history", [])
        if is_main:
            _write_text(self.run_dir / "config.json", json.dumps(self.configs, indent=2))
        if start >= config.iterations:
            return TrainResult(start, best, False, self.history)
        network = model
        if self.world > 1:
            network = torch.nn.parallel.DistributedDataParallel(model)
        loader = self._loader(start)
        previous = _install_sigterm(self._request_stop)
        interrupted = False
        step = start
        losses: list[float] = []
        started = time.perf_counter()
        bar = _progress(config.iterations, start, enabled=self.progress and is_main)
        low_precision = config.precision == "bfloat16"
        try:
            for image, target, weights in loader:
                network.train()
                with torch.autocast("cpu", torch.bfloat16, enabled=low_precision):
                    logits = network(image)
                logits = logits.float()
                loss = weighted_cross_entropy(logits, target, weights)
                if config.skeleton_recall > 0:
                    skeletons = target_skeletons(target, self.model_config.n_classes)
                    term = skeleton_recall(logits, skeletons, across_ranks=self.world > 1)
                    loss = loss + config.skeleton_recall * term
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate_at(config, step)
                optimizer.step()
                step += 1
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                last = step == config.iterations
                if is_main and (step % config.validate_every == 0 or last):
                    best = self._validate(model, step, losses, best, time.perf_counter() - started)
                    losses = []
                if step % config.checkpoint_every == 0 or last:
                    self._checkpoint(model, optimizer, step, best)
                if distributed.any_rank(self._stop_requested):
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            interrupted = True
            self._checkpoint(model, optimizer, step, best)
            logger.warning("interrupted at step %d; checkpoint written", step)
        finally:
            bar.close()
            _install_sigterm(previous)
        if is_main:
            save_model(
                model, self.run_dir / "model.safetensors", metadata=self._weight_metadata()
            )
        return TrainResult(step, best, interrupted, self.history)

    def _request_stop(self, *_: object) -> None:
        self._stop_requested = True

    def _loader(self, start: int) -> torch.utils.data.DataLoader:
        config = self.config
        dataset = TileDataset(
            self.train_images,
            model_config=self.model_config,
            tile_shape=config.tile_shape,
            length=config.iterations * config.batch_size * self.world,
            seed=config.seed,
            foreground_fraction=config.foreground_fraction,
            augment_config=self.augment_config,
        )
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=list(
                distributed.rank_indices(
                    start, config.iterations, config.batch_size, self.rank, self.world
                )
            ),
            num_workers=config.workers,
            worker_init_fn=_single_threaded_worker,
            # a private generator keeps the global torch RNG (drop-out) untouched
            generator=torch.Generator().manual_seed(config.seed),
            prefetch_factor=2 if config.workers else None,
        )

    def _validate(self, model, step, losses, best, seconds) -> float | None:
        scores, predictions = [], []
        for item in self.val_images:
            probabilities = predict_tiled(model, item.image)
            scores.append(self.score(probabilities, item))
            if len(predictions) < 3:  # kept for the overlay pictures only
                predictions.append(probabilities)
        score = float(np.mean(scores)) if scores else None
        row = {
            "step": step,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "val_score": score if score is not None else float("nan"),
            "seconds": seconds,
        }
        self.history.append(row)
        _write_metrics(self.run_dir / "metrics.csv", self.history)
        if score is not None and (best is None or score > best):
            best = score
            save_model(model, self.run_dir / "best.safetensors", metadata=self._weight_metadata())
        try:
            from biounet.training.plots import write_curves, write_overlays

            write_curves(self.run_dir / "curves.png", self.history)
            if self.val_images:
                write_overlays(self.run_dir / "overlays", self.val_images[:3], predictions[:3])
        except Exception as error:  # a plot must never stop training
            logger.warning("could not draw plots: %s", error)
        logger.info("step %d: loss %.4f, validation %s", step, row["loss"], score)
        return best

    def _checkpoint(self, model, optimizer, step, best) -> None:
        states = distributed.gather_rng_states()  # every rank takes part
        if self.rank != 0:
            return
        save_checkpoint(
            self.run_dir / CHECKPOINT,
            model=model,
            optimizer=optimizer,
            step=step,
            configs=self.configs,
            extra={"best_score": best, "history": self.history},
            rng_states=states,
        )

    def _weight_metadata(self) -> dict[str, str]:
        return {"normalization": self.config.normalization, "polarity": self.config.polarity}


def _without_iterations(configs: dict) -> dict:
    # a run may be resumed with more iterations; item i's tile does not depend on the total.
    # Sections pass through their config classes, so that a checkpoint written before a
    # field existed compares with that field's default (new fields keep old behaviour).
    configs = dict(configs)
    sections = (("model", UNetConfig), ("train", TrainConfig), ("augment", AugmentConfig))
    for name, section_type in sections:
        if configs.get(name) is not None:
            configs[name] = section_type.from_dict(configs[name]).to_dict()
    configs = json.loads(json.dumps(configs))  # tuples and lists compare alike
    configs["train"].pop("iterations", None)
    return configs


def _single_threaded_worker(worker_id: int) -> None:
    del worker_id
    torch.set_num_threads(1)  # the training step owns the cores; workers only prefetch


def _install_sigterm(handler):
    try:
        return signal.signal(signal.SIGTERM, handler or signal.SIG_DFL)
    except ValueError:  # not the main thread: no signal handling
        return None


def _progress(total: int, initial: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="it", disable=not enabled)


def _write_metrics(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    _write_text(path, buffer.getvalue())


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
