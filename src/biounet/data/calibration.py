"""Read the pixel size a TIFF states (resolution tags, ImageJ or OME metadata)."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from biounet.data.io import TIFF_SUFFIXES

logger = logging.getLogger(__name__)


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
