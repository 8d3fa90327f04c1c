"""Read and write single images (TIFF, PNG); the only module that knows image file formats.

Writes are atomic: data go to a temporary name in the target folder and are renamed
into place, so an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES

_SUPPORTED_DTYPES = "bool, uint8/16/32, int8/16/32/64, float16/32/64"


def check_input_file(path: str | os.PathLike, *, name: str = "path") -> Path:
    """Return `path` as a Path after checking that it is a non-empty regular file.

    Raises:
        FileNotFoundError: if nothing exists at `path`.
        ValueError: if `path` is a folder or an empty file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name} {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{name} {path} is a folder; expected a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{name} {path} is an empty file (0 bytes)")
    return path


def read_image(path: str | os.PathLike, *, name: str = "image") -> np.ndarray:
    """Read a TIFF or PNG (also JPEG, BMP) file as it is stored, without normalisation.

    TIFF files are read with tifffile: a multi-page stack comes back as (N, Y, X)
    (or (N, Y, X, S) for RGB pages). Other formats are read with Pillow; RGB(A)
    images come back as (Y, X, S), 16-bit greyscale PNGs as uint16.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is a folder, empty, of an unsupported suffix, unreadable
            (truncated, or not an image at all) or of an unsupported dtype.
    """
    path = check_input_file(path, name=name)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        array = _read_tiff(path, name)
    elif suffix in PIL_SUFFIXES:
        array = _read_pillow(path, name)
    else:
        raise ValueError(
            f"{name} {path} has suffix {suffix or '(none)'!r}; "
            f"supported: {', '.join(IMAGE_SUFFIXES)}"
        )
    check_image_dtype(array, name=f"{name} {path}")
    return array


def check_image_dtype(array: np.ndarray, *, name: str = "image") -> None:
    """Raise ValueError unless `array` has a real numeric (or bool) dtype."""
    kind = array.dtype.kind
    if kind not in "biuf" or array.dtype.itemsize > 8:
        raise ValueError(f"{name} has dtype {array.dtype}; supported: {_SUPPORTED_DTYPES}")


def _read_tiff(path: Path, name: str) -> np.ndarray:
    import tifffile

    try:
        return np.asarray(tifffile.imread(path))
    except Exception as error:  # tifffile raises many types for corrupt files
        raise ValueError(f"{name} {path} cannot be read as TIFF: {_first_line(error)}") from None


def _read_pillow(path: Path, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            handle.load()
            if handle.mode in ("P", "PA"):
                handle = handle.convert("RGBA" if "transparency" in handle.info else "RGB")
            elif handle.mode == "I;16B":
                handle = handle.convert("I;16")
            array = np.array(handle)
    except UnidentifiedImageError:
        raise ValueError(f"{name} {path} is not a readable image file") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ValueError(f"{name} {path} cannot be read: {_first_line(error)}") from None
    return array


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`, renamed onto `path` only if the block succeeds.

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False.
        PermissionError: if the folder cannot be written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {path} already exists; pass overwrite to replace it")
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"output folder {folder} is not writable")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(descriptor)
    temporary = Path(temporary)
    os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide outputs
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_tiff(path: str | os.PathLike, array: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write `array` to a (compressed) TIFF atomically and return the final path."""
    import tifffile

    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as temporary:
        tifffile.imwrite(temporary, array, compression="zlib", photometric="minisblack")
    return path


def write_png(path: str | os.PathLike, array: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write a uint8/uint16 (Y, X) or (Y, X, 3|4) array to PNG atomically."""
    from PIL import Image

    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"array for PNG {path} must be uint8 or uint16, got {array.dtype}")
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")
    return path
