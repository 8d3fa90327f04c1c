"""The main job end to end on embedded synthetic data: train, predict, evaluate, report.

Nothing is downloaded: `biounet.datasets.synthetic` draws touching cells with
textured interiors, thin borders, uneven illumination, blur and noise, with instance
ground truth. The U-Net is trained with weight maps (eq. 2) and elastic augmentation
(Sec. 3.1) using the `cpu` preset, then segments a 2048x2048 image with overlap-tile
prediction; instances come from `biounet.postprocess`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and budgets of one demo run."""

    n_train: int = 12
    n_val: int = 2
    train_shape: tuple[int, int] = (384, 384)
    large_shape: tuple[int, int] = (2048, 2048)
    iterations: int = 500
    base_channels: int = 16
    depth: int = 4
    tile_shape: tuple[int, int] = (380, 380)
    seed: int = 0


QUICK = DemoSettings(
    n_train=3,
    n_val=1,
    train_shape=(128, 128),
    large_shape=(512, 512),
    iterations=6,
    base_channels=4,
    depth=3,
    tile_shape=(124, 124),
)


def run_demo(
    out: str | Path, *, settings: DemoSettings = DemoSettings(), progress: bool = True
) -> dict:
    """Run the demo into `out` and return the metrics written to `out/metrics.json`."""
    from biounet.data.dataset import make_training_image
    from biounet.datasets.synthetic import generate_dataset, generate_sample
    from biounet.training.presets import preset, replace_train
    from biounet.training.trainer import Trainer

    out = Path(out)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    config = preset("cpu")
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(
            config.model, base_channels=settings.base_channels, depth=settings.depth
        ),
    )
    config = replace_train(
        config,
        iterations=settings.iterations,
        tile_shape=settings.tile_shape,
        seed=settings.seed,
        validate_every=max(settings.iterations // 5, 1),
        checkpoint_every=max(settings.iterations // 5, 1),
        validation_metric="ap50",
    )
    _say(progress, f"generating {settings.n_train + settings.n_val} synthetic training images")
    pairs = generate_dataset(
        settings.n_train + settings.n_val, settings.train_shape, rng=settings.seed
    )
    items = [
        make_training_image(
            f"synthetic_{index:02d}",
            image[None],
            labels,
            model_config=config.model,
            train_config=config.train,
        )
        for index, (image, labels) in enumerate(pairs)
    ]
    timings["generate_s"] = time.perf_counter() - started
    _say(progress, f"training for {settings.iterations} iterations (cpu preset)")
    trainer = Trainer(
        model_config=config.model,
        train_config=config.train,
        augment_config=config.augment,
        train_images=items[: settings.n_train],
        val_images=items[settings.n_train :],
        run_dir=out / "train",
        progress=progress,
    )
    step_started = time.perf_counter()
    result = trainer.fit()
    timings["train_s"] = time.perf_counter() - step_started
    metrics, pictures = _segment_large_image(out, settings, progress, timings, generate_sample)
    metrics.update(
        iterations=result.step,
        best_validation_ap50=result.best_score,
        total_s=time.perf_counter() - started,
        **timings,
    )
    _write_outputs(out, metrics, pictures, items[0], trainer.history)
    return metrics


def _segment_large_image(out, settings, progress, timings, generate_sample):
    from biounet.data.normalize import normalize_percentile
    from biounet.evaluation import evaluate
    from biounet.inference.predict import plan_tiles, predict_tiled
    from biounet.postprocess import probabilities_to_labels
    from biounet.report import downsample, label_overlay
    from biounet.weightfile import load_model

    image, truth = generate_sample(settings.large_shape, rng=settings.seed + 1000)
    model = load_model(out / "train" / "best.safetensors")
    grid = plan_tiles(model.config, image.shape)
    _say(
        progress,
        f"segmenting a {image.shape[0]}x{image.shape[1]} image with {len(grid)} "
        f"tile(s) of {grid.tile_shape[0]}x{grid.tile_shape[1]}",
    )
    started = time.perf_counter()
    probabilities = predict_tiled(model, normalize_percentile(image), progress=progress)
    timings["predict_s"] = time.perf_counter() - started
    started = time.perf_counter()
    instances = probabilities_to_labels(probabilities[1])
    timings["postprocess_s"] = time.perf_counter() - started
    report = evaluate([("large", truth, instances)], metrics="ctc,instance")
    from biounet.metrics.isbi import pixel_error, rand_error

    metrics = {
        "image_shape": list(image.shape),
        "tile_shape": list(grid.tile_shape),
        "n_tiles": len(grid),
        "rand_error": rand_error(truth, probabilities[1]).value,
        "pixel_error": pixel_error(truth, probabilities[1]).value,
        "seg": report.overall["seg"],
        "ap_50": report.overall["ap_50"],
        "f1_50": report.overall["f1_50"],
        "n_true_objects": report.rows[0]["n_true"],
        "n_predicted_objects": report.rows[0]["n_pred"],
        "megapixels_per_s": image.size / timings["predict_s"] / 1e6,
    }
    crop = tuple(slice(0, min(512, size)) for size in image.shape)
    pictures = {
        "input": downsample(image),
        "prediction": downsample(label_overlay(image, instances)),
        "crop_truth": label_overlay(image[crop], truth[crop]),
        "crop_prediction": label_overlay(image[crop], instances[crop]),
    }
    return metrics, pictures


def _write_outputs(out: Path, metrics: dict, pictures: dict, item, history) -> None:
    from biounet.data.jsontext import json_text
    from biounet.data.outputs import atomic_path
    from biounet.report import Report, heat_map, to_uint8

    with atomic_path(out / "metrics.json") as temporary:
        temporary.write_text(json_text(metrics))
    report = Report("biounet demo: U-Net on synthetic cells")
    report.add_text(
        "What ran",
        f"A U-Net ({metrics['iterations']} iterations, cpu preset) trained on synthetic "
        "touching cells with the border weight map (eq. 2) and elastic augmentation, then "
        f"segmented a {metrics['image_shape'][0]}x{metrics['image_shape'][1]} image in "
        f"{metrics['n_tiles']} overlap tile(s) of {metrics['tile_shape']} with mirrored "
        "borders; instances by threshold and seeded watershed.",
    )
    keys = (
        "rand_error",
        "pixel_error",
        "seg",
        "ap_50",
        "f1_50",
        "n_true_objects",
        "n_predicted_objects",
        "megapixels_per_s",
        "train_s",
        "predict_s",
        "total_s",
    )
    report.add_table("Metrics on the large image", [{key: metrics[key] for key in keys}])
    report.add_pictures(
        "Large image",
        [
            ("input", to_uint8(pictures["input"])),
            ("predicted instances", pictures["prediction"]),
        ],
    )
    report.add_pictures(
        "512x512 corner",
        [
            ("ground truth", pictures["crop_truth"]),
            ("prediction", pictures["crop_prediction"]),
        ],
    )
    curves = out / "train" / "curves.png"
    weight_picture = heat_map(item.weights)
    report.add_pictures(
        "Training",
        [
            ("training image", to_uint8(item.image[0])),
            ("weight map w(x), eq. 2", weight_picture),
            *([("loss and validation AP@0.5", curves.read_bytes())] if curves.is_file() else []),
        ],
    )
    report.add_table("Training history", history)
    report.write(out / "report.html")


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(f"[demo] {message}", flush=True)
    logger.info(message)


def settings_for(quick: bool) -> DemoSettings:
    """The full demo or the seconds-long `--quick` variant."""
    return QUICK if quick else DemoSettings()
