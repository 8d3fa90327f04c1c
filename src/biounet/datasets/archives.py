"""Extract zip and tar archives safely: every member is checked before anything is written.

Absolute paths, ``..`` components, links leaving the target, members below a link and
special files raise `UnsafeArchiveError` naming the member. Extraction goes to a hidden
folder beside the target that is renamed into place at the end, so a folder with the
target's name is always complete.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

_CHUNK_BYTES = 1 << 20


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder or is not a plain file."""


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
