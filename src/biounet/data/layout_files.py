"""Find the image and label files of each folder layout that `biounet.data.layouts` reads.

Discovery only: which files pair with which, named by sample; nothing is read here. Each
`find_*` returns ``{sample name: (image path, label path or mask folder)}`` and raises a
ValueError naming what is missing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from biounet.data.io import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

LABEL_FOLDERS = ("labels", "masks")


def image_files(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file()
                  and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES)


def subfolders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir()
                  if path.is_dir() and not path.name.startswith("."))


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise ValueError(f"folder {folder} holds both {stems[path.stem].name} and "
                             f"{path.name}; keep one file per name")
        stems[path.stem] = path
    return stems


def find_label_folder(root: Path) -> Path:
    present = [root / name for name in LABEL_FOLDERS if (root / name).is_dir()]
    if not present:
        raise ValueError(f"data set {root} has images/ but no labels/ or masks/ folder")
    if len(present) > 1:
        raise ValueError(f"data set {root} has both labels/ and masks/ folders; keep one")
    return present[0]


def _preview(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _match(images: dict[str, Path], labels: dict[str, Path], image_where: Path,
           label_where: Path) -> dict[str, tuple[Path, Path]]:
    if not images:
        raise ValueError(f"{image_where} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    missing = [name for name in images if name not in labels]
    if missing:
        raise ValueError(f"{len(missing)} of {len(images)} images in {image_where} have no "
                         f"labels in {label_where}: {_preview(missing)}")
    unused = [name for name in labels if name not in images]
    if unused:
        logger.warning("%d labels in %s have no image: %s", len(unused), label_where,
                       _preview(unused))
    return {name: (images[name], labels[name]) for name in images}


def find_pairs(root: Path) -> dict[str, tuple[Path, Path]]:
    if not (root / "images").is_dir():
        raise ValueError(f"data set {root} has no images/ folder; the pairs layout needs one")
    image_folder, label_folder = root / "images", find_label_folder(root)
    images = _by_stem(image_files(image_folder), image_folder)
    labels = _by_stem(image_files(label_folder), label_folder)
    return _match(images, labels, image_folder, label_folder)


def find_dsb(root: Path) -> dict[str, tuple[Path, Path]]:
    if (root / "images").is_dir():  # this project's copy: images/<id>.png, labels/<id>/
        image_folder, label_folder = root / "images", find_label_folder(root)
        images = _by_stem(image_files(image_folder), image_folder)
        masks = {folder.name: folder for folder in subfolders(label_folder)}
        return _match(images, masks, image_folder, label_folder)
    images, masks = {}, {}  # Kaggle: <id>/images/<id>.png, <id>/masks/*.png
    for folder in subfolders(root):
        image_path = kaggle_image(folder)
        if image_path:
            images[folder.name] = image_path
        if (folder / "masks").is_dir():
            masks[folder.name] = folder / "masks"
    return _match(images, masks, root, root)


def kaggle_image(folder: Path) -> Path | None:
    """Return `folder`/images/`folder.name`.<suffix>, Kaggle's DSB image, if it exists."""
    files = _by_stem(image_files(folder / "images"), folder / "images")
    return files.get(folder.name)


def stack_prefixes(folder: Path) -> list[str]:
    names = {path.name.lower(): path for path in folder.iterdir() if path.is_file()}
    return sorted({match.group(1) for name in names
                   if (match := re.fullmatch(r"(.*)-volume\.tiff?", name))
                   and any(f"{match.group(1)}-labels{ext}" in names for ext in (".tif", ".tiff"))})


def find_file(folder: Path, stem: str) -> Path:
    return next(path for path in sorted(folder.iterdir())
                if path.name.lower() in (f"{stem}.tif", f"{stem}.tiff"))


def ctc_sequences(root: Path) -> list[str]:
    return [folder.name for folder in subfolders(root)
            if folder.name.isdigit() and (root / f"{folder.name}_GT" / "SEG").is_dir()]


def find_ctc(root: Path) -> dict[str, tuple[Path, Path]]:
    sequences = ctc_sequences(root)
    if not sequences:
        raise ValueError(f"{root} has no sequence folder NN with NN_GT/SEG beside it")
    found: dict[str, tuple[Path, Path]] = {}
    for sequence in sequences:
        segmentation = root / f"{sequence}_GT" / "SEG"
        frames = _frames(image_files(root / sequence), r"t(\d+)")
        truths = _frames(image_files(segmentation), r"man_seg(\d+)")
        n_slices = sum(bool(re.fullmatch(r"man_seg\d+_\d+", path.stem))
                       for path in image_files(segmentation))
        if n_slices:
            logger.info("skipping %d per-slice 3-D annotations man_segTTT_ZZZ in %s",
                        n_slices, segmentation)
        missing = [f"man_seg{frame}" for frame in truths if frame not in frames]
        if missing:
            raise ValueError(f"annotations in {segmentation} have no frame t<same number> in "
                             f"{root / sequence}: {_preview(missing)}")
        for frame, label_path in sorted(truths.items(), key=lambda item: int(item[0])):
            image_path = frames[frame]
            found[f"{sequence}_{image_path.stem}"] = (image_path, label_path)
    if not found:
        raise ValueError(f"no annotated 2-D frame man_segTTT.tif found under {root}")
    return found


def _frames(files: list[Path], pattern: str) -> dict[str, Path]:
    """Map each frame number (without leading zeros) to its file."""
    frames = {}
    for path in files:
        match = re.fullmatch(pattern, path.stem)
        if match:
            frames[str(int(match.group(1)))] = path
    return frames
