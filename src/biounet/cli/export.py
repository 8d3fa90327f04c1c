"""Export a trained U-Net for deployment: ONNX, TorchScript or a bioimage.io model package.

Every export is compared with the PyTorch model on test tiles before it is written
(max abs difference of probabilities <= 1e-4) and written atomically. ONNX and
TorchScript files map images to class scores with any batch size and any valid tile
shape; TorchScript files contain code, so load them only from trusted sources
(biounet never loads them; `predict --backend onnxruntime` runs ONNX files, which hold
no code). Both record how to normalise the input (--normalization, and the weight
file's polarity). Needs `pip install 'biounet[export]'`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("onnx", "torchscript", "bioimageio")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="weight file (.safetensors) from biounet")
    parser.add_argument("--format", required=True, choices=FORMATS, help="export format")
    parser.add_argument("--out", required=True, help="output file (.onnx, .pt or .zip)")
    parser.add_argument(
        "--tile-shape",
        type=int,
        nargs="+",
        metavar="N",
        help="a valid tile shape to check the export on (bioimageio: the test tile)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--normalization",
        choices=("percentile", "zscore", "none"),
        default=None,
        help="input normalisation the model was trained with, recorded in the export "
        "(default: as its weight file records; else percentile; none: bioimageio only)",
    )
    onnx = parser.add_argument_group("ONNX (also inside bioimageio packages)")
    onnx.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: 18)")
    onnx.add_argument(
        "--onnx-exporter",
        choices=("dynamo", "legacy"),
        default="dynamo",
        help="torch.export-based (default, 10-30 s) or the deprecated TorchScript-based (1 s)",
    )
    package = parser.add_argument_group("bioimageio package")
    package.add_argument("--name", default="biounet U-Net", help="model name")
    package.add_argument("--description", help="one or two sentences about the model")
    package.add_argument(
        "--author", action="append", help="author name (repeat for several; default: biounet)"
    )
    package.add_argument("--license", default="MIT", help="SPDX licence identifier (default MIT)")
    package.add_argument(
        "--test-image", help="TIFF/PNG whose centre becomes the test tensor and cover image"
    )


def run(args: argparse.Namespace) -> int:
    from biounet.data.outputs import check_output_path
    from biounet.weightfile import load_model, stored_preprocessing

    if args.format != "bioimageio" and args.normalization == "none":
        raise ValueError(
            f"--normalization none is for bioimageio packages; a {args.format} export "
            "records percentile or zscore, which biounet predict applies"
        )
    out = check_output_path(args.out, name="--out")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"output {out} already exists; pass --overwrite to replace it")
    model = load_model(args.model)
    stored = stored_preprocessing(args.model)
    if args.normalization is None:
        args.normalization = stored["normalization"]
    if args.tile_shape is not None and len(args.tile_shape) != model.config.ndim:
        raise ValueError(
            f"--tile-shape needs {model.config.ndim} values for this {model.config.ndim}-D "
            f"model, got {args.tile_shape}"
        )
    try:
        path = _export(model, out, args, stored)
    except ImportError as error:  # an optional package is missing: one line, exit 2
        print(f"biounet export: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _export(model, out: Path, args: argparse.Namespace, stored: dict[str, str]) -> Path:
    tile_shape = tuple(args.tile_shape) if args.tile_shape else None
    if args.format != "bioimageio":
        stored = {**stored, "normalization": args.normalization}
    if args.format == "torchscript":
        from biounet.export.torchscript import export_torchscript

        return export_torchscript(
            model, out, tile_shape=tile_shape, overwrite=args.overwrite, preprocessing=stored
        )
    if args.format == "onnx":
        from biounet.export.onnx import export_onnx

        return export_onnx(
            model,
            out,
            tile_shape=tile_shape,
            opset=args.opset,
            exporter=args.onnx_exporter,
            overwrite=args.overwrite,
            preprocessing=stored,
        )
    from biounet.export.bioimageio import PackageInfo, export_bioimageio

    info = PackageInfo(
        name=args.name,
        description=args.description or PackageInfo.description,
        authors=tuple(args.author or PackageInfo.authors),
        license=args.license,
        normalization=args.normalization,
        polarity=stored["polarity"],
    )
    test_image = _read_test_image(args.test_image, model.config, args.normalization)
    return export_bioimageio(
        model,
        out,
        info=info,
        test_image=test_image,
        tile_shape=tile_shape,
        opset=args.opset,
        onnx_exporter=args.onnx_exporter,
        overwrite=args.overwrite,
    )


def _read_test_image(path: str | None, config, normalization: str):
    if path is None:
        return None
    from biounet.data.io import read_image
    from biounet.data.prepare import prepare_page, split_pages

    raw = read_image(path, name="--test-image")
    page = split_pages(raw, ndim=config.ndim, name=f"--test-image {path}")[0]
    return prepare_page(
        page,
        in_channels=config.in_channels,
        normalization=normalization,
        name=f"--test-image {path}",
    )
