"""Install public data sets in a local cache: download, verify, extract, convert, rename.

`fetch(name)` downloads the archive of a `biounet.datasets.registry` entry to
``<root>/downloads/<filename>`` (resumable, `biounet.datasets.download`), checks its
sha256 when the registry knows it, extracts it (`biounet.datasets.archives`: every
member checked first) and installs the data set as ``<root>/<name>/`` with a
``SOURCE.txt`` (address, checksum, licence, citation). The folder appears under its
name only when complete; a reinstall (`force`) swaps the old one out at the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from biounet.data.outputs import make_folder
from biounet.datasets.archives import safe_extract
from biounet.datasets.download import download_digest
from biounet.datasets.registry import PREPARE, DataSet, get_dataset

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Return the data root: ``$BIOUNET_DATA``, else the per-user cache folder.

    The cache is ``$XDG_CACHE_HOME/biounet`` (``~/.cache/biounet`` when unset) and
    ``%LOCALAPPDATA%/biounet`` on Windows. Nothing is created.
    """
    configured = os.environ.get("BIOUNET_DATA")
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    else:
        base = os.environ.get("XDG_CACHE_HOME", "")
        if not os.path.isabs(base):  # the XDG spec says to ignore relative values
            base = str(Path.home() / ".cache")
    return Path(base) / "biounet"


def fetch(
    dataset: str | DataSet,
    *,
    directory: str | os.PathLike | None = None,
    progress: bool = False,
    base_url: str | None = None,
    force: bool = False,
    keep_archive: bool = False,
    timeout: float = 30.0,
) -> Path:
    """Download, verify and install a data set; return its folder ``<root>/<name>``.

    Args:
        dataset: a name of `biounet.datasets.registry.DATASETS` or a `DataSet`.
        directory: data root; default `cache_dir()`.
        progress: show a tqdm progress bar on stderr.
        base_url: mirror to download ``<base_url>/<filename>`` from instead of the
            official address.
        force: download and install again even if the folder exists (replaced at the end).
        keep_archive: keep ``<root>/downloads/<filename>`` after installing.
        timeout: seconds to wait for the connection and for each read.

    Raises:
        ValueError: for an unknown name, or an archive that is not of the registry's kind
            or lacks its folder (such an archive is deleted, as is an `UnsafeArchiveError` one).
        DownloadError, ChecksumError: see `biounet.datasets.download`.
        UnsafeArchiveError: see `biounet.datasets.archives`.
    """
    entry = get_dataset(dataset) if isinstance(dataset, str) else dataset
    root = Path(directory) if directory is not None else cache_dir()
    destination = root / entry.name
    if destination.exists() and not force:
        logger.info("%s is already installed in %s", entry.name, destination)
        return destination
    make_folder(root, name="directory")
    url = entry.url if base_url is None else f"{base_url.rstrip('/')}/{entry.filename}"
    archive = root / "downloads" / entry.filename
    digest = download_digest(url, archive, sha256=entry.sha256, progress=progress,
                             timeout=timeout, name=entry.name)
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".partial", dir=root))
    try:
        try:
            prepared = _unpack(archive, work, entry)
        except ValueError:  # unsafe, not an archive, or another layout: a rerun cannot help
            archive.unlink(missing_ok=True)
            logger.warning("deleted %s: it cannot be installed as %s", archive, entry.name)
            raise
        _write_source_note(prepared / "SOURCE.txt", entry, url, digest)
        _install(prepared, destination, work / "previous")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not keep_archive:
        archive.unlink()
    logger.info("installed %s in %s", entry.name, destination)
    return destination


def _unpack(archive: Path, work: Path, entry: DataSet) -> Path:
    """Extract `archive` in `work` and convert it; return the folder to install."""
    extracted = safe_extract(archive, work / "archive", kind=entry.archive)
    source = extracted.joinpath(*entry.subfolder.split("/"))
    if not source.is_dir():
        found = ", ".join(sorted(path.name for path in extracted.iterdir())) or "nothing"
        raise ValueError(f"archive {archive} has no folder {entry.subfolder}/ (its top level "
                         f"holds: {found}); it is not the {entry.name} archive")
    prepared = work / entry.name
    PREPARE[entry.prepare](source, prepared)
    return prepared


def _install(prepared: Path, destination: Path, previous: Path) -> None:
    """Rename `prepared` to `destination`, swapping out an existing folder safely."""
    had_previous = destination.exists()
    if had_previous:
        os.replace(destination, previous)
    try:
        os.replace(prepared, destination)
    except BaseException:
        if had_previous:
            os.replace(previous, destination)
        raise


def _write_source_note(path: Path, entry: DataSet, url: str, digest: str) -> None:
    status = ("verified against the registry" if entry.sha256 is not None
              else "not verified: the registry has no checksum for it")
    path.write_text(f"data set: {entry.name}\nsource: {url}\n"
                    f"archive sha256: {digest} ({status})\nlicence: {entry.licence}\n"
                    f"cite: {entry.citation}\n")


