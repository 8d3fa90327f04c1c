"""Open the source of `predict_blockwise`: an array, a zarr path, an OME-Zarr group or a TIFF.

A source given as a path keeps that path beside the opened array, so that tasks in
other processes reopen it instead of receiving an open file handle. An OME-Zarr
multiscale group is read at level 0, and its scale and axes are kept for the
output's metadata.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from biounet.config import UNetConfig
from biounet.data.io import TIFF_SUFFIXES


@dataclasses.dataclass
class _OpenedSource:
    """The source array, the path it can be reopened from, and its OME-Zarr metadata."""

    array: Any
    path: str | None = None
    scale: list[float] | None = None  # OME-Zarr level-0 scale per source axis
    axes: list | None = None
    store: Any = None  # a tifffile store opened here, closed at the end

    def reference(self) -> _SourceReference:
        return _SourceReference(path=self.path, array=self.array)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@dataclasses.dataclass
class _SourceReference:
    """What a task needs to read the source: the array, or a path workers reopen once."""

    path: str | None
    array: Any

    def __getstate__(self) -> dict:
        # an opened TIFF store holds a file handle; a worker reopens the path instead
        return {"path": self.path, "array": None if self.path is not None else self.array}

    def open(self):
        if self.array is None:
            self.array = _open_source(self.path).array
        return self.array


def _open_source(source) -> _OpenedSource:
    import zarr

    if not isinstance(source, (str, os.PathLike)):
        if isinstance(source, zarr.Group):
            return _multiscale_level_zero(source, _OpenedSource(array=None), name="source")
        if not all(hasattr(source, name) for name in ("shape", "dtype", "__getitem__")):
            raise TypeError(
                f"source must be an array-like, a zarr group or a path, got {type(source).__name__}"
            )
        return _OpenedSource(array=source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source {path} does not exist")
    opened = _OpenedSource(array=None, path=str(path))
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            opened.store = tifffile.imread(path, aszarr=True)
            node = zarr.open(opened.store, mode="r")
        else:
            node = zarr.open(str(path), mode="r")
    except Exception as error:  # zarr and tifffile raise many types for unreadable input
        opened.close()
        raise ValueError(
            f"source {path} cannot be opened as zarr or TIFF: {_first_line(error)}"
        ) from None
    if isinstance(node, zarr.Group):
        return _multiscale_level_zero(node, opened, name=f"source {path}")
    opened.array = node
    return opened


def _multiscale_level_zero(group, opened: _OpenedSource, *, name: str) -> _OpenedSource:
    """Fill `opened` with level 0 of an OME-Zarr multiscale group (v0.4 or v0.5 layout)."""
    attributes = dict(group.attrs)
    multiscales = attributes.get("ome", {}).get("multiscales") or attributes.get("multiscales")
    if not multiscales:
        opened.close()
        raise ValueError(
            f"{name} is a zarr group without OME-Zarr 'multiscales' metadata; pass one of "
            f"its arrays {sorted(group.array_keys())} instead"
        )
    level = multiscales[0]["datasets"][0]
    opened.array = group[level["path"]]
    transforms = level.get("coordinateTransformations", []) + multiscales[0].get(
        "coordinateTransformations", []
    )
    scale = np.ones(opened.array.ndim)
    for transform in transforms:
        if transform.get("type") == "scale" and "scale" in transform:
            scale = scale * np.asarray(transform["scale"], dtype=float)
    opened.scale = scale.tolist()
    opened.axes = multiscales[0].get("axes")
    return opened


def _output_scale_metadata(opened: _OpenedSource, ndim: int) -> dict:
    """OME-Zarr axes and level-0 scale for the output: a class axis, then the spatial ones."""
    if opened.scale is None:
        return {}
    spatial_axes = (
        opened.axes[-ndim:]
        if opened.axes
        else [{"name": name, "type": "space"} for name in "zyx"[-ndim:]]
    )
    return {
        "axes": [{"name": "c", "type": "channel"}, *spatial_axes],
        "coordinateTransformations": [{"type": "scale", "scale": [1.0, *opened.scale[-ndim:]]}],
    }


def _check_source(array, config: UNetConfig) -> None:
    shape, ndim = tuple(array.shape), config.ndim
    axes = "Z, Y, X" if ndim == 3 else "Y, X"
    if np.dtype(array.dtype).kind not in "biuf":
        raise TypeError(f"source must be real-valued, got dtype {array.dtype}")
    if len(shape) not in (ndim, ndim + 1):
        raise ValueError(
            f"source must be ({axes}) or (C, {axes}) for a {ndim}-D network, got shape {shape}"
        )
    channels = shape[0] if len(shape) == ndim + 1 else 1
    if channels != config.in_channels:
        raise ValueError(
            f"source has {channels} channel(s) (shape {shape}); the model expects "
            f"{config.in_channels}"
        )
    if 0 in shape:
        raise ValueError(f"source is empty (shape {shape})")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
