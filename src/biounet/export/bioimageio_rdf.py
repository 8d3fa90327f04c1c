"""Describe a biounet package in bioimage.io's model format 0.5: axes, halo, rdf.yaml, README.

The packaged networks output softmax probabilities zero-padded back to the input's
size, and every output axis declares the U-Net's halo (92 px for the paper's
network): a consumer pads each input tile by the halo (mirroring, as in Fig. 2 of
Ronneberger et al. 2015), runs it and crops the halo from the output. Valid input
sizes are `min + step * n` with min the smallest valid input and step = 2**depth;
an anisotropic network (`UNetConfig.pool_z`) states its own min, step and halo for Z.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from biounet.config import UNetConfig
from biounet.geometry import (
    config_halo,
    config_size_step,
    min_input_size,
    nearest_valid_sizes,
    pooling_per_axis,
)

WEIGHT_FILE = "biounet.safetensors"
NORMALIZATIONS = ("percentile", "zscore", "none")
PAPER_DOI = "10.1007/978-3-319-24574-4_28"
PAPER = (
    "Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical "
    "Image Segmentation. MICCAI 2015, LNCS 9351, 234-241."
)


@dataclass(frozen=True)
class PackageInfo:
    """What a bioimage.io package says about the model beyond its architecture.

    Attributes:
        name: 5-128 letters, digits, spaces and `_+-()`.
        description: one or two sentences.
        authors: names of the people who trained the model.
        license: SPDX identifier of the weights' licence.
        normalization: how inputs must be normalised, declared as preprocessing:
            "percentile" (1st/99.8th percentile to 0/1 per channel, biounet's default),
            "zscore" or "none".
        polarity: the model's `TrainConfig.polarity`; only "as_is" can be packaged,
            since bioimage.io preprocessing cannot invert an image depending on its
            intensities ("bright_objects" is refused: export ONNX or TorchScript).
        tags: keywords for bioimage.io search.
    """

    name: str = "biounet U-Net"
    description: str = "U-Net segmentation (Ronneberger et al. 2015), trained with biounet."
    authors: tuple[str, ...] = ("biounet",)
    license: str = "MIT"
    normalization: str = "percentile"
    polarity: str = "as_is"
    tags: tuple[str, ...] = ("unet", "segmentation", "biounet")

    def __post_init__(self) -> None:
        allowed = set(string.ascii_letters + string.digits + "_+- ()")
        if not (5 <= len(self.name) <= 128 and set(self.name) <= allowed):
            raise ValueError(
                f"name must be 5-128 letters, digits, spaces or _+-(), got {self.name!r}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {list(NORMALIZATIONS)}, got {self.normalization!r}"
            )
        if self.polarity != "as_is":
            raise ValueError(
                f"polarity {self.polarity!r} (the model's) normalises bright-background "
                "images as their negatives, which bioimage.io preprocessing cannot state: "
                "export it as ONNX or TorchScript instead"
            )
        if not self.authors or not all(isinstance(name, str) and name for name in self.authors):
            raise ValueError(f"authors must be non-empty names, got {self.authors!r}")


def default_test_shape(config: UNetConfig) -> tuple[int, ...]:
    """Return the test tile of a package: per axis the smallest valid input with 4 steps
    of output.

    Example:
        >>> default_test_shape(UNetConfig())
        (252, 252)
        >>> default_test_shape(UNetConfig(depth=2, ndim=3, pool_z=(False, True)))
        (32, 56, 56)
    """
    return tuple(
        nearest_valid_sizes(2 * margin + 4 * step, **kwargs)[1]
        for margin, step, kwargs in axis_geometry(config)
    )


def smallest_package_shape(config: UNetConfig) -> tuple[int, ...]:
    """Return per axis the smallest valid input size that keeps output after the halo crop.

    That is the minimum valid input for valid convolutions; "same"-padded networks take
    smaller inputs, but a tile must be larger than its two halos.

    Example:
        >>> smallest_package_shape(UNetConfig()), smallest_package_shape(UNetConfig(padding="same"))
        ((188, 188), (192, 192))
        >>> smallest_package_shape(UNetConfig(depth=2, ndim=3, pool_z=(False, True)))
        (26, 44, 44)
    """
    return tuple(
        nearest_valid_sizes(max(min_input_size(**kwargs), 2 * margin + 1), **kwargs)[1]
        for margin, _, kwargs in axis_geometry(config)
    )


def _px(margins: Sequence[int]) -> str:
    """'92 px', or '12, 20, 20 px (z, y, x)' for an anisotropic network."""
    if len(set(margins)) == 1:
        return f"{margins[0]} px"
    names = ", ".join(["z", "y", "x"][3 - len(margins) :])
    return f"{', '.join(map(str, margins))} px ({names})"


def axis_geometry(config: UNetConfig) -> list[tuple[int, int, dict]]:
    """Per spatial axis: the halo, the size step and the geometry keywords of its pooling."""
    return [
        (margin, step, {"depth": config.depth, "padding": config.padding, "pooling": factors})
        for margin, step, factors in zip(
            config_halo(config), config_size_step(config), pooling_per_axis(config), strict=True
        )
    ]


def check_license(license: str) -> None:
    from bioimageio.spec.model.v0_5 import LicenseId

    try:
        LicenseId(license)
    except ValueError:
        raise ValueError(
            f"license {license!r} is not an SPDX licence identifier (e.g. MIT, BSD-3-Clause, "
            "CC-BY-4.0; see spdx.org/licenses)"
        ) from None


def model_description(config: UNetConfig, info: PackageInfo, files: dict[str, Path], *, opset: int):
    from bioimageio.spec.model import v0_5 as bio

    spatial = ["z", "y", "x"][3 - config.ndim :]
    axes = axis_geometry(config)
    sizes = [
        bio.ParameterizedSize(min=smallest, step=step)
        for smallest, (_, step, _) in zip(smallest_package_shape(config), axes)
    ]
    margins = [margin for margin, _, _ in axes]
    input_id, output_id = bio.TensorId("image"), bio.TensorId("probabilities")
    if config.boundary_class:  # consumers other than biounet read the classes from here
        class_names = ["background", "interior", "boundary"]
    elif config.n_classes == 2:
        class_names = ["background", "foreground"]
    else:
        class_names = [f"class{index}" for index in range(config.n_classes)]
    image = bio.InputTensorDescr(
        id=input_id,
        description="normalised image; valid sizes per spatial axis: min + step * n",
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[f"channel{c}" for c in range(config.in_channels)]),
            *(
                bio.SpaceInputAxis(id=bio.AxisId(name), size=size)
                for name, size in zip(spatial, sizes)
            ),
        ],
        test_tensor=bio.FileDescr(source=files["test_input.npy"]),
        sample_tensor=bio.FileDescr(source=files["sample_input.tif"]),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=_preprocessing(bio, info.normalization, spatial),
    )
    probabilities = bio.OutputTensorDescr(
        id=output_id,
        description=f"softmax class probabilities; crop the halo ({_px(margins)}) per side",
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=class_names),
            *(
                bio.SpaceOutputAxisWithHalo(
                    id=bio.AxisId(name),
                    halo=margin,
                    size=bio.SizeReference(tensor_id=input_id, axis_id=bio.AxisId(name)),
                )
                for name, margin in zip(spatial, margins)
            ),
        ],
        test_tensor=bio.FileDescr(source=files["test_output.npy"]),
        sample_tensor=bio.FileDescr(source=files["sample_output.tif"]),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
    )
    return bio.ModelDescr(
        name=info.name,
        description=info.description,
        authors=[bio.Author(name=name) for name in info.authors],
        cite=[bio.CiteEntry(text=PAPER, doi=bio.Doi(PAPER_DOI))],
        license=bio.LicenseId(info.license),
        tags=list(dict.fromkeys([*info.tags, f"{config.ndim}d", "pytorch", "onnx"])),
        documentation=bio.FileDescr(source=files["README.md"]),
        covers=[bio.FileDescr(source=files["cover.png"])],
        attachments=[bio.FileDescr(source=files[WEIGHT_FILE])],
        inputs=[image],
        outputs=[probabilities],
        weights=bio.WeightsDescr(
            torchscript=bio.TorchscriptWeightsDescr(
                source=files["weights_torchscript.pt"],
                pytorch_version=bio.Version(torch.__version__.split("+")[0]),
            ),
            onnx=bio.OnnxWeightsDescr(
                source=files["weights.onnx"],
                opset_version=opset,
                parent="torchscript",
                comment="exported from the same PyTorch module as the TorchScript weights",
            ),
        ),
        config=bio.Config(
            bioimageio=bio.BioimageioConfig(
                reproducibility_tolerance=[
                    bio.ReproducibilityTolerance(absolute_tolerance=1e-4, relative_tolerance=0)
                ]
            ),
            biounet={
                "weights": WEIGHT_FILE,
                "unet_config": config.to_dict(),
                "halo": margins[0] if len(set(margins)) == 1 else margins,
                "normalization": info.normalization,
            },
        ),
    )


def _preprocessing(bio, normalization: str, spatial: list[str]) -> list:
    axes = [bio.AxisId(name) for name in spatial]  # per sample and channel
    if normalization == "percentile":
        kwargs = bio.ScaleRangeKwargs(axes=axes, min_percentile=1.0, max_percentile=99.8)
        return [bio.ScaleRangeDescr(kwargs=kwargs)]
    if normalization == "zscore":
        return [bio.ZeroMeanUnitVarianceDescr(kwargs=bio.ZeroMeanUnitVarianceKwargs(axes=axes))]
    return []


def readme_text(config: UNetConfig, info: PackageInfo) -> str:
    axes = axis_geometry(config)
    margin = _px([halo for halo, _, _ in axes])
    sizes = ", ".join(
        f"{smallest} + {step} n"
        for smallest, (_, step, _) in zip(smallest_package_shape(config), axes)
    )
    if len(set(sizes.split(", "))) == 1:
        sizes = sizes.split(", ")[0]
    else:
        sizes = f"({sizes})"
    if config.padding == "valid":
        border = (
            f"The outer {margin} per side (the halo) are zero: the network predicts only "
            "pixels with their full context, so tiled results equal a whole-image prediction."
        )
    else:
        border = f"The outer {margin} per side (the halo) are affected by zero padding."
    return f"""# {info.name}

{info.description}

A {config.ndim}-D U-Net (Ronneberger, Fischer, Brox, MICCAI 2015) exported by biounet:
depth {config.depth}, {config.base_channels} base channels, {config.padding} convolutions,
{config.in_channels} input channel(s), {config.n_classes} classes.

## Inputs and outputs

- Input `image`: float32 (batch, channel, {", ".join(["z", "y", "x"][3 - config.ndim :])}),
  normalised ({info.normalization}). Valid sizes per spatial axis: {sizes}.
- Output `probabilities`: softmax over classes, same size as the input. {border}
  For large images, tile with overlap: pad every input tile by {margin} per side
  (mirroring the image at its borders) and crop {margin} per side from each output.

## Weights

TorchScript and ONNX (opset in rdf.yaml) compute the same probabilities (checked to
1e-4 at export). `{WEIGHT_FILE}` holds the same weights and the architecture for
biounet (`biounet.load_model`); there are no pickle-based `pytorch_state_dict` weights.

## Validation

The test tensors were produced by the PyTorch model; the exported weights reproduce
them to an absolute tolerance of 1e-4. Validate segmentation quality on annotated
images of your own microscope before use (e.g. `biounet evaluate`: IoU, F1, AP).

## Citation

{PAPER} doi:{PAPER_DOI}
"""
