"""Shared fixtures: seeded generators, tiny networks and the real-data root."""

import os
from pathlib import Path

import numpy as np
import pytest

DATA_ROOT = Path(os.environ.get("BIOUNET_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20150518)


@pytest.fixture
def data_root() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.skip(f"real data not found at {DATA_ROOT} (set BIOUNET_DATA)")
    return DATA_ROOT
