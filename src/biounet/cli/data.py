"""Manage data sets: `biounet data fetch NAME` downloads, verifies and installs one.

Data sets go to --dir, else $BIOUNET_DATA, else ~/.cache/biounet, in the layout the
readers and `biounet reproduce` expect. Interrupted downloads resume; archives are
checked for escaping paths and links before anything is extracted.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from biounet.datasets.registry import DATASET_NAMES

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch = actions.add_parser("fetch", help="download a data set into the cache")
    fetch.add_argument("name", choices=DATASET_NAMES, metavar="NAME", help=", ".join(DATASET_NAMES))
    fetch.add_argument("--dir", help="data root (default: $BIOUNET_DATA or ~/.cache/biounet)")
    fetch.add_argument("--force", action="store_true", help="download and install again")
    fetch.add_argument("--base-url", help="mirror to download <base-url>/<archive name> from")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from biounet.data.outputs import check_output_path
    from biounet.datasets.fetch import fetch

    if args.dir is not None:
        check_output_path(args.dir, name="--dir", is_folder=True)
    folder = fetch(
        args.name,
        directory=args.dir,
        progress=not args.quiet,
        base_url=args.base_url,
        force=args.force,
    )
    print(f"{args.name} is ready in {folder}")
    return 0
