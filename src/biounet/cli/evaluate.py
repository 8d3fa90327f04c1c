"""Compare predictions with ground truth using the challenges' own definitions.

--gt is read like training data (pairs, stacks, DSB 2018, CTC layouts; --volume reads a
stack as one (Z, Y, X) volume: SEG and instance matching then work in 3-D, ISBI errors
slice by slice). For each ground-truth image NAME, --pred must hold NAME.tif/.png,
NAME_probability.tif (from biounet predict), NAME_labels.tif or NAME_mask.tif; the
instance metrics (ctc, instance) take NAME_instances.tif (predict --instances) before
NAME_probability.tif. Float files are probability maps, integer files label images;
probability maps become instances by --threshold, --min-size and the watershed
(`biounet.postprocess`; with --volume its distance seeds measure a map in the voxel size
its TIFF states, as predict --instances does). --close-boundaries first sets to 0 the
one-pixel lines where the seeded watershed basins of each map meet, closing its membrane
gaps (`biounet.boundaries`), for the ISBI errors only; the object metrics read the files
unchanged. Prints a table per image and overall; --out writes JSON and --csv the
per-image rows; an existing file is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

from biounet.cli.postprocess_args import (
    add_postprocess_arguments,
    given_postprocess_flags,
    postprocess_config,
)
from biounet.data.jsontext import json_text

PREDICTION_SUFFIXES = ("", "_probability", "_labels", "_mask")
# Object metrics prefer the objects `predict --instances` made (with the model's own
# seeds) to post-processing the probability map again; ISBI errors need the map.
INSTANCE_SUFFIXES = ("", "_instances", "_probability", "_labels", "_mask")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="folder of predictions")
    parser.add_argument("--gt", required=True, help="ground-truth data set (folder or stack)")
    parser.add_argument(
        "--metrics", default="all", help="all, or a comma-separated subset of isbi, ctc, instance"
    )
    parser.add_argument("--layout", default="auto", help="ground-truth layout (default: auto)")
    parser.add_argument(
        "--volume", action="store_true",
        help="read a ground-truth stack as one (Z, Y, X) volume, for 3-D predictions",
    )
    parser.add_argument("--out", help="write the report as JSON here")
    parser.add_argument("--csv", help="write the per-image table as CSV here")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out/--csv")
    parser.add_argument(
        "--close-boundaries", action="store_true",
        help="score the ISBI errors on each probability map with its membrane gaps closed by "
        "one-pixel seeded watershed lines (seeds: regions above 0.5 of >= 16 px; "
        "biounet.boundaries); label files are refused",
    )
    add_postprocess_arguments(
        parser,
        used_by="instances from probability maps",
        with_interior=False,
        spacing_default="with --volume the voxel size the map's TIFF states, else 1",
    )


def run(args: argparse.Namespace) -> int:
    from biounet.data.layouts import open_dataset
    from biounet.evaluation import parse_metric_groups

    groups = parse_metric_groups(args.metrics)
    postprocess = postprocess_config(args)
    ndim = 3 if args.volume else 2
    if args.spacing is not None and len(args.spacing) != ndim:
        scored = (
            "--volume scores (Z, Y, X) volumes"
            if args.volume
            else "without --volume maps are scored as (Y, X) planes"
        )
        raise ValueError(f"--spacing needs {ndim} values: {scored}; got {args.spacing}")
    if args.close_boundaries and "isbi" not in groups:
        raise ValueError(
            f"--close-boundaries changes the maps the ISBI errors score; --metrics "
            f"{args.metrics} has no isbi"
        )
    outputs = [_check_output(flag, value, args.overwrite)
               for flag, value in (("--out", args.out), ("--csv", args.csv)) if value]
    pred_folder = Path(args.pred)
    if not pred_folder.is_dir():
        raise FileNotFoundError(f"--pred {pred_folder} is not an existing folder")
    if Path(args.gt).is_file():
        raise ValueError(
            f"--gt must be a data set folder (images/ + labels/, NAME-volume.tif + "
            f"NAME-labels.tif, DSB 2018 or CTC layout), got the file {args.gt}"
        )
    samples = open_dataset(args.gt, layout=args.layout, allow_empty=True, volume=args.volume)
    # the ISBI errors score the maps as they are; --volume and --close-boundaries change
    # the maps of the other pass
    isbi_apart = args.close_boundaries or args.volume
    passes = _prediction_passes(pred_folder, samples.names, groups, isbi_apart)
    report, n_maps = _evaluate_passes(samples, passes, postprocess, args)
    if given_postprocess_flags(args) and n_maps == 0:
        print(
            f"biounet evaluate: warning: {' '.join(given_postprocess_flags(args))} had no "
            "effect: no object metric was computed from a probability map",
            file=sys.stderr,
        )
    print(format_table(report))
    for flag, path in outputs:
        if flag == "--out":
            text = json_text(report.to_dict())
        else:
            text = _csv_text(report.rows)
        _write(path, text, overwrite=args.overwrite)
    return 0


def _check_output(flag: str, value: str, overwrite: bool) -> tuple[str, Path]:
    """Refuse an output file that exists (unless `overwrite`) or cannot be written."""
    from biounet.data.outputs import check_output_path

    path = check_output_path(value, name=flag)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{flag} {path} already exists; pass --overwrite to replace it")
    return flag, path


def _prediction_passes(
    folder: Path, names, groups, isbi_apart: bool = False
) -> list[tuple[list[str], dict[str, Path]]]:
    """Return (metric groups, {name: prediction file}) pairs; one when the files agree,
    unless `isbi_apart` (its maps are changed before scoring)."""
    passes: list[tuple[list[str], dict[str, Path]]] = []
    for pass_groups, suffixes in (
        ([group for group in groups if group == "isbi"], PREDICTION_SUFFIXES),
        ([group for group in groups if group != "isbi"], INSTANCE_SUFFIXES),
    ):
        if not pass_groups:
            continue
        try:
            files = _find_predictions(folder, names, suffixes)
        except FileNotFoundError as error:
            if pass_groups == ["isbi"] and any(folder.glob("*_instances.tif")):
                raise FileNotFoundError(
                    f"{error}; the ISBI errors need probability maps, NAME_instances.tif "
                    "holds objects only: pass --metrics ctc,instance"
                ) from None
            raise
        if passes and passes[-1][1] == files and not isbi_apart:
            passes[-1][0].extend(pass_groups)
        else:
            passes.append((pass_groups, files))
    return passes


def _evaluate_passes(samples, passes, postprocess, args: argparse.Namespace):
    """Evaluate every pass, merged into one report row by row; also return how many
    probability maps the object metrics post-processed. With --close-boundaries the ISBI
    pass scores `biounet.boundaries.close_boundaries` of each map; with --volume a map's
    distance seeds measure it in the voxel size its file states (`with_file_spacing`)."""
    from biounet.data.io import read_image
    from biounet.evaluation import EvaluationReport, evaluate

    report, n_maps = EvaluationReport(), 0
    # a SampleList reads its files on every access: read the ground truth once for all passes
    truths = [(sample.name, sample.labels) for sample in samples]
    for pass_groups, files in passes:
        triples = [
            (name, labels, read_image(files[name], name="prediction")) for name, labels in truths
        ]
        if pass_groups != ["isbi"]:
            n_maps += sum(prediction.dtype.kind == "f" for _, _, prediction in triples)
            if args.volume:
                triples = [
                    (name, truth, _volume_instances(files[name], map_, postprocess, args))
                    for name, truth, map_ in triples
                ]
        elif args.close_boundaries:
            triples = [(name, truth, _closed(files[name], map_)) for name, truth, map_ in triples]
        part = evaluate(triples, metrics=pass_groups, postprocess=postprocess)
        if not report.rows:
            report.rows = part.rows
        else:
            for row, extra in zip(report.rows, part.rows):
                row.update({key: value for key, value in extra.items() if key != "image"})
        report.overall.update(part.overall)
    return report, n_maps


def _volume_instances(path: Path, prediction, postprocess, args: argparse.Namespace):
    """A (Z, Y, X) probability map as the objects `predict --instances` cuts it into."""
    from biounet.cli.postprocess_args import with_file_spacing
    from biounet.evaluation import as_instances

    if prediction.dtype.kind != "f" or prediction.ndim != 3:
        return prediction
    own = with_file_spacing(postprocess, path, args, is_volume=True)
    if own is postprocess:  # no calibration, cubic voxels or --spacing given
        return prediction
    return as_instances(prediction, postprocess=own)


def _closed(path: Path, prediction):
    from biounet.boundaries import close_boundaries
    from biounet.evaluation import as_probabilities

    if prediction.dtype.kind != "f":
        raise ValueError(
            f"--close-boundaries needs probability maps (float), got {prediction.dtype} "
            f"labels in {path}"
        )
    prediction = as_probabilities(prediction, name=f"prediction {path}")
    try:
        return close_boundaries(prediction)
    except ValueError as error:
        raise ValueError(f"--close-boundaries on {path}: {error}") from None


def _find_predictions(folder: Path, names, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Return the prediction file of every ground-truth name, the first suffix found."""
    files = {name: _find_prediction(folder, name, suffixes) for name in names}
    missing = [name for name, path in files.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"--pred {folder} has no prediction for {len(missing)} ground-truth image(s): "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (looked for NAME"
            f"{{{','.join(s for s in suffixes if s)}}}.tif/.png)"
        )
    return files


def _find_prediction(folder: Path, name: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        for extension in (".tif", ".tiff", ".png"):
            path = folder / f"{name}{suffix}{extension}"
            if path.is_file():
                return path
    return None


def format_table(report) -> str:
    """Return the per-image rows and the overall row as an aligned text table."""
    keys = [key for key in report.rows[0] if key != "image"] if report.rows else []
    header = ["image", *keys]
    lines = [
        [str(row.get(key, "")) if key == "image" else _cell(row.get(key)) for key in header]
        for row in report.rows
    ]
    lines.append(["overall", *(_cell(report.overall.get(key)) for key in keys)])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    text = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    text += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(text)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _write(path: Path, text: str, *, overwrite: bool) -> None:
    from biounet.data.outputs import atomic_path

    with atomic_path(path, overwrite=overwrite) as temporary:
        temporary.write_text(text)
