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
        # the module docstrings are laid out by hand (usage lines, lists): keep their lines
        sub = commands.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, command_name=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code; errors print one line, no traceback.

    Exit codes: 0 done; 2 the input was refused (a user error); 1 the system failed
    (an OSError such as a full disk, named with the file it hit; outputs are written
    atomically, so the previous version of that file is intact); 130 interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as error:
        _print_error(args.command_name, error)
        return 2
    except OSError as error:  # disk full, I/O error: not the input's fault
        _print_error(args.command_name, error)
        return 1
    except KeyboardInterrupt:
        print(f"biounet {args.command_name}: interrupted", file=sys.stderr)
        return 130


def _print_error(command: str, error: BaseException) -> None:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(_printable(f"biounet {command}: error: {message}", sys.stderr), file=sys.stderr)


def _printable(text: str, stream=None) -> str:
    """Return `text` such that `stream` (default: stderr) can encode it.

    A file name that is not valid UTF-8 reaches Python with surrogate escapes (PEP 383);
    its bytes are shown as ``\\xNN`` instead, and characters the stream's encoding
    lacks as ``\\uNNNN``, so printing an error never raises UnicodeEncodeError.

    Example:
        >>> _printable("caf\\udce9.tif")
        'caf\\\\xe9.tif'
    """
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file-name decoding produced
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    encoding = getattr(stream or sys.stderr, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)
