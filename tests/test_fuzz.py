"""Fuzzing the readers of untrusted files: images (PNG, TIFF) and weight files (safetensors).

Each reader gets a few hundred seeded mutations of valid files (bit flips, overwritten and
inserted bytes, truncation, spliced headers, pure noise). The documented errors are
ValueError and FileNotFoundError; any other exception is collected and reported with the
seed that reproduces it. The process runs with a capped address space, so a file that
claims gigapixels fails fast instead of filling the memory.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from biounet.config import UNetConfig
from biounet.data.io import read_image
from biounet.model.unet import UNet
from biounet.weightfile import load_model, save_model
from memory_limits import address_space_headroom

N_IMAGE_RUNS = 1000  # about 1 s
N_WEIGHT_RUNS = 300  # about 0.5 s: building a network per file costs more
HEADROOM_BYTES = 128 * 1024**2  # address space a single read may add; fails fast
FUZZ_SEED = 20150518
DOCUMENTED = (ValueError, FileNotFoundError)


# --- valid files to start from -----------------------------------------------------------------


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def image_seeds() -> dict[str, tuple[str, bytes]]:
    """name -> (suffix, bytes) of small valid images of the kinds biounet reads."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (24, 20), dtype=np.uint8)
    return {
        "png grey": (".png", png_bytes(grey)),
        "png rgb": (".png", png_bytes(rng.integers(0, 255, (16, 12, 3), dtype=np.uint8))),
        "png 16-bit": (".png", png_bytes(rng.integers(0, 65535, (16, 12), dtype=np.uint16))),
        "tiff uint8": (".tif", tiff_bytes(grey)),
        "tiff float32 zlib": (".tif", tiff_bytes(rng.random((16, 12), dtype=np.float32),
                                                 compression="zlib")),
        "tiff stack": (".tif", tiff_bytes(rng.integers(0, 4000, (3, 16, 12), dtype=np.uint16),
                                          photometric="minisblack")),
        "tiff tiled": (".tif", tiff_bytes(rng.integers(0, 255, (40, 40), dtype=np.uint8),
                                          tile=(16, 16))),
    }


def weight_seed(folder: Path) -> bytes:
    torch.manual_seed(0)
    return save_model(UNet(UNetConfig(depth=1, base_channels=2)),
                      folder / "seed.safetensors").read_bytes()


# --- mutations ---------------------------------------------------------------------------------


def flip_bits(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        position = int(rng.integers(len(out)))
        out[position] ^= 1 << int(rng.integers(8))
    return bytes(out)


def overwrite_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """Put extreme values (0, 0xff, 0x7f, 0x80) or noise over a short run of bytes."""
    out = bytearray(data)
    length = int(rng.integers(1, 9))
    position = int(rng.integers(max(1, len(out) - length)))
    fill = rng.choice([0x00, 0xFF, 0x7F, 0x80, -1])
    chunk = rng.integers(0, 256, length) if fill < 0 else np.full(length, fill)
    out[position : position + length] = bytes(chunk.astype(np.uint8).tolist())
    return bytes(out)


def insert_or_delete(data: bytes, rng: np.random.Generator) -> bytes:
    position = int(rng.integers(len(data)))
    if rng.random() < 0.5:
        return data[:position] + rng.bytes(int(rng.integers(1, 64))) + data[position:]
    return data[:position] + data[position + int(rng.integers(1, 64)) :]


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(1, len(data)))]


def noise(data: bytes, rng: np.random.Generator) -> bytes:
    """Pure noise, sometimes behind the first bytes (the signature) of the valid file."""
    random = rng.bytes(int(rng.integers(1, 2048)))
    return data[: int(rng.integers(0, 16))] + random if rng.random() < 0.5 else random


def header_focus(data: bytes, rng: np.random.Generator) -> bytes:
    """Flip bits within the first 256 bytes, where sizes, offsets and counts live."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        position = int(rng.integers(min(256, len(out))))
        out[position] ^= 1 << int(rng.integers(8))
    return bytes(out)


MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "flip bits": flip_bits,
    "overwrite bytes": overwrite_bytes,
    "insert or delete": insert_or_delete,
    "truncate": truncate,
    "noise": noise,
    "header bits": header_focus,
}


def safetensors_parts(data: bytes) -> tuple[dict, bytes]:
    """Split a safetensors file into its JSON header and the tensor bytes."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def safetensors_join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the writer pads the header to 8 bytes
    return len(text).to_bytes(8, "little") + text + body


def tamper_config(data: bytes, rng: np.random.Generator) -> bytes:
    """Give one field of the stored UNetConfig another value; the file stays well-formed.

    The checksum covers the tensors only, so such a file passes it: what protects the
    reader is the check of the tensors against the architecture.
    """
    header, body = safetensors_parts(data)
    config = json.loads(header["__metadata__"]["config"])
    key = sorted(config)[int(rng.integers(len(config)))]
    # ints stay below 10**4: a depth of 10**6 alone takes seconds to fail (see below)
    values = [int(rng.integers(0, 10**4)), int(rng.integers(0, 64)), -1, 0, 2.5, "x", None,
              [1], True, 10**30]
    config[key] = values[int(rng.integers(len(values)))]
    header["__metadata__"]["config"] = json.dumps(config)
    return safetensors_join(header, body)


WEIGHT_MUTATIONS = {**MUTATIONS, "config value": tamper_config}


# --- the fuzz loop -----------------------------------------------------------------------------


def fuzz(read: Callable[[Path], object], seeds: dict[str, tuple[str, bytes]], folder: Path,
         *, n_runs: int, seed: int, mutations=MUTATIONS) -> list[str]:
    """Feed `n_runs` mutated files to `read`; return a line per undocumented exception."""
    failures = []
    names = sorted(seeds)
    rng = np.random.default_rng(seed)
    for run in range(n_runs):
        name = names[int(rng.integers(len(names)))]
        mutation = list(mutations)[int(rng.integers(len(mutations)))]
        suffix, data = seeds[name]
        path = folder / f"fuzz-{run:04d}{suffix}"
        path.write_bytes(mutations[mutation](data, rng))
        try:
            with warnings.catch_warnings(), address_space_headroom(HEADROOM_BYTES):
                warnings.simplefilter("ignore")
                read(path)
        except DOCUMENTED:
            pass
        except Exception as error:  # noqa: BLE001 (collecting is the point)
            text = str(error).splitlines()[0][:120] if str(error) else ""
            failures.append(f"run {run} ({mutation} of {name}): {type(error).__name__}: {text}")
        path.unlink()
    return failures


def test_mutations_change_the_files():
    """The fuzzer is not feeding the valid files back unchanged."""
    rng = np.random.default_rng(FUZZ_SEED)
    data = image_seeds()["png grey"][1]
    changed = [MUTATIONS[name](data, rng) != data for name in MUTATIONS for _ in range(20)]
    assert sum(changed) >= 0.95 * len(changed)


def test_valid_seeds_are_read(tmp_path):
    for name, (suffix, data) in image_seeds().items():
        (tmp_path / f"seed{suffix}").write_bytes(data)
        assert read_image(tmp_path / f"seed{suffix}").size > 0, name
    (tmp_path / "seed.safetensors").write_bytes(weight_seed(tmp_path))
    load_model(tmp_path / "seed.safetensors")


def test_image_reader_raises_only_documented_errors(tmp_path):
    failures = fuzz(read_image, image_seeds(), tmp_path, n_runs=N_IMAGE_RUNS, seed=FUZZ_SEED)
    assert not failures, "\n".join(failures)


def test_weight_file_reader_raises_only_documented_errors(tmp_path):
    seeds = {"weights": (".safetensors", weight_seed(tmp_path))}
    failures = fuzz(load_model, seeds, tmp_path, n_runs=N_WEIGHT_RUNS, seed=FUZZ_SEED + 1,
                    mutations=WEIGHT_MUTATIONS)
    assert not failures, "\n".join(failures)


# --- crafted files: what the fuzzer found, one at a time ----------------------------------------


def png_with(data: bytes, chunk: bytes, *, length: int | None = None,
             payload: bytes | None = None) -> bytes:
    """Rewrite the first `chunk` of a PNG: its length field, or its payload with a valid CRC."""
    out = bytearray(data)
    start = out.index(chunk) - 4
    old_length = int.from_bytes(out[start : start + 4], "big")
    if payload is not None:
        crc = zlib.crc32(chunk + payload).to_bytes(4, "big")
        out[start : start + 12 + old_length] = (len(payload).to_bytes(4, "big") + chunk
                                                + payload + crc)
    if length is not None:
        out[start : start + 4] = length.to_bytes(4, "big")
    return bytes(out)


def test_png_claiming_900_megapixels_is_refused(tmp_path):
    data = image_seeds()["png grey"][1]
    header = data[data.index(b"IHDR") + 4 : data.index(b"IHDR") + 17]
    bomb = png_with(data, b"IHDR", payload=struct.pack(">II", 30000, 30000) + header[8:])
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ValueError, match=r"bomb\.png"):
        read_image(tmp_path / "bomb.png")


def test_png_chunk_claiming_2_gb_is_refused_on_a_small_machine(tmp_path):
    data = png_with(image_seeds()["png grey"][1], b"IDAT", length=0x7FFFFFF0)
    (tmp_path / "long.png").write_bytes(data)
    with address_space_headroom(HEADROOM_BYTES), pytest.raises(ValueError, match="long.png"):
        read_image(tmp_path / "long.png")


# beyond UNetConfig's bounds, and (base_channels 1024) within them: a network of ~260 MB
# that the 3 kB file's tensors do not fit, refused before it is allocated
@pytest.mark.parametrize(("key", "value"), [("depth", 10**6), ("base_channels", 100_000),
                                            ("base_channels", 10**30), ("base_channels", 1024)])
def test_absurd_stored_config_is_refused_before_building(key, value, tmp_path):
    header, body = safetensors_parts(weight_seed(tmp_path))
    config = json.loads(header["__metadata__"]["config"])
    header["__metadata__"]["config"] = json.dumps(config | {key: value})
    (tmp_path / "absurd.safetensors").write_bytes(safetensors_join(header, body))
    with address_space_headroom(64 * 1024**2), pytest.raises(ValueError, match=key):
        load_model(tmp_path / "absurd.safetensors")
