"""Memory for prediction: a tile's activations, an image's outputs, and what is still free."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from biounet.config import UNetConfig

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes for network activations
# Peak memory growth per input pixel of one inference pass is about
# 20.5 * base_channels + 80 bytes (measured: 1.85 GB for a 1212x1212 tile of the default
# network, 0.57 GB with 16 base channels); 3-D voxels are assumed to cost the same.
_BYTES_PER_PIXEL_CHANNEL = 20.5
_BYTES_PER_PIXEL = 80.0


def estimate_tile_bytes(config: UNetConfig, tile_shape: Sequence[int]) -> int:
    """Estimate the peak activation memory of one forward pass over `tile_shape`.

    Example:
        >>> round(estimate_tile_bytes(UNetConfig(), (572, 572)) / 2**20)
        442
    """
    per_pixel = _BYTES_PER_PIXEL_CHANNEL * config.base_channels + _BYTES_PER_PIXEL
    per_pixel += 8.0 * (config.in_channels + config.n_classes)
    return int(per_pixel * math.prod(tile_shape))


def check_fits_in_memory(array: np.ndarray, config: UNetConfig, *, name: str = "image") -> None:
    """Refuse an image whose in-memory prediction needs more memory than is available.

    Counted are the float32 probabilities of every class, the float32 copy of a
    non-float32 image and the mask of the finiteness check; the tiles' activations
    come on top (`memory_budget`). Available is what the system has free (Linux
    MemAvailable), capped by a container's memory limit and the process's address
    space limit (ulimit -v); where none of these can be read, nothing is refused.

    Raises:
        ValueError: giving the bytes needed and pointing to block-wise prediction.
    """
    n_pixels = math.prod(array.shape[1:])
    needed = 4 * config.n_classes * n_pixels + array.size
    if array.dtype != np.float32:
        needed += 4 * array.size
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise ValueError(too_large_message(array.shape, needed, available, name=name))


def too_large_message(shape, needed: int, available: int | None, *, name: str) -> str:
    free = "" if available is None else f", more than the {format_bytes(available)} available"
    return (
        f"{name} of shape {tuple(shape)} needs about {format_bytes(needed)} for in-memory "
        f"prediction{free}; predict it block by block with "
        "biounet.inference.blockwise.predict_blockwise (command line: biounet predict with "
        "--out NAME.zarr)"
    )


def available_memory_bytes() -> int | None:
    """Return about how many bytes this process can still allocate, or None if unknown.

    The least of: Linux MemAvailable (else the free physical pages), the headroom
    under a cgroup v2 memory limit (containers) and under RLIMIT_AS.
    """
    limits = [_meminfo_available(), _cgroup_headroom(), _address_space_headroom()]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_headroom() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as handle:
            limit = handle.read().strip()
        with open("/sys/fs/cgroup/memory.current") as handle:
            current = int(handle.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - current, 0)


def _address_space_headroom() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return max(soft - int(line.split()[1]) * 1024, 0)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return None


def format_bytes(n_bytes: float) -> str:
    """Return a byte count for messages, in bytes, kB, MB, GB or TB (powers of 1000).

    Example:
        >>> format_bytes(512), format_bytes(353_408), format_bytes(9e10)
        ('512 bytes', '353.4 kB', '90.0 GB')
    """
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{int(n_bytes)} bytes"
