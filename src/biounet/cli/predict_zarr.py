"""Out-of-core branch of `biounet predict`: one zarr or TIFF IMAGE into an OME-Zarr --out.

Routing: `biounet predict` goes out of core when --out ends in ``.zarr`` or IMAGE is a
zarr store (``image.zarr``, ``image.zarr/0``, an OME-Zarr group). Images of the
in-memory path (TIFF, PNG into a folder) that would not fit in memory are refused
with a pointer to ``--out NAME.zarr``, rather than rerouted to an output the user did
not ask for.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

NORMALIZATIONS = {"percentile": "percentile", "zscore": "zscore", "none": None}
_ZARR_ONLY = ("block_shape", "scheduler", "resume")  # flags that mean nothing in memory


def wants_zarr(args: argparse.Namespace) -> bool:
    """Say whether the arguments ask for out-of-core prediction into zarr."""
    from biounet.data.ome_zarr import is_zarr_path

    is_zarr_out = os.fspath(args.out).rstrip("/\\").lower().endswith(".zarr")
    return is_zarr_out or any(is_zarr_path(image) for image in args.images)


def refuse_zarr_options(args: argparse.Namespace) -> None:
    """Raise ValueError if an out-of-core option is given for in-memory prediction."""
    given = [name for name in _ZARR_ONLY if getattr(args, name, None) not in (None, False)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        verb = "needs" if len(given) == 1 else "need"
        raise ValueError(f"{flags} {verb} zarr output: pass --out NAME.zarr (got --out {args.out})")


def check_fits_in_memory(path: Path, config) -> None:
    """Refuse a TIFF too large for in-memory prediction from its header, before reading it.

    Counts what `inference.memory.check_fits_in_memory` counts once the image is read
    (raw pixels, their float32 copy, float32 probabilities), plus the foreground
    probability and uint8 mask written out; tile activations come on top.

    Raises:
        ValueError: naming the bytes needed and the zarr output that avoids them.
    """
    from biounet.data.io import TIFF_SUFFIXES, read_tiff_shape
    from biounet.inference import memory

    if path.suffix.lower() not in TIFF_SUFFIXES:
        return
    available = memory.available_memory_bytes()
    if available is None:
        return
    shape, dtype = read_tiff_shape(path, name="IMAGE")
    n_pixels = 1
    for size in shape:
        n_pixels *= int(size)
    per_pixel = dtype.itemsize + 4 * config.in_channels + 4 * config.n_classes + 4 + 1
    needed = n_pixels * per_pixel
    if needed > available:
        raise ValueError(
            f"IMAGE {path} {shape} needs about {needed / 1e9:.1f} GB for in-memory prediction, "
            f"more than the {available / 1e9:.1f} GB available; predict it out of core with "
            f"--out {path.stem}.zarr"
        )


def run(args: argparse.Namespace) -> int:
    """Predict one IMAGE block by block into the OME-Zarr group --out; return 0."""
    from biounet.data.ome_zarr import IMAGE_PATH
    from biounet.inference.blockwise import predict_blockwise
    from biounet.inference.ensemble import check_members
    from biounet.weightfile import load_model

    source = _check_arguments(args)
    target = Path(args.out)
    resume = _check_target(target, resume=args.resume, overwrite=args.overwrite)
    models: list = []
    for path in args.model:
        model = load_model(path)
        # each member against the first, before the next one is read
        first = models[0].config if models else model.config
        check_members([first, model.config], [f"--model {args.model[0]}", f"--model {path}"])
        models.append(model)
    ndim = models[0].config.ndim
    for flag, values in (("--tile-shape", args.tile_shape), ("--block-shape", args.block_shape)):
        if values is not None and len(values) != ndim:
            raise ValueError(
                f"{flag} needs {ndim} values for this {ndim}-D model, got {values}"
            )
    for path, model in zip(args.model, models):
        check_tile_shape(args.tile_shape, model.config, args.model, path)
    tile_shape = args.tile_shape or (_recorded_tile_shape(target / IMAGE_PATH) if resume else None)
    probabilities = predict_blockwise(
        models[0] if len(models) == 1 else models,
        source,
        target / IMAGE_PATH,
        tile_shape=tuple(tile_shape) if tile_shape else None,
        block_shape=tuple(args.block_shape) if args.block_shape else None,
        memory_budget=int(args.memory_budget * 1024**3),
        scheduler=args.scheduler,
        resume=resume,
        progress=not args.quiet,
        normalization=NORMALIZATIONS[args.normalization],
        tta=args.tta,
        polarity=args.polarity,
    )
    _finish_group(target, probabilities)
    return 0


def check_tile_shape(tile_shape, config, model_paths: list[str], model_path: str) -> None:
    """Refuse a --tile-shape that the network of --model `model_path` cannot take; in an
    ensemble (several `model_paths`) the message names that member."""
    from biounet.inference.tiling import make_tile_grid

    if tile_shape is None:
        return
    try:
        make_tile_grid(config, tile_shape, tile_shape)
    except ValueError as error:
        if len(model_paths) < 2:
            raise
        raise ValueError(f"--tile-shape for --model {model_path}: {error}") from None


def _check_arguments(args: argparse.Namespace) -> str:
    """Return the one IMAGE after checking the options that zarr output accepts."""
    if len(args.images) != 1:
        raise ValueError(
            f"zarr output takes one IMAGE, got {len(args.images)}; run biounet predict once "
            "per image"
        )
    if not os.fspath(args.out).rstrip("/\\").lower().endswith(".zarr"):
        raise ValueError(
            f"--out {args.out} must end in .zarr for the zarr IMAGE {args.images[0]}; "
            "prediction goes block by block into that OME-Zarr group"
        )
    if args.batch_size is not None:
        raise ValueError(
            "--batch-size applies to TIFF/PNG output; zarr output picks it from --memory-budget"
        )
    if args.memory_budget <= 0:
        raise ValueError(f"--memory-budget must be positive (GB), got {args.memory_budget}")
    # options of in-memory prediction only
    for flag in ("backend", "instances", "close_boundaries"):
        value = getattr(args, flag, None)
        if value not in (None, False, "torch"):
            raise ValueError(f"--{flag.replace('_', '-')} is not available with zarr output yet")
    from biounet.data.io import TIFF_SUFFIXES
    from biounet.data.ome_zarr import is_zarr_path

    source = args.images[0]
    if not Path(source).exists():
        raise FileNotFoundError(f"IMAGE {source} does not exist")
    if not (is_zarr_path(source) or Path(source).suffix.lower() in TIFF_SUFFIXES):
        raise ValueError(
            f"IMAGE {source} is neither zarr nor TIFF, the formats read out of core; "
            "predict it into a folder (--out DIR)"
        )
    return os.fspath(source)


def _check_target(target: Path, *, resume: bool, overwrite: bool) -> bool:
    """Return whether to resume; refuse targets that must not be touched."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other; pass one of them")
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return False
    if target.is_file() or not _is_prediction_group(target):
        raise FileExistsError(
            f"--out {target} exists and is not an OME-Zarr group written by biounet predict; "
            "choose another path"
        )
    if not (resume or overwrite):
        raise FileExistsError(
            f"--out {target} already exists; pass --resume to continue an interrupted run or "
            "--overwrite to replace it"
        )
    return resume


def _is_prediction_group(target: Path) -> bool:
    """A group's metadata at the root, or only level 0 (a first run that was interrupted)."""
    import json

    from biounet.data.ome_zarr import IMAGE_PATH

    if (target / ".zgroup").is_file():
        return True
    metadata = target / "zarr.json"
    if metadata.is_file():
        try:
            return json.loads(metadata.read_text()).get("node_type") == "group"
        except (OSError, ValueError):
            return False
    level = target / IMAGE_PATH
    return (level / "zarr.json").is_file() or (level / ".zarray").is_file()


def _recorded_tile_shape(level: Path) -> list[int] | None:
    """The tile shape an interrupted run used, so --resume needs no --tile-shape again.

    An ensemble or --tta run records one per member and transform; unless they are all
    one (a given --tile-shape), None lets the budget choose them again, as the first run did.
    """
    import zarr

    from biounet.inference.blockwise import RECORD_KEY

    try:
        record = dict(zarr.open_array(str(level), mode="r").attrs).get(RECORD_KEY) or {}
    except Exception:  # no readable level 0 yet: nothing to resume from
        return None
    signature = record.get("signature", {})
    tile_shape = signature.get("tile_shape")
    if any(shape != tile_shape for shape in signature.get("tile_shapes", [])):
        return None
    return tile_shape


def _finish_group(target: Path, probabilities) -> None:
    """Write the group's OME-Zarr metadata and its label image after the prediction."""
    import zarr

    from biounet.data.ome_zarr import image_axes, write_image_metadata, write_label_image

    group = zarr.open_group(str(target), mode="a", zarr_format=probabilities.metadata.zarr_format)
    axes, scale = image_axes(probabilities)
    write_image_metadata(group, axes=axes, scale=scale, name="probabilities")
    write_label_image(group, probabilities, name="mask")
