"""Read and write single images (TIFF, PNG); the only module that knows image file formats.

Writes are atomic: data go to a temporary name in the target folder and are renamed
into place, so an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

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


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The pixel size a TIFF states, to carry over to the outputs computed from it.

    Attributes:
        resolution: pixels per unit along X and Y (the XResolution, YResolution tags).
        resolution_unit: the ResolutionUnit tag (1 none, 2 inch, 3 centimetre).
        unit: ImageJ's unit ("micron", "nm", ...), None without ImageJ metadata.
        spacing: ImageJ's Z step in `unit`, None for single planes or without it.
    """

    resolution: tuple[float, float] | None = None
    resolution_unit: int | None = None
    unit: str | None = None
    spacing: float | None = None


# Lengths of the units ImageJ and OME name, and of TIFF's ResolutionUnit 2 and 3, in µm.
_MICRONS = {"micron": 1.0, "um": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4,
            "m": 1e6, "inch": 25400.0, "in": 25400.0}
_RESOLUTION_UNIT_MICRONS = {2: 25400.0, 3: 1e4}


def voxel_spacing(calibration: Calibration | None) -> tuple[float, float, float] | None:
    """A volume's (Z, Y, X) voxel size in X pixels, from its calibration, or None.

    The form `PostprocessConfig.spacing` takes: (8, 1, 1) for 40 nm sections of 5 nm
    pixels. The Z step is in ImageJ's (or OME's) unit, the pixel size in that unit too
    when the resolution tags say "no unit", else per inch or centimetre; None unless
    both lengths are known (or share the unstated unit).

    Example:
        >>> voxel_spacing(Calibration(resolution=(200.0, 200.0), resolution_unit=1,
        ...                           unit="um", spacing=0.04))
        (8.0, 1.0, 1.0)
    """
    if calibration is None or calibration.resolution is None or calibration.spacing is None:
        return None
    x_size, y_size = (1.0 / pixels for pixels in calibration.resolution)
    z_size = calibration.spacing
    if calibration.resolution_unit in _RESOLUTION_UNIT_MICRONS:
        z_microns = _MICRONS.get((calibration.unit or "").lower())
        if z_microns is None:  # a Z step in an unknown unit beside pixels per inch or cm
            return None
        scale = _RESOLUTION_UNIT_MICRONS[calibration.resolution_unit]
        x_size, y_size, z_size = x_size * scale, y_size * scale, z_size * z_microns
    return (z_size / x_size, y_size / x_size, 1.0)


def read_calibration(path: str | os.PathLike) -> Calibration | None:
    """Return the pixel size stored in a TIFF's first page, ImageJ or OME metadata, or None.

    Files without any (PNG, or TIFFs written without resolution tags) give None; a
    resolution tag of 0 or 1 pixel per unit, which writers use for "unknown", counts as
    none. Never raises for a readable image: calibration is a courtesy, not input.
    """
    import tifffile

    if Path(path).suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        with tifffile.TiffFile(path) as handle:
            page = handle.pages.first
            tags = page.tags
            resolution = None
            if "XResolution" in tags and "YResolution" in tags:
                x, y = (_rational(tags[name].value) for name in ("XResolution", "YResolution"))
                if x > 0 and y > 0 and (x, y) != (1.0, 1.0):
                    resolution = (x, y)
            unit_tag = tags.get("ResolutionUnit")
            imagej = handle.imagej_metadata or {}
            ome = _ome_physical_size(handle.ome_metadata) if handle.is_ome else {}
    except Exception:  # unreadable files fail, with their own message, when read as images
        return None
    spacing = imagej.get("spacing")
    calibration = Calibration(
        resolution=resolution,
        resolution_unit=int(unit_tag.value) if unit_tag is not None and resolution else None,
        unit=_ascii_unit(imagej.get("unit")),
        spacing=float(spacing) if isinstance(spacing, (int, float)) and spacing > 0 else None,
    )
    if resolution is None and "X" in ome and "Y" in ome:
        # OME states sizes per pixel in a named unit, which TIFF tags cannot: ImageJ's
        # unit field carries it, with the tags in "no unit".
        calibration = Calibration(
            resolution=(1.0 / ome["X"], 1.0 / ome["Y"]),
            resolution_unit=1,
            unit=ome["unit"],
            spacing=calibration.spacing or ome.get("Z"),
        )
    return None if calibration == Calibration() else calibration


def _ome_physical_size(xml: str | None) -> dict:
    """PhysicalSizeX/Y/Z of an OME-XML's first image, where X and Y share one unit.

    Z is kept only in that unit too, so that the spacing and pixel size stay comparable.
    """
    import xml.etree.ElementTree as ElementTree

    if not xml:
        return {}
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:  # a broken description must not lose the tags' size
        return {}
    # The namespace changes with each OME schema version; match on the local name.
    pixels = next((element for element in root.iter() if element.tag.endswith("}Pixels")), None)
    if pixels is None:
        return {}
    units = {axis: pixels.get(f"PhysicalSize{axis}Unit", "\u00b5m") for axis in "XYZ"}
    sizes = {}
    for axis in "XYZ":
        try:
            value = float(pixels.get(f"PhysicalSize{axis}", "nan"))
        except ValueError:
            continue
        if np.isfinite(value) and value > 0 and units[axis] == units["X"]:
            sizes[axis] = value
    unit = _ascii_unit(units["X"])
    return {**sizes, "unit": unit} if "X" in sizes and "Y" in sizes else {}


def _ascii_unit(unit) -> str | None:
    """ImageJ's unit as the ASCII that TIFF descriptions hold ("µm" is ImageJ's "micron")."""
    if not unit:
        return None
    text = str(unit).replace("\u00b5m", "micron").replace("\u03bcm", "micron")
    text = text.replace("\u00b5", "u").replace("\u03bc", "u")
    if not text.isascii():
        logger.debug("unit %r is not ASCII; outputs state the pixel size without it", unit)
        return None
    return text


def _rational(value) -> float:
    numerator, denominator = value if isinstance(value, tuple) else (value, 1)
    return float(numerator) / float(denominator) if denominator else 0.0


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
