"""Read and write single images (TIFF, PNG); with `calibration`, the only code that parses them.

Writes go through `biounet.data.outputs.atomic_path`: an interrupted run never leaves a
file that looks complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from biounet.data.outputs import atomic_path

if TYPE_CHECKING:
    from biounet.data.calibration import Calibration

logger = logging.getLogger(__name__)

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


def read_tiff_shape(path: str | os.PathLike, *, name: str = "image") -> tuple[tuple, np.dtype]:
    """Return the (shape, dtype) that `read_image` gives for a TIFF, reading only its header.

    Raises:
        ValueError: if the file cannot be read as TIFF.
    """
    import tifffile

    with _captured_log("tifffile") as records:  # as in `_read_tiff`: one error line only
        try:
            with tifffile.TiffFile(path) as handle:
                series = handle.series[0]  # what tifffile.imread returns by default
                return tuple(series.shape), np.dtype(series.dtype)
        except Exception as error:  # tifffile raises many types for corrupt files
            raise ValueError(
                f"{name} {path} cannot be read as TIFF: {_first_line(error)}"
            ) from None
        finally:  # a readable file's doubts are said when `read_image` reads its pixels
            for record in records:
                logger.debug("%s %s: tifffile: %s", name, path, record.getMessage())


def check_image_dtype(array: np.ndarray, *, name: str = "image") -> None:
    """Raise ValueError unless `array` has a real numeric (or bool) dtype."""
    kind = array.dtype.kind
    if kind not in "biuf" or array.dtype.itemsize > 8:
        raise ValueError(f"{name} has dtype {array.dtype}; supported: {_SUPPORTED_DTYPES}")


def _read_tiff(path: Path, name: str) -> np.ndarray:
    import tifffile

    with _captured_log("tifffile") as records:
        try:
            array = np.asarray(tifffile.imread(path))
        except Exception as error:  # tifffile raises many types for corrupt files
            for record in records:  # the one error line says it; details for --verbose
                logger.debug("%s %s: tifffile: %s", name, path, record.getMessage())
            raise ValueError(
                f"{name} {path} cannot be read as TIFF: {_first_line(error)}"
            ) from None
    for record in records:  # read, but tifffile had doubts: say which file they concern
        level = min(record.levelno, logging.WARNING)
        logger.log(level, "%s %s: tifffile: %s", name, path, record.getMessage())
    return array


class _CaptureFilter(logging.Filter):
    """Diverts a logger's records into a list while this thread is inside `_captured_log`."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        records = getattr(self.local, "records", None)
        if records is None:
            return True
        records.append(record)
        return False


_CAPTURE_FILTERS: dict[str, _CaptureFilter] = {}


@contextlib.contextmanager
def _captured_log(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Collect what `logger_name` logs in this thread during the block instead of printing it.

    tifffile logs about damaged files on its own (ERROR/WARNING records) before it
    raises; shown, they would be lines above biounet's one error line.
    """
    capture = _CAPTURE_FILTERS.get(logger_name)
    if capture is None:
        capture = _CAPTURE_FILTERS[logger_name] = _CaptureFilter()
        logging.getLogger(logger_name).addFilter(capture)
    outer = getattr(capture.local, "records", None)
    capture.local.records = records = []
    try:
        yield records
    finally:
        capture.local.records = outer


def _read_pillow(path: Path, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    _check_png_chunks(path, name)
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
    except Image.DecompressionBombError as error:  # a few bytes claiming gigapixels
        raise ValueError(f"{name} {path} is refused: {_first_line(error)}") from None
    except MemoryError:
        raise ValueError(
            f"{name} {path} cannot be read: decoding it needs more memory than is available"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ValueError(f"{name} {path} cannot be read: {_first_line(error)}") from None
    return array


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_chunks(path: Path, name: str) -> None:
    """Refuse a PNG with a chunk longer than the file before Pillow allocates for it.

    Pillow reads a chunk of the length the file states in one piece, so a 100-byte
    file claiming a 2 GB chunk asks for 2 GB of memory. Only the 8-byte chunk headers
    are read (PNG specification, Sec. 5.3: length, type, data, CRC).
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if handle.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
            return  # not a PNG: Pillow identifies the format, or refuses the file
        position = len(_PNG_SIGNATURE)
        while position + 8 <= size:
            header = handle.read(8)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if position + 12 + length > size:
                raise ValueError(
                    f"{name} {path} cannot be read: its {kind.decode('latin-1')!r} chunk "
                    f"claims {length} bytes, but only {max(size - position - 12, 0)} follow "
                    "(truncated or damaged)"
                )
            if kind == b"IEND":
                return
            position += 12 + length
            handle.seek(position)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)


def write_tiff(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    overwrite: bool = True,
    calibration: Calibration | None = None,
    classes_first: bool = False,
) -> Path:
    """Write `array` to a (compressed) TIFF atomically and return the final path.

    With `calibration` (from `read_calibration` of the input) the output states the same
    pixel size: resolution tags always, and ImageJ's unit and Z spacing for arrays ImageJ
    can describe: uint8, uint16 or float32 (Y, X) and (Z, Y, X), or with `classes_first`
    (C, Y, X) class maps. (C, Z, Y, X) maps and uint32 labels keep the resolution tags
    only, since ImageJ stores channels inside Z and has no 32-bit integers.
    """
    import tifffile

    options: dict = {"compression": "zlib", "photometric": "minisblack"}
    if calibration is not None:
        if calibration.resolution is not None:
            options["resolution"] = calibration.resolution
            options["resolutionunit"] = calibration.resolution_unit or 1
        metadata = {"unit": calibration.unit, "spacing": calibration.spacing}
        metadata = {key: value for key, value in metadata.items() if value is not None}
        axes = {(2, False): "YX", (3, False): "ZYX", (3, True): "CYX"}.get(
            (array.ndim, classes_first)
        )
        if metadata and axes and array.dtype in _IMAGEJ_DTYPES:
            if axes == "CYX":  # the classes of one plane have no Z step
                metadata.pop("spacing", None)
            # An axis named, not guessed: tifffile would take a short stack for channels.
            options.update(imagej=True, metadata={**metadata, "axes": axes})
            options.pop("photometric")
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as temporary:
        tifffile.imwrite(temporary, array, **options)
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
