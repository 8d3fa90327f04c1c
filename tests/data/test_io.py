"""Single-image reading and writing."""

import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from biounet.data.io import read_image, write_png, write_tiff


def test_round_trips(tmp_path, rng):
    stack = rng.integers(0, 60000, (3, 20, 30), dtype=np.uint16)
    write_tiff(tmp_path / "stack.tif", stack)
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tif"), stack)
    grey = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    write_png(tmp_path / "grey.png", grey)
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), grey)
    rgba = rng.integers(0, 255, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba)
    deep = rng.integers(0, 65535, (20, 30), dtype=np.uint16)
    write_png(tmp_path / "deep.png", deep)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), deep)


def test_outputs_are_readable_by_others(tmp_path):
    path = write_tiff(tmp_path / "out.tif", np.zeros((4, 4), np.float32))
    assert os.stat(path).st_mode & 0o044 == 0o044 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bad_files(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="is a folder"):
        read_image(tmp_path)
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        read_image(tmp_path / "empty.tif")
    (tmp_path / "text.tif").write_text("this is not a TIFF")
    with pytest.raises(ValueError, match="cannot be read as TIFF"):
        read_image(tmp_path / "text.tif")
    image = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    write_png(tmp_path / "good.png", image)
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.png"):
        read_image(tmp_path / "truncated.png")
    tifffile.imwrite(tmp_path / "good.tif", image)
    data = (tmp_path / "good.tif").read_bytes()
    (tmp_path / "truncated.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="truncated.tif"):
        read_image(tmp_path / "truncated.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="supported: .tif"):
        read_image(tmp_path / "notes.txt")
    tifffile.imwrite(tmp_path / "complex.tif", np.zeros((4, 4), np.complex64))
    with pytest.raises(ValueError, match="dtype complex64"):
        read_image(tmp_path / "complex.tif")
