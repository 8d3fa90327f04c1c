"""Write outputs safely: check where they go, and write through a temporary name.

Data go to a temporary name in the target folder and are renamed into place, so an
interrupted run never leaves a file that looks complete and never loses the previous one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_output_path(
    path: str | os.PathLike, *, name: str = "output", is_folder: bool = False
) -> Path:
    """Return `path` as a Path after checking that it can be written; nothing is created.

    The nearest existing folder on the way to `path` must be a writable folder, and a
    file `path` must not be an existing folder.

    Raises:
        NotADirectoryError: if `path` (a folder) or one of its parents is not a folder.
        IsADirectoryError: if `path` (a file) is an existing folder.
        PermissionError: if the nearest existing folder is not writable.
    """
    path = Path(path)
    if not is_folder and path.is_dir():
        raise IsADirectoryError(f"{name} {path} is a folder; expected a file name")
    existing = path if is_folder else path.parent
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        if existing == path:
            raise NotADirectoryError(f"{name} {path} exists and is not a folder")
        raise NotADirectoryError(f"{name} {path} cannot be created: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{name} {path} cannot be written: output folder {existing} is not writable"
        )
    return path


def make_folder(path: str | os.PathLike, *, name: str = "output folder") -> Path:
    """Create the folder `path` (and its parents) after `check_output_path`; return it."""
    path = check_output_path(path, name=name, is_folder=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`, renamed onto `path` only if the block succeeds.

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False.
        NotADirectoryError, IsADirectoryError: see `check_output_path`.
        PermissionError: if the folder cannot be written.
        OutputWriteError: if the block or the rename fails with an OSError (a full
            disk, an I/O error); the temporary is removed and `path` left as it was.
    """
    path = check_output_path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {path} already exists; pass overwrite to replace it")
    folder = make_folder(path.parent)
    try:
        descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except PermissionError:  # what os.access cannot tell: root on a read-only mount, ACLs
        raise PermissionError(
            f"output {path} cannot be written: output folder {folder} is not writable"
        ) from None
    os.close(descriptor)
    temporary = Path(name)
    os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide outputs
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        if error.errno is None or isinstance(error, OutputWriteError):
            raise  # one of biounet's own messages
        raise OutputWriteError(
            error.errno,
            f"cannot write {path}: {error.strerror or error} (a previous {path.name} is intact)",
        ) from error
    finally:
        if temporary.exists():
            temporary.unlink()


class OutputWriteError(OSError):
    """Writing an output failed (disk full, I/O error); the file under its name is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
