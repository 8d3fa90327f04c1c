"""Writing outputs through a temporary name."""

import pytest

from biounet.data.outputs import atomic_path


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "result.tif"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_path(target, overwrite=False):
            pass
    assert target.read_bytes() == b"old"
