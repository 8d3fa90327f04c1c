"""The U-Net of Ronneberger et al. 2015 (Fig. 1); 3-D as in Cicek et al. 2016; from a config."""

from __future__ import annotations

import torch
from torch import nn

from biounet.config import UNetConfig
from biounet.geometry import config_output_shape, pooling_per_level
from biounet.model.blocks import CONV, DROPOUT, MAX_POOL, ConvBlock, Up, he_initialize


class UNet(nn.Module):
    """U-Net: contracting path, bottleneck, expansive path with crop-and-concatenate skips.

    The default `UNetConfig()` is the paper's network: 23 convolutional layers,
    31,030,658 parameters, 572x572 input -> 388x388 output, He initialisation and
    drop-out at the end of the contracting path (Sec. 3.1). `forward` returns
    unnormalised class scores (B, n_classes, ...); the pixel-wise softmax of eq. 1 is
    applied by the loss and by prediction. With ndim=3 it is the 3-D U-Net of Cicek et
    al. 2016 (3x3x3 convolutions, 2x2x2 max-pooling and up-convolution); levels with
    `pool_z[level]` False pool and up-convolve (1, 2, 2) instead, for anisotropic stacks.

    Example:
        >>> model = UNet(UNetConfig(depth=2, base_channels=4))
        >>> model(torch.zeros(1, 1, 60, 60)).shape
        torch.Size([1, 2, 20, 20])
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else UNetConfig()
        ndim, padding, norm = config.ndim, config.padding, config.norm
        widths = [config.base_channels * 2**level for level in range(config.depth + 1)]
        self.encoder = nn.ModuleList()
        channels = config.in_channels
        for width in widths:
            self.encoder.append(ConvBlock(channels, width, ndim=ndim, padding=padding, norm=norm))
            channels = width
        kernels = [_kernel(factors) for factors in pooling_per_level(config)]
        self.pools = nn.ModuleList(
            MAX_POOL[ndim](kernel_size=kernel, stride=kernel) for kernel in kernels
        )
        self.dropout = DROPOUT[ndim](p=config.dropout) if config.dropout > 0 else nn.Identity()
        self.decoder = nn.ModuleList(
            Up(
                widths[level + 1],
                widths[level],
                ndim=ndim,
                padding=padding,
                norm=norm,
                upsampling=config.upsampling,
                scale=kernels[level],
            )
            for level in reversed(range(config.depth))
        )
        self.head = CONV[ndim](widths[0], config.n_classes, kernel_size=1)
        he_initialize(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Map a (B, C, *spatial) batch to class scores (B, n_classes, *output_shape)."""
        self._check_input(image)
        skips = []
        features = image
        for level, block in enumerate(self.encoder):
            if level > 0:
                features = self.pools[level - 1](features)
            features = block(features)
            skips.append(features)
        features = self.dropout(skips.pop())
        for up in self.decoder:
            features = up(features, skips.pop())
        return self.head(features)

    def _check_input(self, image: torch.Tensor) -> None:
        config = self.config
        if image.ndim != config.ndim + 2:
            raise ValueError(
                f"image must be a (B, C, {'Z, ' if config.ndim == 3 else ''}Y, X) tensor with "
                f"{config.ndim + 2} axes, got shape {tuple(image.shape)}"
            )
        if image.shape[1] != config.in_channels:
            raise ValueError(
                f"image has {image.shape[1]} channels; the network expects {config.in_channels}"
            )
        config_output_shape(config, tuple(image.shape[2:]))

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)


def _kernel(factors: tuple[int, ...]) -> int | tuple[int, ...]:
    # an int where isotropic, so the paper's network is built exactly as before
    return 2 if all(factor == 2 for factor in factors) else factors
