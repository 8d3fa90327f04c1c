"""Download public data sets into a local cache: resumable, checksummed, safely extracted.

`fetch(name)` downloads the archive of a `biounet.datasets.registry` entry to
``<root>/downloads/<filename>``, checks its sha256 when the registry knows it, extracts
it and installs the data set as ``<root>/<name>/`` with a ``SOURCE.txt`` (address,
checksum, licence, citation). Rules:

- A download is written to ``<file>.part`` and renamed when complete. An interrupted
  download keeps its ``.part``; the next call asks for the rest with an HTTP Range
  request (``If-Range`` with the ETag or Last-Modified seen first, so a file changed on
  the server restarts the download) and starts again from zero if the server ignores it.
- A complete download whose sha256 differs from the registry's is deleted (a resume
  could not repair it) and `ChecksumError` is raised. Without a registry value the
  computed sha256 is logged with the words "not verified".
- Archives are checked member by member before anything is written: absolute paths,
  ``..`` components, links leaving the target, members below a link and special files
  raise `UnsafeArchiveError` naming the member. Extraction goes to a hidden folder beside
  the target that is renamed into place at the end, so a folder with the target's name
  is always complete.
- Network failures raise `DownloadError`, a `ConnectionError` with a one-line message
  saying what could not be reached and where to put a file downloaded by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from biounet.data.outputs import make_folder
from biounet.datasets.registry import PREPARE, DataSet, get_dataset

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "biounet-data-fetch (Python urllib)"


class DownloadError(ConnectionError):
    """A server could not be reached, refused the request or stopped sending."""


class ChecksumError(ValueError):
    """A downloaded file's sha256 differs from the expected one."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder or is not a plain file."""


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
        DownloadError, ChecksumError, UnsafeArchiveError: see the module docstring.
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
    digest = _download(url, archive, sha256=entry.sha256, progress=progress,
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


def download(
    url: str,
    target: str | os.PathLike,
    *,
    sha256: str | None = None,
    progress: bool = False,
    timeout: float = 30.0,
) -> Path:
    """Download `url` to the file `target`, resuming a ``.part`` left by an earlier call.

    An existing `target` is not downloaded again (only checked against `sha256`).

    Raises:
        ValueError: if `sha256` is not 64 hex digits.
        DownloadError: if the server cannot be reached or stops sending (then run again
            to resume).
        ChecksumError: if the complete file's sha256 differs from `sha256`.
    """
    _download(url, Path(target), sha256=sha256, progress=progress, timeout=timeout, name=None)
    return Path(target)


def safe_extract(
    archive: str | os.PathLike, target: str | os.PathLike, *, kind: str | None = None
) -> Path:
    """Extract a zip or tar(.gz/.bz2/.xz) archive into the new folder `target`.

    All members are checked before anything is written; extraction happens in a hidden
    folder beside `target` that is renamed to `target` once complete.

    Args:
        archive: the archive file; its format is read from its content.
        target: folder to create; must not exist.
        kind: "zip" or "tar" to insist on a format, None to accept either.

    Raises:
        FileNotFoundError: if `archive` does not exist.
        FileExistsError: if `target` exists.
        ValueError: if the archive is not of `kind` (or of neither kind).
        UnsafeArchiveError: naming the first member that is not safe to extract.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    if target.exists():
        raise FileExistsError(f"extraction target {target} exists; remove it or choose another")
    found = "zip" if zipfile.is_zipfile(archive) else "tar" if tarfile.is_tarfile(archive) else None
    if found is None or (kind is not None and found != kind):
        expected = kind or "zip or tar"
        raise ValueError(f"archive {archive} is not a {expected} file (found: {found or 'neither'}"
                         "); the server may have sent an error page instead")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial",
                                    dir=target.parent))
    try:
        (_extract_zip if found == "zip" else _extract_tar)(archive, staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _download(url: str, target: Path, *, sha256: str | None, progress: bool, timeout: float,
              name: str | None) -> str:
    """Make `target` a complete copy of `url`; return its sha256 hex digest."""
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if target.is_file():
        digest = _file_sha256(target)
        _check_digest(digest, sha256, target, url, is_download=False)
        return digest
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    digest = _transfer(url, part, target, progress=progress, timeout=timeout,
                       name=name or target.name)
    try:
        _check_digest(digest, sha256, part, url, is_download=True)
    except ChecksumError:
        _remove_part(part)
        raise
    os.replace(part, target)
    _validator_file(part).unlink(missing_ok=True)
    return digest


def _transfer(url: str, part: Path, target: Path, *, progress: bool, timeout: float,
              name: str, may_restart: bool = True) -> str:
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    validator_file = _validator_file(part)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        if validator_file.is_file():
            request.add_header("If-Range", validator_file.read_text().strip())
    host = urllib.parse.urlsplit(url).netloc or url
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # Range beyond the end: the part may be whole
            total = _range_total(error.headers.get("Content-Range"))
            if total == offset:
                return _file_sha256(part)
            if may_restart:
                _remove_part(part)
                return _transfer(url, part, target, progress=progress, timeout=timeout,
                                 name=name, may_restart=False)
        raise DownloadError(f"{host} answered HTTP {error.code} {error.reason} for {url} "
                            f"({name})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"cannot reach {host} to download {name}: {reason}; check the "
                            f"network, or download {url} by hand and save it as {target}"
                            ) from None
    with response:
        is_resumed = bool(offset) and response.status == 206
        if is_resumed and _range_start(response.headers.get("Content-Range")) != offset:
            is_resumed = False  # a range we did not ask for: the bytes cannot be appended
            if may_restart:
                _remove_part(part)
                response.close()
                return _transfer(url, part, target, progress=progress, timeout=timeout,
                                 name=name, may_restart=False)
        if offset and not is_resumed:
            logger.info("%s sent the whole file instead of the rest; restarting from zero", host)
            offset = 0
        hasher = hashlib.sha256()
        if is_resumed:
            _update_from_file(hasher, part)
        else:
            _save_validator(validator_file, response.headers)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        received = _stream(response, part, hasher, offset=offset, total=total,
                           progress=progress, label=name, url=url)
    if total is not None and received < total:
        raise DownloadError(f"download of {url} ({name}) stopped after {received} of {total} "
                            f"bytes; run again to resume from {part}")
    return hasher.hexdigest()


def _stream(response, part: Path, hasher, *, offset: int, total: int | None, progress: bool,
            label: str, url: str) -> int:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                   unit_divisor=1024, desc=label)
    received = offset
    try:
        with open(part, "ab" if offset else "wb") as stream:
            while True:
                try:
                    chunk = response.read(_CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as error:
                    raise DownloadError(
                        f"download of {url} ({label}) stopped after {received} bytes: "
                        f"{error or type(error).__name__}; run again to resume from {part}"
                    ) from None
                if not chunk:
                    return received
                stream.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


def _check_digest(digest: str, expected: str | None, path: Path, url: str, *,
                  is_download: bool) -> None:
    if expected is None:
        logger.warning("sha256 of %s is %s; not verified: no reference checksum is known for "
                       "%s", path.name, digest, url)
        return
    if digest != expected.lower():
        action = "deleted it" if is_download else "delete it to download again"
        raise ChecksumError(f"sha256 of {path} from {url} is {digest}, expected {expected}; "
                            f"{action}")
    logger.info("sha256 of %s verified (%s)", path.name, digest)


def _member_parts(name: str, archive: Path) -> tuple[str, ...]:
    """Split a member name into path parts, refusing absolute paths and ``..``."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"[A-Za-z]:", normalized):
        raise UnsafeArchiveError(f"archive {archive} member {name!r} has an absolute path; "
                                 "nothing was extracted")
    parts = tuple(part for part in normalized.split("/") if part not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(f"archive {archive} member {name!r} has a '..' component; "
                                 "nothing was extracted")
    return parts


def _extract_zip(archive: Path, staging: Path) -> None:
    with zipfile.ZipFile(archive) as bundle:
        members = []
        for info in bundle.infolist():
            parts = _member_parts(info.filename, archive)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeArchiveError(f"archive {archive} member {info.filename!r} is a "
                                         "symbolic link; nothing was extracted")
            if parts:
                members.append((info, parts))
        for info, parts in members:
            path = staging.joinpath(*parts)
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(info) as source, open(path, "wb") as stream:
                shutil.copyfileobj(source, stream, _CHUNK_BYTES)


def _extract_tar(archive: Path, staging: Path) -> None:
    with tarfile.open(archive) as bundle:
        members, links = [], set()
        for member in bundle.getmembers():
            parts = _member_parts(member.name, archive)
            if any(parts[:depth] in links for depth in range(1, len(parts))):
                raise UnsafeArchiveError(f"archive {archive} member {member.name!r} lies below "
                                         "a symbolic link; nothing was extracted")
            if member.issym() or member.islnk():
                _check_tar_link(member, parts, archive, links)
                links.add(parts)
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"archive {archive} member {member.name!r} is not a "
                                         "file, folder or link; nothing was extracted")
            if parts:
                members.append(member)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and recent 3.10/3.11 patches
            bundle.extractall(staging, members=members, filter="data")
        else:
            bundle.extractall(staging, members=members)


def _check_tar_link(member: tarfile.TarInfo, parts: tuple[str, ...], archive: Path,
                    links: set[tuple[str, ...]]) -> None:
    kind = "symbolic" if member.issym() else "hard"
    where = f"archive {archive} member {member.name!r} is a {kind} link to {member.linkname!r}"
    if not parts or member.linkname.startswith(("/", "\\")) or re.match(r"[A-Za-z]:",
                                                                          member.linkname):
        raise UnsafeArchiveError(f"{where}, an absolute path; nothing was extracted")
    # symbolic links resolve from the link's folder, hard links from the archive root
    start = posixpath.join(*parts[:-1]) if member.issym() and len(parts) > 1 else ""
    resolved = posixpath.normpath(posixpath.join(start, member.linkname.replace("\\", "/")))
    resolved_parts = tuple(resolved.split("/"))
    if resolved == ".." or resolved.startswith("../") or (member.islnk() and resolved == "."):
        raise UnsafeArchiveError(f"{where}, outside the target; nothing was extracted")
    if any(resolved_parts[:depth] in links for depth in range(1, len(resolved_parts) + 1)):
        raise UnsafeArchiveError(f"{where}, through another link; nothing was extracted")


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


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    _update_from_file(hasher, path)
    return hasher.hexdigest()


def _update_from_file(hasher, path: Path) -> None:
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            hasher.update(chunk)


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def _save_validator(path: Path, headers) -> None:
    """Remember what identifies this version of the file, for If-Range when resuming."""
    etag = headers.get("ETag")
    validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
    if validator:
        path.write_text(validator + "\n")
    else:
        path.unlink(missing_ok=True)


def _remove_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validator_file(part).unlink(missing_ok=True)


def _range_start(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return int(match.group(1)) if match else None


def _range_total(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes (?:\*|\d+-\d+)/(\d+)", (content_range or "").strip())
    return int(match.group(1)) if match else None
