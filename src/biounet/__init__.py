"""biounet: U-Net for biomedical image segmentation (Ronneberger, Fischer, Brox, MICCAI 2015)."""

__version__ = "0.1.0"
