"""Download a file over HTTP(S): resumable, checksummed, with a one-line error offline.

A download is written to ``<file>.part`` and renamed when complete. An interrupted
download keeps its ``.part``; the next call asks for the rest with an HTTP Range request
(``If-Range`` with the ETag or Last-Modified seen first, so a file changed on the server
restarts the download) and starts again from zero if the server ignores it. A complete
download whose sha256 differs from the expected one is deleted (a resume could not
repair it) and `ChecksumError` is raised; without an expected value the computed sha256
is logged with the words "not verified". Network failures raise `DownloadError`, a
`ConnectionError` with a one-line message saying what could not be reached.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "biounet-data-fetch (Python urllib)"


class DownloadError(ConnectionError):
    """A server could not be reached, refused the request or stopped sending."""


class ChecksumError(ValueError):
    """A downloaded file's sha256 differs from the expected one."""


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
    download_digest(url, target, sha256=sha256, progress=progress, timeout=timeout)
    return Path(target)


def download_digest(
    url: str,
    target: str | os.PathLike,
    *,
    sha256: str | None = None,
    progress: bool = False,
    timeout: float = 30.0,
    name: str | None = None,
) -> str:
    """`download`, returning the file's sha256 hex digest; `name` is what error messages call it."""
    target = Path(target)
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
