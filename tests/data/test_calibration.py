"""The pixel size TIFFs state, read and carried over to outputs."""

import numpy as np
import pytest
import tifffile
from PIL import Image


def test_calibration_of_an_imagej_stack_carries_over(tmp_path):
    import tifffile

    from biounet.data.calibration import Calibration, read_calibration
    from biounet.data.io import read_image, write_tiff

    source = tmp_path / "em.tif"
    tifffile.imwrite(source, np.zeros((3, 20, 30), np.uint16), imagej=True,
                     resolution=(200.0, 200.0), metadata={"unit": "um", "spacing": 0.04})
    calibration = read_calibration(source)
    assert calibration == Calibration(resolution=(200.0, 200.0), resolution_unit=1, unit="um", spacing=0.04)
    volume = np.arange(3 * 20 * 30, dtype=np.float32).reshape(3, 20, 30)
    for array in (volume, volume[0].astype(np.uint8), volume.astype(np.uint16)):
        out = write_tiff(tmp_path / f"out{array.ndim}{array.dtype}.tif", array, calibration=calibration)
        assert read_calibration(out) == calibration
        np.testing.assert_array_equal(read_image(out), array)
        with tifffile.TiffFile(out) as handle:
            assert handle.series[0].axes == "ZYX"[3 - array.ndim :]  # slices, not channels
            assert handle.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    # ImageJ cannot state (C, Z, Y, X) float maps or int32 labels: the tags still do
    classes = write_tiff(tmp_path / "classes.tif", np.stack([volume, volume]), calibration=calibration)
    assert read_calibration(classes) == Calibration(resolution=(200.0, 200.0), resolution_unit=1)
    assert read_image(classes).shape == (2, 3, 20, 30)
    two_classes = write_tiff(tmp_path / "c.tif", np.stack([volume[0], volume[1]]), calibration=calibration, classes_first=True)
    with tifffile.TiffFile(two_classes) as handle:
        assert handle.series[0].axes == "CYX" and "spacing" not in handle.imagej_metadata
    assert read_calibration(two_classes) == Calibration(resolution=(200.0, 200.0), resolution_unit=1, unit="um")


@pytest.mark.parametrize(("unit", "expected"), [("\u00b5m", "micron"), ("\u03bcm", "micron"), ("nm", "nm"), ("\u00c5", None)])
def test_a_unit_that_tiff_cannot_hold_is_translated_or_left_out(tmp_path, unit, expected):
    from biounet.data.calibration import read_calibration
    from biounet.data.io import write_tiff

    description = f"ImageJ=1.54f\nimages=1\nunit={unit}\n".encode()
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((4, 5), np.uint8), resolution=(10.0, 10.0), description=description)
    calibration = read_calibration(tmp_path / "in.tif")
    assert calibration.unit == expected and calibration.resolution == (10.0, 10.0)
    out = write_tiff(tmp_path / "out.tif", np.zeros((4, 5), np.float32), calibration=calibration)
    assert read_calibration(out) == calibration


def test_calibration_is_none_without_one(tmp_path):
    import tifffile

    from biounet.data.calibration import Calibration, read_calibration

    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((4, 5), np.uint8))
    tifffile.imwrite(tmp_path / "cm.tif", np.zeros((4, 5), np.uint8), resolution=(2.5, 4.0), resolutionunit=3)
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    assert read_calibration(tmp_path / "plain.tif") is None
    assert read_calibration(tmp_path / "a.png") is None
    assert read_calibration(tmp_path / "broken.tif") is None
    assert read_calibration(tmp_path / "cm.tif") == Calibration(resolution=(2.5, 4.0), resolution_unit=3)


def test_calibration_of_an_ome_tiff_is_its_physical_size(tmp_path):
    from biounet.data.calibration import Calibration, read_calibration
    from biounet.data.io import write_tiff

    def ome(name, **sizes):
        tifffile.imwrite(tmp_path / name, np.zeros((3, 20, 30), np.uint16), ome=True, metadata={"axes": "ZYX", **sizes})
        return read_calibration(tmp_path / name)

    stated = ome("a.ome.tif", PhysicalSizeX=0.25, PhysicalSizeY=0.5, PhysicalSizeZ=2.0)  # OME's default unit is µm
    assert stated == Calibration(resolution=(4.0, 2.0), resolution_unit=1, unit="micron", spacing=2.0)
    out = write_tiff(tmp_path / "out.tif", np.zeros((3, 20, 30), np.float32), calibration=stated)
    assert read_calibration(out) == stated
    # a Z step in another unit than X and Y is left out rather than mixed with them
    assert ome("b.ome.tif", PhysicalSizeX=0.1, PhysicalSizeY=0.1, PhysicalSizeZ=200, PhysicalSizeZUnit="nm").spacing is None
    assert ome("c.ome.tif", PhysicalSizeX=5, PhysicalSizeY=5, PhysicalSizeXUnit="nm", PhysicalSizeYUnit="nm").unit == "nm"
    assert ome("d.ome.tif", PhysicalSizeX=0.1, PhysicalSizeY=0.1, PhysicalSizeYUnit="nm") is None
    assert ome("e.ome.tif") is None
    # resolution tags, when present, win over the OME description
    tifffile.imwrite(tmp_path / "f.ome.tif", np.zeros((20, 30), np.uint8), ome=True, resolution=(8.0, 8.0),
                     metadata={"axes": "YX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    assert read_calibration(tmp_path / "f.ome.tif").resolution == (8.0, 8.0)
