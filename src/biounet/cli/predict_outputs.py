"""Write the outputs of in-memory prediction for one image file: probability, mask, all
classes, instances and the closed map as TIFFs, each to a temporary name renamed into place."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np


def targets(out: Path, path: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The files predicting IMAGE `path` writes into `out`, by kind, for these options."""
    names = ["probability", "mask"]
    names += ["probabilities"] * args.save_probabilities + ["instances"] * args.instances
    names += ["closed"] * args.close_boundaries
    return {name: out / f"{path.stem}_{name}.tif" for name in names}


def _remove_stale_outputs(out: Path, path: Path, args: argparse.Namespace) -> None:
    """With --overwrite, drop an earlier run's <name>_instances.tif (<name>_closed.tif)
    that this run does not write: beside the new probability map `biounet evaluate`
    would score those instances as this model's, and the closed map would pass for its."""
    import logging

    optional = {"instances": args.instances, "closed": args.close_boundaries}
    for kind, is_written in optional.items():
        stale = out / f"{path.stem}_{kind}.tif"
        if args.overwrite and not is_written and stale.is_file():
            stale.unlink()
            logging.getLogger(__name__).warning("removed %s of an earlier run", stale)


def _instances(probabilities: np.ndarray, config, postprocess) -> np.ndarray:
    """Object ids of (C, ...) probabilities; the pages of a 2-D network's stack are
    segmented one by one and numbered on, so every id names one object in the stack."""
    from biounet.postprocess import instances_from_probabilities

    per_page = probabilities.ndim == config.ndim + 2
    pages_first = np.moveaxis(probabilities, 1, 0) if per_page else probabilities[None]
    pages, n_objects = [], 0
    for one in pages_first:
        page = instances_from_probabilities(
            one, boundary_class=config.boundary_class, config=postprocess
        ).astype(np.int64)
        pages.append(np.where(page > 0, page + n_objects, 0))
        n_objects += int(page.max(initial=0))
    instances = np.stack(pages) if per_page else pages[0]
    return instances.astype(np.uint16 if n_objects < 2**16 else np.uint32)


def predict_file(
    models: list, path: Path, out: Path, args: argparse.Namespace, *, postprocess=None
) -> None:
    """Predict IMAGE `path` with the network, or the mean of several (`predict_ensemble`)."""
    from biounet.cli.postprocess_args import with_file_spacing
    from biounet.data.calibration import read_calibration
    from biounet.data.io import read_image, write_tiff
    from biounet.data.prepare import prepare_page, split_pages
    from biounet.inference.ensemble import predict_ensemble

    config = models[0].config
    raw = read_image(path, name="IMAGE")
    pages = split_pages(raw, ndim=config.ndim, name=f"IMAGE {path}")
    results = []
    for index, page in enumerate(pages):
        name = f"IMAGE {path}" + (f" page {index}" if len(pages) > 1 else "")
        image = prepare_page(
            page,
            in_channels=config.in_channels,
            normalization=args.normalization,
            polarity=args.polarity,
            name=name,
        )
        results.append(
            predict_ensemble(
                models,
                image,
                tta=args.tta,
                tile_shape=tuple(args.tile_shape) if args.tile_shape else None,
                batch_size=args.batch_size,
                memory_budget=int(args.memory_budget * 1024**3),
                progress=not args.quiet,
            )
        )
    probabilities = np.stack(results, axis=1) if len(pages) > 1 else results[0]
    foreground = (1.0 - probabilities[0]).astype(np.float32)
    # class ids above 255 need 16 bits (UNetConfig allows up to 1024 classes)
    mask_dtype = np.uint8 if len(probabilities) <= 256 else np.uint16
    mask = np.argmax(probabilities, axis=0).astype(mask_dtype)
    files = targets(out, path, args)
    # Outputs state the input's pixel size, so a viewer measures them in its units.
    write = functools.partial(write_tiff, calibration=read_calibration(path))
    write(files["probability"], foreground)
    write(files["mask"], mask)
    if args.save_probabilities:
        write(files["probabilities"], probabilities, classes_first=True)
    _remove_stale_outputs(out, path, args)
    if args.instances:
        is_volume = config.ndim == 3 and probabilities.ndim == 4
        postprocess = with_file_spacing(postprocess, path, args, is_volume=is_volume)
        write(files["instances"], _instances(probabilities, config, postprocess))
    if args.close_boundaries:
        write(files["closed"], _closed(foreground))


def _closed(foreground: np.ndarray) -> np.ndarray:
    """`close_boundaries` of every (Y, X) slice: of a page, a stack or a 3-D volume."""
    from biounet.boundaries import close_boundaries

    slices = foreground.reshape(-1, *foreground.shape[-2:])
    return close_boundaries(slices).reshape(foreground.shape)
