"""Command line: `biounet <command> ...`; one module per command, dispatched from here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# command -> (module, one-line help); modules are imported only when their command runs
COMMANDS = {
    "demo": ("biounet.cli.demo", "train, predict and evaluate on embedded synthetic data"),
    "train": ("biounet.cli.train", "train a U-Net on annotated images"),
    "predict": ("biounet.cli.predict", "segment images with overlap-tile prediction"),
    "evaluate": ("biounet.cli.evaluate", "score predictions against ground truth"),
    "export": ("biounet.cli.export", "export a model to ONNX, TorchScript or bioimage.io"),
    "data": ("biounet.cli.data", "fetch public data sets (isbi2012, dsb2018, CTC)"),
    "reproduce": ("biounet.cli.reproduce", "the paper's experiments on ISBI 2012, DSB 2018, CTC"),
}

USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ConnectionError,  # downloads: offline or refused, said in one line
)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with one sub-parser per command."""
    from biounet import __version__

    parser = argparse.ArgumentParser(
        prog="biounet",
        description="U-Net segmentation of biomedical images (Ronneberger et al. 2015).",
    )
    parser.add_argument("--version", action="version", version=f"biounet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, command_name=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (2 for user errors, without a traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"biounet {args.command_name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"biounet {args.command_name}: interrupted", file=sys.stderr)
        return 130
