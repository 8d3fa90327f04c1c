"""Reproduce the paper's experiments on real data: train, predict held-out images, score.

  biounet reproduce isbi2012 --data DIR --out RUN [--preset cpu|paper] [--no-tta]
  biounet reproduce dsb2018  --data DIR --out RUN [--two-networks]
  biounet reproduce ctc      --data DIR --dataset DIC-C2DH-HeLa|PhC-C2DH-U373 --out RUN

A run interrupted (Ctrl-C) continues from its checkpoint when started again.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", choices=("isbi2012", "dsb2018", "ctc"))
    parser.add_argument("--data", required=True, help="data set folder")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--dataset", help="for ctc: DIC-C2DH-HeLa or PhC-C2DH-U373")
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu")
    from biounet.protocols import CPU_ITERATIONS

    defaults = ", ".join(f"{count} for {name}" for name, count in CPU_ITERATIONS.items())
    parser.add_argument(
        "--iterations",
        type=int,
        help=f"training iterations (default with the cpu preset: {defaults}; else the preset's)",
    )
    parser.add_argument(
        "--config", help="JSON file {model: {...}, train: {...}, augment: {...}} over the preset"
    )
    parser.add_argument(
        "--no-tta",
        dest="tta",
        action="store_false",
        help="predict the test images once, not averaged over 8 flips/rotations",
    )
    parser.add_argument(
        "--two-networks",
        action="store_true",
        help="dsb2018: also train a network without eq. 2's class balance and score the "
        "mean of the two (twice the time)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from biounet.protocols import ctc_split, dsb2018_split, isbi2012_split
    from biounet.reproduce import format_results, run_experiment

    if args.iterations is not None and args.iterations < 1:
        raise ValueError(f"--iterations must be a positive integer, got {args.iterations}")
    if args.two_networks and args.experiment != "dsb2018":
        raise ValueError(f"--two-networks applies to dsb2018 only, got {args.experiment}")
    overrides = None
    if args.config:
        from pathlib import Path

        from biounet.cli.train import read_json_object
        from biounet.training.presets import preset

        overrides = read_json_object(Path(args.config), "--config")
        preset(args.preset).updated(overrides)  # a bad key fails before any data is read
    if args.experiment == "ctc":
        if not args.dataset:
            raise ValueError("--dataset is required for ctc (DIC-C2DH-HeLa or PhC-C2DH-U373)")
        split = ctc_split(args.data, args.dataset)
    elif args.experiment == "isbi2012":
        split = isbi2012_split(args.data)
    else:
        split = dsb2018_split(args.data)
    results = run_experiment(
        args.experiment,
        split,
        args.out,
        preset_name=args.preset,
        iterations=args.iterations,
        progress=not args.quiet,
        label=args.dataset,
        tta=args.tta,
        overrides=overrides,
        two_networks=args.two_networks,
    )
    print(format_results(results))
    return 0
