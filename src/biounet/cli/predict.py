"""Segment images with a trained U-Net and the overlap-tile strategy.

For every IMAGE (TIFF, multi-page TIFF stack, PNG) writes into --out:
  <name>_probability.tif   float32 foreground probability (1 - background)
  <name>_mask.tif          uint8 class map (argmax over classes)
  <name>_probabilities.tif float32 (C, ...) all classes, with --save-probabilities
  <name>_instances.tif     uint16/uint32 object ids (0 = background), with --instances:
                           the foreground post-processed (biounet.postprocess), seeded
                           by the predicted interiors for a boundary-class network;
                           pages of a stack are segmented one by one, ids unique
  <name>_closed.tif        float32 foreground probability with its membrane gaps closed,
                           with --close-boundaries: 0 on the one-pixel lines where a
                           watershed from the interiors above 0.5 (regions of at least
                           16 px) meets, slice by slice; two-class networks only
                           (biounet.boundaries; what evaluate --close-boundaries scores)
Files are written to a temporary name and renamed into place when complete.
--tta averages the probabilities over the 8 flips/rotations of a 2-D image (the 8
axis flips of a 3-D volume; Z is never rotated): 8 predictions, 8x the time.
--backend onnxruntime runs the network with ONNX Runtime instead of PyTorch, with the
same tiling; --model may then be an .onnx file from `biounet export --format onnx`.
--model given several times predicts with each network and averages their probabilities
(an ensemble: of seeds, folds, or a run's best.safetensors and model.safetensors); the
networks must share input channels, classes and spatial axes.

Out of core, for images larger than memory: when --out ends in .zarr, or IMAGE is a
zarr store (an array `image.zarr`, one array of a group `image.zarr/0`, or an
OME-Zarr image group, whose level 0 is used), the one IMAGE (zarr, or a TIFF read
lazily) is predicted block by block with dask into the OME-Zarr group --out:
  NAME.zarr/0             float32 (C, ...) class probabilities, the input's scale kept
  NAME.zarr/labels/mask/0 uint8 (1, ...) class map (argmax over classes)
--tta and several --model work here too, with the output of the in-memory path.
Each block is recorded when written: --resume continues an interrupted run and skips
finished blocks; --scheduler tcp://HOST:PORT runs on a dask.distributed cluster
(`dask scheduler`, `dask worker tcp://HOST:PORT`) instead of local threads. A TIFF
too large for in-memory prediction into a folder is refused with a pointer to zarr.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from biounet.cli.postprocess_args import (
    add_postprocess_arguments,
    given_postprocess_flags,
    postprocess_config,
)
from biounet.data.normalize import POLARITIES, check_polarity

BACKENDS = ("torch", "onnxruntime")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the tables above
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="TIFF or PNG images; or one zarr array/OME-Zarr group (image.zarr, image.zarr/0)",
    )
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        help="weight file (.safetensors) or bioimage.io package (.zip) from biounet; "
        "with --backend onnxruntime also an .onnx file from biounet export; repeat it to "
        "average several models' probabilities (an ensemble, N x the time)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (created if missing); a path ending in .zarr (or a zarr IMAGE) "
        "predicts block by block into that OME-Zarr group",
    )
    tiling = parser.add_argument_group("tiling")
    tiling.add_argument(
        "--tile-shape",
        type=int,
        nargs="+",
        metavar="N",
        help="input window per axis, a valid size of the network (default: from the budget)",
    )
    tiling.add_argument("--batch-size", type=int, help="tiles per forward pass (default: auto)")
    tiling.add_argument(
        "--memory-budget",
        type=float,
        default=2.0,
        metavar="GB",
        help="memory for network activations, picks tile and batch size (default: 2)",
    )
    parser.add_argument(
        "--normalization",
        choices=("percentile", "zscore", "none"),
        default=None,
        help="intensity normalisation (default: what the model was trained with, as its "
        "weight file records; else 1st-99.8th percentile to 0-1)",
    )
    parser.add_argument(
        "--polarity",
        choices=POLARITIES,
        default=None,
        help="bright_objects: invert images with a brighter background than objects "
        "(brightfield, H&E) as they are normalised (default: what the model was trained "
        "with, as its weight file records; else as_is)",
    )
    parser.add_argument(
        "--save-probabilities", action="store_true", help="also write all class probabilities"
    )
    parser.add_argument(
        "--instances",
        action="store_true",
        help="also write object ids: threshold, fill holes, split touching objects by "
        "watershed (seeded by the predicted interiors for a boundary_class model)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs; without --instances (--close-boundaries) also remove "
        "an earlier <name>_instances.tif (_closed.tif), which would pass for this model's",
    )
    parser.add_argument(
        "--close-boundaries",
        action="store_true",
        help="also write <name>_closed.tif: the foreground probability with 0 on one-pixel "
        "watershed lines between the interiors, closing membrane gaps (EM, ISBI 2012)",
    )
    add_postprocess_arguments(
        parser,
        used_by="with --instances",
        spacing_default="for a 3-D network the voxel size its TIFF states, else 1",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the probabilities over the 8 flips/rotations "
        "(2-D) or the 8 axis flips (3-D); 8 predictions, 8x the time",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="run the network with PyTorch (default) or ONNX Runtime, same tiling and "
        "output; onnxruntime exports a weight file first (15-40 s), an .onnx --model not",
    )
    zarr_output = parser.add_argument_group("out of core (--out NAME.zarr)")
    zarr_output.add_argument(
        "--block-shape",
        type=int,
        nargs="+",
        metavar="N",
        help="output block per axis, one dask task and zarr chunk, rounded to whole tile "
        "steps (default: about 2048 x 2048)",
    )
    zarr_output.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="dask.distributed scheduler such as tcp://host:8786 (default: local threads; "
        "'synchronous' runs one block at a time in this thread)",
    )
    zarr_output.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into the existing --out, skipping finished blocks",
    )


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from biounet.boundaries import membrane_network_problem
    from biounet.cli import predict_outputs, predict_zarr
    from biounet.data.io import check_input_file
    from biounet.data.outputs import check_output_path
    from biounet.inference.ensemble import check_members

    if not args.instances and given_postprocess_flags(args):
        raise ValueError(
            f"{' '.join(given_postprocess_flags(args))}: post-processing options of "
            "--instances; add --instances"
        )
    postprocess_config(args, boundary_class=None)  # bad values fail before any work
    _resolve_preprocessing(args)
    if predict_zarr.wants_zarr(args):
        return predict_zarr.run(args)
    predict_zarr.refuse_zarr_options(args)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.memory_budget <= 0:
        raise ValueError(f"--memory-budget must be positive (GB), got {args.memory_budget}")
    paths = [check_input_file(path, name="IMAGE") for path in args.images]
    _check_unique_stems(paths)
    out = check_output_path(args.out, name="--out", is_folder=True)
    if not args.overwrite:
        for path in paths:
            for target in predict_outputs.targets(out, path, args).values():
                if target.exists():
                    raise FileExistsError(
                        f"output {target} already exists; pass --overwrite to replace it"
                    )

    configs: list = []

    def check(config, model_path: str) -> None:
        # Each ensemble member against the first, before the next one's ONNX export.
        names = [f"--model {args.model[0]}", f"--model {model_path}"]
        check_members([*configs[:1], config], names)
        configs.append(config)
        if args.tile_shape is not None and len(args.tile_shape) != config.ndim:
            raise ValueError(
                f"--tile-shape needs {config.ndim} values for this {config.ndim}-D "
                f"model, got {args.tile_shape}"
            )
        predict_zarr.check_tile_shape(args.tile_shape, config, args.model, model_path)
        if args.spacing is not None and len(args.spacing) != config.ndim:
            raise ValueError(
                f"--spacing needs {config.ndim} values for this {config.ndim}-D model, "
                f"got {args.spacing}"
            )
        for path in paths:
            predict_zarr.check_fits_in_memory(path, config)
        postprocess_config(args, boundary_class=config.boundary_class)
        problem = membrane_network_problem(config) if args.close_boundaries else None
        if problem:
            raise ValueError(
                f"--close-boundaries closes the membranes of a two-class cell/membrane "
                f"network; --model {model_path} {problem} (for its objects use --instances)"
            )

    try:
        models = [
            _load_network(path, backend=args.backend, check=partial(check, model_path=path))
            for path in args.model
        ]
    except ImportError as error:  # onnxruntime or onnx missing: one line, exit 2
        print(f"biounet predict: error: {error}", file=sys.stderr)
        return 2
    postprocess = postprocess_config(args, boundary_class=models[0].config.boundary_class)
    for path in tqdm(paths, desc="images", unit="image", disable=args.quiet or len(paths) < 2):
        predict_outputs.predict_file(models, path, out, args, postprocess=postprocess)
    return 0


def _load_network(model_path: str, *, backend: str, check):
    """Return the network to predict with: a `UNet`, or an `OnnxRuntimeBackend`.

    `check(config)` sees every network's config once, before an ONNX export where there
    is one, so a model the options refuse costs no export.
    """
    if backend == "onnxruntime":
        from biounet.export.onnx_runtime import load_onnx_backend

        if Path(model_path).suffix.lower() != ".onnx":
            return load_onnx_backend(model_path, check=check)
        network = load_onnx_backend(model_path)
    else:
        from biounet.weightfile import load_model

        if Path(model_path).suffix.lower() == ".onnx":
            raise ValueError(
                f"--model {model_path} is an ONNX file; run it with --backend onnxruntime"
            )
        network = load_model(model_path)
    check(network.config)
    return network


def _resolve_preprocessing(args: argparse.Namespace) -> None:
    """Fill --normalization and --polarity, where not given, from the weight files.

    The members of an ensemble must agree on what they record; a flag given on the
    command line overrides what the files say.
    """
    from biounet.weightfile import stored_preprocessing

    stored = [stored_preprocessing(path) for path in args.model]
    source = "--polarity"
    if args.polarity is None:
        source = f"--model {args.model[0]} records polarity (pass --polarity as_is to drop it):"
    for key in ("normalization", "polarity"):
        if getattr(args, key) is not None:
            continue
        values = {path: found[key] for path, found in zip(args.model, stored)}
        if len(set(values.values())) > 1:
            recorded = ", ".join(f"--model {path}: {value}" for path, value in values.items())
            raise ValueError(
                f"the models were trained with different {key} ({recorded}); pass "
                f"--{key} to choose one"
            )
        setattr(args, key, stored[0][key])
    check_polarity(args.polarity, args.normalization, source=source)


def _check_unique_stems(paths: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise ValueError(
                f"IMAGE {path} and {seen[path.stem]} share the name {path.stem!r}; "
                "their outputs would overwrite each other"
            )
        seen[path.stem] = path
