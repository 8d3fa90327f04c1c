"""Run the whole job on embedded synthetic data: train, segment a 2048x2048 image, evaluate.

Writes into --out: report.html (self-contained, pictures embedded), metrics.json and
the training run folder train/. Takes a few minutes on 2 CPU cores; --quick takes
seconds and checks that everything runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: seconds, not minutes")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from biounet.demo import run_demo, settings_for

    out = Path(args.out)
    if (out / "train" / "checkpoint.safetensors").exists():
        import shutil

        shutil.rmtree(out / "train")  # a demo run always starts afresh
    metrics = run_demo(out, settings=settings_for(args.quick), progress=not args.quiet)
    print(
        f"Rand error {metrics['rand_error']:.4f}  SEG {metrics['seg']:.4f}  "
        f"AP@0.5 {metrics['ap_50']:.4f}  ({metrics['n_predicted_objects']} objects found, "
        f"{metrics['n_true_objects']} true)\n"
        f"prediction {metrics['megapixels_per_s']:.2f} Mpx/s; total {metrics['total_s']:.0f} s\n"
        f"report: {out / 'report.html'}"
    )
    return 0
