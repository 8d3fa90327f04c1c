"""Train a U-Net on a folder of annotated images (Ronneberger et al. 2015, Sec. 3).

Layouts: image/label pairs (images/ + labels/ or masks/), multi-page TIFF stacks,
Data Science Bowl 2018, Cell Tracking Challenge. The run folder receives config.json,
metrics.csv, checkpoint.safetensors, best.safetensors, model.safetensors, curves.png
and overlays/. Ctrl-C or SIGTERM writes a checkpoint; --resume continues exactly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from biounet.config import VALIDATION_METRICS
from biounet.data.normalize import POLARITIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="annotated data set folder (or stack file)")
    parser.add_argument("--out", required=True, help="run folder")
    validation = parser.add_mutually_exclusive_group()
    validation.add_argument("--val", help="separate annotated folder for validation")
    validation.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of --data held out for validation, chosen by --seed (default 0.1)",
    )
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu", help="starting config")
    parser.add_argument("--config", help="JSON file {model: {...}, train: {...}, augment: {...}}")
    parser.add_argument("--layout", default="auto", help="auto, pairs, stack, dsb or ctc")
    parser.add_argument("--label-kind", default="auto", help="auto, binary, instance or semantic")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--nproc", type=int, default=1,
        help="data-parallel processes on this machine (torchrun; gloo on CPU, nccl on GPU)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    train = parser.add_argument_group("training overrides (TrainConfig fields)")
    train.add_argument("--iterations", type=int)
    train.add_argument("--tile-shape", type=int, nargs="+", metavar="N")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--optimizer", choices=("sgd", "adam"))
    train.add_argument("--seed", type=int)
    train.add_argument("--workers", type=int)
    train.add_argument("--validate-every", type=int)
    train.add_argument("--checkpoint-every", type=int)
    train.add_argument("--validation-metric", choices=VALIDATION_METRICS)
    train.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        help="bfloat16: autocast forward pass, float32 weights (faster on AVX512-BF16/AMX CPUs)",
    )
    train.add_argument(
        "--polarity",
        choices=POLARITIES,
        help="bright_objects: normalise images with a brighter background than objects "
        "(brightfield, H&E) as their negatives, so that the network sees bright objects "
        "only; recorded in the weight files for predict (default: the --config's, else "
        "as_is)",
    )
    train.add_argument(
        "--skeleton-recall",
        type=float,
        metavar="W",
        help="add W x the skeleton recall loss (Kirchhoff et al. 2024), which stresses "
        "the connectivity of thin structures such as membranes (default 0: off)",
    )
    train.add_argument(
        "--spacing",
        type=float,
        nargs="+",
        metavar="S",
        help="pixel (voxel) size per axis in units of the in-plane pixel, for the border "
        "term of the weight map, e.g. --spacing 8 1 1 for 40 nm sections of 5 nm pixels",
    )


def run(args: argparse.Namespace) -> int:
    from biounet.data.outputs import check_output_path
    from biounet.training.distributed import init_from_environment
    from biounet.training.presets import preset
    from biounet.training.trainer import CHECKPOINT

    if args.nproc < 1:
        raise ValueError(f"--nproc must be a positive integer, got {args.nproc}")
    if args.nproc > 1:
        return _launch_torchrun(args.nproc)
    rank, _ = init_from_environment()
    out = check_output_path(args.out, name="--out", is_folder=True)
    if args.resume:
        if not (out / "config.json").is_file() or not (out / CHECKPOINT).is_file():
            raise FileNotFoundError(f"--resume: {out} holds no config.json and {CHECKPOINT}")
        saved = read_json_object(out / "config.json", "--resume config.json")
        config = preset("paper").updated(saved)
    else:
        if (out / CHECKPOINT).exists():
            raise FileExistsError(f"--out {out} already holds a run; pass --resume to continue it")
        config = preset(args.preset)
        if args.config:
            config = config.updated(read_json_object(Path(args.config), "--config"))
    config = _with_flag_overrides(
        config,
        iterations=args.iterations,
        tile_shape=tuple(args.tile_shape) if args.tile_shape else None,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        seed=args.seed,
        workers=args.workers,
        validate_every=args.validate_every,
        checkpoint_every=args.checkpoint_every,
        validation_metric=args.validation_metric,
        precision=args.precision,
        skeleton_recall=args.skeleton_recall,
        polarity=args.polarity,
        spacing=tuple(args.spacing) if args.spacing else None,
    )
    _check_tile_shape(config)
    spacing = config.train.spacing
    if spacing is not None and len(spacing) != config.model.ndim:
        source = "--spacing" if args.spacing else "train.spacing"
        raise ValueError(
            f"{source} needs {config.model.ndim} values for this {config.model.ndim}-D network, "
            f"got {list(spacing)}"
        )
    if config.model.boundary_class and args.label_kind == "semantic":
        raise ValueError(
            "--label-kind semantic: model.boundary_class derives its classes from instance "
            "labels; give instance (or binary) labels"
        )
    train_items, val_items = _load_data(args, config)
    from biounet.training.trainer import Trainer

    trainer = Trainer(
        model_config=config.model,
        train_config=config.train,
        augment_config=config.augment,
        train_images=train_items,
        val_images=val_items,
        run_dir=out,
        progress=not args.quiet,
    )
    result = trainer.fit(resume=args.resume)
    if rank != 0:
        return 130 if result.interrupted else 0
    state = "interrupted" if result.interrupted else "finished"
    best = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    print(f"{state} at iteration {result.step}; best validation score {best}; run folder {out}")
    return 130 if result.interrupted else 0


def _with_flag_overrides(config, **flags):
    """Apply the TrainConfig flags one by one, so an error names the flag that caused it."""
    from biounet.training.presets import replace_train

    for field, value in flags.items():
        if value is None:
            continue
        try:
            config = replace_train(config, **{field: value})
        except (TypeError, ValueError) as error:
            flag = "--" + field.replace("_", "-")
            raise type(error)(f"{flag}: {error}") from None
    return config


def _launch_torchrun(nproc: int) -> int:
    """Run this same command under torchrun with `nproc` processes (without --nproc)."""
    import subprocess
    import sys

    argv = sys.argv[1:]
    forwarded, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        forwarded.append(item)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", "biounet", *forwarded,
    ]
    return subprocess.call(command)


def read_json_object(path: Path, name: str) -> dict:
    """Return the JSON object in `path`; one-line errors name the option `name`."""
    from biounet.data.io import check_input_file

    check_input_file(path, name=name)
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{name} {path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{name} {path} must hold a JSON object, got {type(values).__name__}")
    return values


def _check_tile_shape(config) -> None:
    from biounet.geometry import config_output_shape

    if len(config.train.tile_shape) != config.model.ndim:
        raise ValueError(
            f"tile_shape {config.train.tile_shape} needs {config.model.ndim} values for a "
            f"{config.model.ndim}-D network"
        )
    config_output_shape(config.model, config.train.tile_shape)


def _load_data(args, config):
    from biounet.data.dataset import training_images
    from biounet.data.layouts import open_dataset

    # a 3-D network (Cicek et al. 2016) reads a stack pair as one (Z, Y, X) volume
    options = {"layout": args.layout, "label_kind": args.label_kind,
               "volume": config.model.ndim == 3}
    samples = open_dataset(args.data, **options)
    if len(samples) == 0:
        raise ValueError(f"--data {args.data} holds no annotated images")
    if args.val:
        train_samples = list(samples)
        val_samples = list(open_dataset(args.val, **options))
    else:
        if not 0.0 <= args.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
        n_val = int(round(args.val_fraction * len(samples)))
        n_val = min(
            max(n_val, 1 if len(samples) > 1 and args.val_fraction > 0 else 0), len(samples) - 1
        )
        order = np.random.default_rng(config.train.seed).permutation(len(samples))
        val_positions = set(order[:n_val].tolist())
        train_samples = [samples[i] for i in range(len(samples)) if i not in val_positions]
        val_samples = [samples[i] for i in sorted(val_positions)]
    kwargs = {"model_config": config.model, "train_config": config.train}
    return training_images(train_samples, **kwargs), training_images(val_samples, **kwargs)
