"""Find annotated images on disk in the common folder layouts and read them lazily as samples.

`open_dataset(path)` reads four layouts (``layout="auto"`` tells them apart by what the
folder holds; zarr arrays are not supported yet, issue #3):

- ``"pairs"``: ``images/<stem>.<png|tif|tiff>`` with ``labels/<stem>.*`` (or ``masks/``),
  matched by file stem; ISBI 2012 ``train/`` is of this kind.
- ``"stack"``: one multi-page image TIFF and one label TIFF, a sample per page; either a
  folder with ``<name>-volume.tif`` + ``<name>-labels.tif`` (ISBI 2012 originals) or
  `path` = the image stack with `labels_path` = the label stack. With ``volume=True``
  the pair is one (Z, Y, X) sample instead, named after the image file's stem, for a
  3-D U-Net (Cicek et al. 2016).
- ``"dsb"``: Data Science Bowl 2018, one binary mask per nucleus; ``images/<id>.png`` +
  ``labels/<id>/*.png`` (or ``masks/<id>/``), or Kaggle's ``<id>/images/<id>.png`` +
  ``<id>/masks/*.png``. Mask k in sorted file-name order gets instance id k (from 1);
  where masks overlap, the later mask in that order wins.
- ``"ctc"``: Cell Tracking Challenge, ``NN/tTTT.tif`` + ``NN_GT/SEG/man_segTTT.tif`` for
  every sequence ``NN`` (01, 02, ...) with a ``NN_GT/SEG`` folder; only annotated frames
  become samples. Per-slice annotations of 3-D data (``man_segTTT_ZZZ.tif``) are skipped
  with a log message. CTC ground truth may leave cells of a frame unannotated.

A sample's image is returned as stored (dtype and colour samples last, (Y, X) or
(Y, X, S); see `biounet.data.normalize.to_float_image`), its labels as (Y, X) int32
(volumes (Z, Y, X) work alike: a (Z, Y, X) TIFF of the pairs layout is one volume).
Labels are converted by `convert_labels`. Files are read when a sample is indexed, not
at opening (except stacks, whose length is their page count), so shape and label
errors surface then; `list(dataset)` checks them all.
Which files form each layout's samples is found by `biounet.data.layout_files`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biounet.data.io import read_image
from biounet.data.layout_files import (
    ctc_sequences,
    find_ctc,
    find_dsb,
    find_file,
    find_label_folder,
    find_pairs,
    image_files,
    kaggle_image,
    stack_prefixes,
    subfolders,
)

LAYOUTS = ("pairs", "stack", "dsb", "ctc")
LABEL_KINDS = ("auto", "binary", "instance", "semantic")
_MAX_SAMPLES = 4  # as normalize.to_float_image: a last axis of 1-4 is colour samples
_LAYOUT_HELP = (
    "pairs (images/ + labels/ or masks/, same file stems), "
    "stack (<name>-volume.tif + <name>-labels.tif, or a TIFF file with labels_path=), "
    "dsb (images/<id>.png + labels/<id>/*.png, or <id>/images/ + <id>/masks/), "
    "ctc (01/tNNN.tif + 01_GT/SEG/man_segNNN.tif)"
)


@dataclass(frozen=True, eq=False)
class Sample:
    """One annotated image: `image` as stored, `labels` (Y, X) or (Z, Y, X) int32 ids (0: none).

    `source` names the image file (and page) it was read from, for error messages.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    source: str = ""


@dataclass(frozen=True)
class _LabelRules:
    kind: str
    allow_empty: bool


class SampleList(Sequence[Sample]):
    """Read-only list of samples whose files are read each time an item is indexed.

    Index by position, by slice (another `SampleList`) or by sample name. Nothing is
    cached. The list pickles cheaply (file paths; a stack also carries its two arrays),
    so it can go to DataLoader workers.
    """

    def __init__(
        self, names: Sequence[str], loaders: Sequence[Callable[[], Sample]], *, layout: str,
        root: Path,
    ) -> None:
        if not len(names) == len(loaders) == len(set(names)):
            raise ValueError(f"names must be unique, one per loader; got {len(names)} names "
                             f"({len(set(names))} distinct) for {len(loaders)} loaders")
        self.names = tuple(names)
        self.layout = layout
        self.root = root
        self._loaders = tuple(loaders)
        self._positions = {name: position for position, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self._loaders)

    def __getitem__(self, key: int | slice | str) -> Sample | SampleList:
        if isinstance(key, slice):
            return SampleList(self.names[key], self._loaders[key], layout=self.layout,
                              root=self.root)
        if isinstance(key, str):
            if key not in self._positions:
                raise KeyError(f"no sample named {key!r} in {self.root}")
            key = self._positions[key]
        return self._loaders[key]()

    def __iter__(self) -> Iterator[Sample]:
        return (load() for load in self._loaders)

    def __repr__(self) -> str:
        return f"SampleList(layout={self.layout!r}, root='{self.root}', n_samples={len(self)})"


def open_dataset(
    path: str | os.PathLike,
    *,
    layout: str = "auto",
    labels_path: str | os.PathLike | None = None,
    label_kind: str = "auto",
    allow_empty: bool = False,
    volume: bool = False,
) -> SampleList:
    """Find the annotated samples under `path` and return them as a lazy `SampleList`.

    Args:
        path: data set folder, or for ``layout="stack"`` also an image stack file.
        layout: one of ``"auto"`` and `LAYOUTS` (see the module docstring).
        labels_path: label stack file when `path` is an image stack file.
        label_kind: how label files are read, see `convert_labels`; DSB masks are
            always instances, so ``"dsb"`` accepts only ``"auto"`` and ``"instance"``.
        allow_empty: keep samples without any foreground pixel instead of raising.
        volume: read a stack pair as one (Z, Y, X) sample rather than one per page
            (for 3-D networks); other layouts read every file as stored anyway.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if no layout matches (the message lists them), a folder holds no
            images, images lack labels (named), or an option is unknown.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data set path {path} does not exist")
    if label_kind not in LABEL_KINDS:
        raise ValueError(f"label_kind must be one of {LABEL_KINDS}, got {label_kind!r}")
    if layout == "auto":
        layout = "stack" if labels_path is not None else detect_layout(path)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    if layout == "dsb" and label_kind not in ("auto", "instance"):
        raise ValueError(f"label_kind {label_kind!r} does not apply to DSB masks, which are "
                         "instances; use 'auto' or 'instance'")
    rules = _LabelRules(label_kind, allow_empty)
    if layout == "stack":
        names, loaders = _stack_samples(path, labels_path, rules, volume=volume)
    else:
        found = {"pairs": find_pairs, "dsb": find_dsb, "ctc": find_ctc}[layout](path)
        load = _load_dsb if layout == "dsb" else _load_pair
        names = list(found)
        loaders = [functools.partial(load, name, *found[name], rules) for name in names]
    return SampleList(names, loaders, layout=layout, root=path)


def detect_layout(path: str | os.PathLike) -> str:
    """Return the layout name of the data set folder (or stack file) at `path`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if no supported layout matches; the message lists them.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data set path {path} does not exist")
    if path.suffix.lower() == ".zarr":
        # TODO(#3): zarr image/label arrays, once io.read_array exists.
        raise ValueError(f"zarr data set {path} is not supported yet (issue #3)")
    if path.is_file():
        return "stack"
    if (path / "images").is_dir():
        label_folder = find_label_folder(path)
        return "pairs" if image_files(label_folder) else "dsb"
    if stack_prefixes(path):
        return "stack"
    if ctc_sequences(path):
        return "ctc"
    if any(kaggle_image(folder) and (folder / "masks").is_dir() for folder in subfolders(path)):
        return "dsb"
    hint = f"; it has a train/ folder, open {path / 'train'}" if (path / "train").is_dir() else ""
    raise ValueError(f"no supported data set layout found in {path}{hint}; supported: "
                     f"{_LAYOUT_HELP}")


def convert_labels(
    labels: np.ndarray, *, kind: str = "auto", allow_empty: bool = False, name: str = "labels"
) -> np.ndarray:
    """Check a label image and return it as int32 ids, 0 = background.

    Kinds: ``"binary"``: every non-zero pixel is foreground, split into instances by
    face-connected components (4-connected in 2-D, 6 in 3-D), numbered in raster
    order; this turns ISBI 2012 labels (255 = cell interior, 0 = membrane) into one
    id per cell. ``"instance"`` and ``"semantic"`` keep the values as they are
    (instance ids, or class ids). ``"auto"`` picks binary for bool labels and for
    labels with exactly two values {0, v}, otherwise instance; semantic is never
    guessed. A single instance of an instance map looks binary, so it is relabelled 1
    (and split, if its pixels are not face-connected).

    Raises:
        ValueError: naming `name`, if `labels` are not integer or bool, negative,
            above the int32 range, or (unless `allow_empty`) all background.

    Example:
        >>> convert_labels(np.array([[255, 0, 255], [255, 0, 0]], dtype=np.uint8))
        array([[1, 0, 2],
               [1, 0, 0]], dtype=int32)
    """
    if kind not in LABEL_KINDS:
        raise ValueError(f"kind must be one of {LABEL_KINDS}, got {kind!r}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"{name} have dtype {labels.dtype}; expected integer or bool label ids")
    is_bool = labels.dtype == bool
    if is_bool:
        labels = labels.view(np.uint8)
    smallest, largest = (labels.min().item(), labels.max().item()) if labels.size else (0, 0)
    if smallest < 0:
        raise ValueError(f"{name} contain negative value {smallest}; label ids must be >= 0")
    if largest > np.iinfo(np.int32).max:
        raise ValueError(f"{name} contain id {largest}, beyond the int32 range")
    if largest == 0 and not allow_empty:
        raise ValueError(f"{name} have no foreground pixel; pass allow_empty=True to keep it")
    if kind == "auto":
        is_two_valued = smallest == 0 and largest > 0 and _has_two_values(labels, largest)
        kind = "binary" if is_bool or is_two_valued else "instance"
    if kind != "binary":
        return labels.astype(np.int32)
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(labels.ndim, 1)
    components = np.zeros(labels.shape, dtype=np.int32)
    ndimage.label(labels > 0, structure=structure, output=components)
    return components


def _has_two_values(labels: np.ndarray, largest: int) -> bool:
    return bool(np.all((labels == 0) | (labels == largest)))


def _spatial_shape(image: np.ndarray) -> tuple[int, ...]:
    has_samples = image.ndim >= 3 and image.shape[-1] <= _MAX_SAMPLES
    return image.shape[:-1] if has_samples else image.shape


def _finish(name: str, image: np.ndarray, labels: np.ndarray, sources: tuple[str, str],
            rules: _LabelRules) -> Sample:
    image_source, label_source = sources
    if labels.shape != _spatial_shape(image):
        raise ValueError(f"labels {label_source} have shape {labels.shape} but image "
                         f"{image_source} has shape {image.shape}")
    labels = convert_labels(labels, kind=rules.kind, allow_empty=rules.allow_empty,
                            name=f"labels {label_source}")
    return Sample(name, image, labels, source=image_source)


def _load_pair(name: str, image_path: Path, label_path: Path, rules: _LabelRules) -> Sample:
    image = read_image(image_path)
    labels = read_image(label_path, name="labels")
    return _finish(name, image, labels, (str(image_path), str(label_path)), rules)


def _load_page(name: str, images: np.ndarray, labels: np.ndarray, page: int,
               sources: tuple[str, str], rules: _LabelRules) -> Sample:
    where = (f"{sources[0]} page {page}", f"{sources[1]} page {page}")
    return _finish(name, images[page], labels[page], where, rules)


def _load_dsb(name: str, image_path: Path, mask_folder: Path, rules: _LabelRules) -> Sample:
    image = read_image(image_path)
    shape = _spatial_shape(image)
    labels = np.zeros(shape, dtype=np.int32)
    # Sorted order fixes the ids; the later mask wins the few overlapping pixels.
    for instance_id, mask_path in enumerate(image_files(mask_folder), start=1):
        mask = read_image(mask_path, name="mask")
        if mask.shape != shape:
            raise ValueError(f"mask {mask_path} has shape {mask.shape} but image {image_path} "
                             f"has shape {image.shape}")
        if mask.dtype.kind not in "biu":
            raise ValueError(f"mask {mask_path} has dtype {mask.dtype}; expected integer or bool")
        labels[mask > 0] = instance_id
    return _finish(name, image, labels, (str(image_path), f"from masks in {mask_folder}"),
                   _LabelRules("instance", rules.allow_empty))


def _stack_samples(path: Path, labels_path: str | os.PathLike | None, rules: _LabelRules, *,
                   volume: bool = False) -> tuple[list[str], list[Callable[[], Sample]]]:
    if path.is_dir():
        prefixes = stack_prefixes(path)
        if len(prefixes) != 1:
            found = ", ".join(prefixes) or "none"
            raise ValueError(f"folder {path} needs exactly one <name>-volume.tif with a "
                             f"<name>-labels.tif; found prefixes: {found}")
        path, labels_path = (find_file(path, f"{prefixes[0]}-{kind}") for kind in
                             ("volume", "labels"))
    elif labels_path is None:
        raise ValueError(f"labels_path must name the label stack for image stack {path}")
    images, labels = read_image(path), read_image(labels_path, name="labels")
    images = images[np.newaxis] if images.ndim == 2 else images
    labels = labels[np.newaxis] if labels.ndim == 2 else labels
    if len(images) != len(labels):
        raise ValueError(f"label stack {labels_path} has shape {labels.shape} but image stack "
                         f"{path} has shape {images.shape}; page counts differ")
    if volume:  # one (Z, Y, X) sample; _finish checks the shapes when it is read
        sources = (str(path), str(labels_path))
        name = Path(path).stem
        return [name], [functools.partial(_finish, name, images, labels, sources, rules)]
    width = max(2, len(str(len(images) - 1)))
    names = [f"{page:0{width}d}" for page in range(len(images))]
    sources = (str(path), str(labels_path))
    loaders = [functools.partial(_load_page, name, images, labels, page, sources, rules)
               for page, name in enumerate(names)]
    return names, loaders
