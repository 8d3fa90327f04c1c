"""biounet: U-Net for biomedical image segmentation (Ronneberger, Fischer, Brox, MICCAI 2015).

The public API on arrays; heavy optional libraries are imported only where used.
"""

from biounet.config import UNetConfig
from biounet.geometry import halo, min_input_size, nearest_valid_sizes, output_shape
from biounet.inference.blockwise import predict_blockwise  # imports dask/zarr only when run
from biounet.inference.ensemble import predict_ensemble
from biounet.inference.predict import predict_tiled
from biounet.model.unet import UNet
from biounet.weightfile import load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "UNet",
    "UNetConfig",
    "halo",
    "load_model",
    "min_input_size",
    "nearest_valid_sizes",
    "output_shape",
    "predict_blockwise",
    "predict_ensemble",
    "predict_tiled",
    "save_model",
]
