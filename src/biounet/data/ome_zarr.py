"""OME-Zarr image groups: multiscales metadata for a prediction, and its label image.

A prediction group holds one full-resolution level, ``0``: (C, *spatial) float32
class probabilities. Its ``labels/mask`` image holds the class map (argmax over C) as
(1, *spatial) integers, the channel axis kept at size 1 as the OME-Zarr labels
specification asks. Zarr v3 groups get the v0.5 layout (metadata under ``"ome"``),
zarr v2 groups the v0.4 one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

IMAGE_PATH = "0"  # the full-resolution level of an image group
LABELS_GROUP = "labels"
_SPATIAL_AXIS_NAMES = "zyx"


def image_axes(array) -> tuple[list[dict], list[float]]:
    """Return OME-Zarr axes and level-0 scale of a (C, *spatial) array.

    Taken from the array's ``axes`` and ``coordinateTransformations`` attributes (which
    `predict_blockwise` copies from an OME-Zarr source), else a channel axis, spatial
    axes ``z``/``y``/``x`` and unit scale.

    Example:
        >>> import zarr
        >>> axes, scale = image_axes(zarr.zeros((2, 8, 9)))
        >>> [axis["name"] for axis in axes], scale
        (['c', 'y', 'x'], [1.0, 1.0, 1.0])
    """
    attributes = dict(array.attrs)
    n_spatial = array.ndim - 1
    axes = attributes.get("axes") or [
        {"name": "c", "type": "channel"},
        *({"name": name, "type": "space"} for name in _SPATIAL_AXIS_NAMES[-n_spatial:]),
    ]
    scale = [1.0] * array.ndim
    for transform in attributes.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = [float(value) for value in transform["scale"]]
    return list(axes), scale


def write_image_metadata(group, *, axes: Sequence[dict], scale: Sequence[float], name: str) -> None:
    """Describe level `IMAGE_PATH` of `group` as a one-level OME-Zarr multiscale image."""
    multiscale = {
        "name": name,
        "axes": list(axes),
        "datasets": [
            {
                "path": IMAGE_PATH,
                "coordinateTransformations": [{"type": "scale", "scale": list(scale)}],
            }
        ],
    }
    _write_ome(group, {"multiscales": [multiscale]})


def write_label_image(group, probabilities, *, name: str = "mask"):
    """Write the class map of `probabilities` as the OME-Zarr label image ``labels/<name>``.

    Computed one chunk of `probabilities` at a time, so memory holds one chunk.

    Args:
        group: the image group that holds `probabilities` at `IMAGE_PATH`.
        probabilities: (C, *spatial) zarr array of class probabilities.
        name: name of the label image.

    Returns:
        The (1, *spatial) uint8 (uint16 for more than 255 classes) zarr array.
    """
    n_classes, spatial_shape = probabilities.shape[0], tuple(probabilities.shape[1:])
    chunks = tuple(probabilities.chunks[1:])
    dtype = np.uint8 if n_classes <= 255 else np.uint16
    labels = group.require_group(LABELS_GROUP)
    _write_ome(labels, {"labels": [name]})
    image = labels.create_group(name, overwrite=True)
    mask = image.create_array(
        IMAGE_PATH, shape=(1, *spatial_shape), chunks=(1, *chunks), dtype=dtype, fill_value=0
    )
    axes, scale = image_axes(probabilities)
    axes = [{"name": "c", "type": "channel"}, *axes[1:]]
    write_image_metadata(image, axes=axes, scale=[1.0, *scale[1:]], name=name)
    _write_ome(image, {"image-label": {"source": {"image": "../../"}}})
    for start in itertools.product(*(range(0, n, c) for n, c in zip(spatial_shape, chunks))):
        region = tuple(slice(s, s + c) for s, c in zip(start, chunks))
        block = probabilities[(slice(None), *region)]
        mask[(slice(None), *region)] = np.argmax(block, axis=0).astype(dtype)[None]
    return mask


def is_zarr_path(path: str | os.PathLike) -> bool:
    """Say whether `path` names a zarr store or a node inside one (``image.zarr/0``).

    Example:
        >>> is_zarr_path("scans/image.zarr/0"), is_zarr_path("image.tif")
        (True, False)
    """
    path = os.fspath(path)
    parts = [part for part in path.replace("\\", "/").split("/") if part]
    if any(part.lower().endswith(".zarr") for part in parts):
        return True
    markers = ("zarr.json", ".zarray", ".zgroup")
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in markers)


def _write_ome(group, metadata: dict[str, Any]) -> None:
    """Merge `metadata` into the group's OME attributes in its format's layout."""
    attributes = dict(group.attrs)
    if group.metadata.zarr_format >= 3:  # v0.5: one "ome" key with the version
        ome = {**attributes.get("ome", {}), "version": "0.5", **metadata}
        group.attrs.update({"ome": ome})
        return
    for key, value in metadata.items():  # v0.4: top-level keys, the version inside
        if key == "multiscales":
            value = [{"version": "0.4", **entry} for entry in value]
        elif key == "image-label":
            value = {"version": "0.4", **value}
        group.attrs[key] = value
