"""Post-processing flags shared by `predict --instances` and `evaluate` of probability maps.

The flags default to None, so that a command can tell which were given, and so that
building the parser does not import scikit-image; the defaults named in the help are
`PostprocessConfig`'s (a test keeps them equal).
"""

from __future__ import annotations

import argparse
import math

FLAGS = (
    "threshold", "min_size", "no_watershed", "seeds", "seed_prominence", "distance_sigma", "spacing"
)
SEEDS = ("distance", "probability", "interior")


def add_postprocess_arguments(
    parser: argparse.ArgumentParser,
    *,
    used_by: str,
    with_interior: bool = True,
    spacing_default: str = "1 on every axis",
) -> None:
    """Add --threshold, --min-size, --no-watershed, --seeds, --seed-prominence,
    --distance-sigma and --spacing; `used_by` says when.

    `with_interior`: offer interior seeds (only a command with the model has them).
    `spacing_default`: what --spacing is when not given, for its help."""
    group = parser.add_argument_group(f"post-processing ({used_by})")
    group.add_argument(
        "--threshold",
        type=float,
        help="foreground probability (in [0, 1), not a logit) above which a pixel belongs "
        "to an object (default: 0.5)",
    )
    group.add_argument(
        "--min-size",
        type=int,
        metavar="N",
        help="drop objects of fewer pixels (voxels in 3-D) (default: 16)",
    )
    group.add_argument(
        "--no-watershed",
        action="store_true",
        default=None,
        help="every connected component is one object: touching objects are not split",
    )
    if with_interior:
        seeds_help = (
            "watershed seeds: maxima of the distance to the background, regions of high "
            "probability, or the predicted interiors of a boundary_class model (default: "
            "interior for such a model, distance otherwise)"
        )
    else:
        seeds_help = (
            "watershed seeds: maxima of the distance to the background or regions of high "
            "probability (default: distance); interior seeds need the model: use predict "
            "--instances"
        )
    group.add_argument(
        "--seeds",
        choices=SEEDS if with_interior else SEEDS[:2],
        help=seeds_help,
    )
    group.add_argument(
        "--seed-prominence",
        type=float,
        metavar="PX",
        help="distance seeds: how far (px) a maximum of the distance to the background "
        "must rise above the saddle to a higher one to seed its own object; larger merges "
        "more (default: 1.5)",
    )
    group.add_argument(
        "--distance-sigma",
        type=float,
        metavar="PX",
        help="distance seeds: Gaussian smoothing (px) of the distance before its maxima "
        "are taken; 0 turns it off (default: 1)",
    )
    group.add_argument(
        "--spacing",
        type=float,
        nargs="+",
        metavar="S",
        help="pixel (voxel) size per axis in units of the in-plane pixel, for the distance "
        f"seeds of anisotropic volumes, e.g. --spacing 8 1 1 (default: {spacing_default})",
    )


def given_postprocess_flags(args: argparse.Namespace) -> list[str]:
    """The post-processing flags given on the command line, as typed."""
    return [f"--{name.replace('_', '-')}" for name in FLAGS if getattr(args, name) is not None]


def postprocess_config(args: argparse.Namespace, *, boundary_class: bool | None = False):
    """The `PostprocessConfig` the flags ask for; interior seeds for a boundary-class model.

    `boundary_class=None`: the model is not known yet; checks what the flags alone decide.

    Raises:
        ValueError: naming the flag, for a threshold outside [0, 1), a negative size or
            interior seeds without a boundary-class model.
    """
    from biounet.postprocess import PostprocessConfig

    defaults = PostprocessConfig()
    threshold = defaults.threshold if args.threshold is None else args.threshold
    min_size = defaults.min_size if args.min_size is None else args.min_size
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"--threshold must lie in [0, 1), got {threshold}")
    if min_size < 0:
        raise ValueError(f"--min-size must be >= 0, got {min_size}")
    if args.seeds is not None and args.no_watershed:
        raise ValueError("--seeds chooses the watershed's seeds; drop it or --no-watershed")
    seeds = args.seeds or ("interior" if boundary_class else defaults.seeds)
    if seeds == "interior" and boundary_class is False:
        raise ValueError(
            "--seeds interior needs the interior class of a UNetConfig.boundary_class "
            "model, which this model does not have"
        )
    if seeds == "probability" and threshold >= defaults.seed_threshold:
        raise ValueError(
            f"--seeds probability seeds where the probability exceeds "
            f"{defaults.seed_threshold}: --threshold must be below it, got {threshold}"
        )
    from biounet.config import check_spacing

    spacing = check_spacing(args.spacing, name="--spacing")
    prominence = defaults.min_seed_prominence_px
    if args.seed_prominence is not None:
        prominence = args.seed_prominence
        if not (math.isfinite(prominence) and prominence > 0):
            raise ValueError(f"--seed-prominence must be > 0 (px), got {prominence}")
    sigma = defaults.distance_sigma_px
    if args.distance_sigma is not None:
        sigma = args.distance_sigma
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"--distance-sigma must be >= 0 (px), got {sigma}")
    for flag, value, verb in (
        ("--seed-prominence", args.seed_prominence, "selects"),
        ("--distance-sigma", args.distance_sigma, "smooths"),
        ("--spacing", spacing, "measures"),
    ):
        if value is not None and (args.no_watershed or seeds != "distance"):
            used = "--no-watershed" if args.no_watershed else f"{seeds} seeds"
            raise ValueError(
                f"{flag} {verb} the distance seeds of the watershed; this run uses {used}: "
                f"drop {flag} or use --seeds distance"
            )
    return PostprocessConfig(
        threshold=threshold,
        min_size=min_size,
        watershed=not args.no_watershed,
        seeds=seeds,
        min_seed_prominence_px=prominence,
        distance_sigma_px=sigma,
        spacing=spacing,
    )


def with_file_spacing(postprocess, path, args: argparse.Namespace, *, is_volume: bool):
    """Without --spacing, a volume's distance seeds measure it in the voxel size its TIFF
    states (`voxel_spacing`: ImageJ's Z spacing, OME's PhysicalSizeZ).

    `predict --instances` reads it from the input image and `evaluate --volume` from the
    probability map (which `predict` writes with the input's calibration), so both
    cut a 3-D network's map into the same objects.

    Args:
        postprocess: the flags' `PostprocessConfig` (None: the defaults).
        path: the TIFF whose calibration applies.
        args: the parsed command line (its `spacing`).
        is_volume: whether the map is a (Z, Y, X) volume.

    Returns:
        `postprocess` itself when --spacing was given, the seeds are not distance
        seeds, the map is no volume or the file states no (or cubic) voxels; else a
        copy with the file's `spacing`, said in a warning.
    """
    import dataclasses
    import logging

    from biounet.data.calibration import read_calibration, voxel_spacing
    from biounet.postprocess import PostprocessConfig

    postprocess = postprocess or PostprocessConfig()
    uses_distance = postprocess.watershed and postprocess.seeds == "distance"
    if args.spacing is not None or not (is_volume and uses_distance):
        return postprocess
    calibration = read_calibration(path)
    spacing = voxel_spacing(calibration)
    # Said at warning level, which the CLI shows by default: it changes the objects.
    logger = logging.getLogger(__name__)
    if spacing is None:
        if calibration is not None and calibration.spacing is not None:
            logger.warning(
                "%s states a Z step but no pixel size in a known unit; distance seeds "
                "count voxels as cubes (pass --spacing Z Y X)", path
            )
        return postprocess
    if all(math.isclose(size, 1.0) for size in spacing):  # cubes: what no spacing means
        return postprocess
    logger.warning(
        "%s: distance seeds with --spacing %s from its calibration (pass --spacing to "
        "override)", path, " ".join(f"{size:g}" for size in spacing)
    )
    return dataclasses.replace(postprocess, spacing=spacing)
