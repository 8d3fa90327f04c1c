"""Building blocks of the U-Net: two-conv block, up-sampling, crop (Ronneberger et al. 2015)."""

from __future__ import annotations

import math

import torch
from torch import nn

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


def _batch_norm(channels: int, ndim: int) -> nn.Module:
    return (nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d)(channels)


def _group_norm(channels: int, ndim: int) -> nn.Module:
    del ndim
    groups = math.gcd(channels, 32)  # up to 32 groups (Wu & He 2018) that divide the width
    return nn.GroupNorm(groups, channels)


def _instance_norm(channels: int, ndim: int) -> nn.Module:
    return (nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d)(channels, affine=True)


NORM = {"batch": _batch_norm, "group": _group_norm, "instance": _instance_norm}


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by an optional normalisation and a ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, *, ndim: int, padding: str, norm: str | None
    ) -> None:
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            layers.append(
                CONV[ndim](
                    channels,
                    out_channels,
                    kernel_size=3,
                    padding=1 if padding == "same" else 0,
                    bias=norm is None,  # a following normalisation has its own shift
                )
            )
            if norm is not None:
                layers.append(NORM[norm](out_channels, ndim))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class BilinearUp(nn.Sequential):
    """Bi/trilinear up-sampling (2x, or `scale` per axis) and a 1x1 conv halving the channels."""

    def __init__(
        self, in_channels: int, out_channels: int, *, ndim: int, scale: int | tuple[int, ...] = 2
    ) -> None:
        mode = "bilinear" if ndim == 2 else "trilinear"
        factor = float(scale) if isinstance(scale, int) else tuple(float(s) for s in scale)
        super().__init__(
            nn.Upsample(scale_factor=factor, mode=mode, align_corners=False),
            CONV[ndim](in_channels, out_channels, kernel_size=1),
        )


def _upconv(
    in_channels: int, out_channels: int, *, ndim: int, scale: int | tuple[int, ...] = 2
) -> nn.Module:
    # kernel = stride = the pooling kernel: 2x2 (2x2x2, or (1, 2, 2) for anisotropic levels)
    return CONV_TRANSPOSE[ndim](in_channels, out_channels, kernel_size=scale, stride=scale)


def _bilinear(
    in_channels: int, out_channels: int, *, ndim: int, scale: int | tuple[int, ...] = 2
) -> nn.Module:
    return BilinearUp(in_channels, out_channels, ndim=ndim, scale=scale)


UPSAMPLING = {"upconv": _upconv, "bilinear": _bilinear}


def center_crop(tensor: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """Crop the spatial axes of a (B, C, ...) tensor symmetrically to `spatial_shape`.

    The contracting path's feature maps are larger than the expansive path's after
    unpadded convolutions; the paper crops them before concatenation (Fig. 1).
    """
    slices = [slice(None), slice(None)]
    for size, target in zip(tensor.shape[2:], spatial_shape):
        start = (size - target) // 2
        slices.append(slice(start, start + target))
    return tensor[tuple(slices)]


class Up(nn.Module):
    """Up-sample, crop-and-concatenate the skip connection, then a ConvBlock.

    `scale` is the pooling kernel of the level it undoes: 2, or per axis such as
    (1, 2, 2) at an anisotropic level of a 3-D U-Net.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        ndim: int,
        padding: str,
        norm: str | None,
        upsampling: str,
        scale: int | tuple[int, ...] = 2,
    ) -> None:
        super().__init__()
        self.up = UPSAMPLING[upsampling](in_channels, out_channels, ndim=ndim, scale=scale)
        self.conv = ConvBlock(2 * out_channels, out_channels, ndim=ndim, padding=padding, norm=norm)

    def forward(self, features: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        upsampled = self.up(features)
        skip = center_crop(skip, tuple(upsampled.shape[2:]))
        return self.conv(torch.cat([skip, upsampled], dim=1))


def he_initialize(module: nn.Module) -> None:
    """He et al. 2015 initialisation as in Ronneberger et al. 2015, Sec. 3.

    Weights ~ N(0, sqrt(2 / N)) with N the incoming nodes of one neuron: for a 3x3
    convolution with 64 input channels N = 9 * 64 = 576. A 2x2 up-convolution of
    stride 2 feeds each output pixel from one kernel tap, so there N = in_channels.
    Biases start at zero.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Conv3d)):
            fan_in = layer.in_channels * math.prod(layer.kernel_size)
        elif isinstance(layer, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            overlap = math.prod(k // s for k, s in zip(layer.kernel_size, layer.stride))
            fan_in = layer.in_channels * max(overlap, 1)
        else:
            continue
        nn.init.normal_(layer.weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
