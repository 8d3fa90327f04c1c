"""Test helper: cap the address space so an oversized allocation fails at once."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path


@contextlib.contextmanager
def address_space_headroom(extra_bytes: int):
    """Cap this process's address space at its current size + `extra_bytes` (Linux).

    Inside the block an allocation beyond the headroom raises MemoryError at once instead
    of swapping or waking the OOM killer; the soft limit is restored afterwards. Where
    /proc or `resource` is missing the block runs without a cap.
    """
    try:
        import resource

        status = Path("/proc/self/status").read_text()
    except (ImportError, OSError):
        yield
        return
    current = int(re.search(r"VmSize:\s+(\d+) kB", status).group(1)) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (current + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
