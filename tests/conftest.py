"""Shared fixtures: seeded generators, tiny networks and the real-data root."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from biounet.config import UNetConfig
from biounet.model.unet import UNet

DATA_ROOT = Path(
    os.environ.get("BIOUNET_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20150518)


@pytest.fixture
def data_root() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.skip(f"real data not found at {DATA_ROOT} (set BIOUNET_DATA)")
    return DATA_ROOT


@pytest.fixture
def tiny_unet() -> UNet:
    """A depth-3, 4-channel U-Net with fixed weights: milliseconds per tile."""
    torch.manual_seed(0)
    return UNet(UNetConfig(depth=3, base_channels=4)).eval()


@pytest.fixture
def model_file(tiny_unet, tmp_path):
    """`tiny_unet` saved as a weight file, the --model most CLI tests pass."""
    from biounet.weightfile import save_model

    return save_model(tiny_unet, tmp_path / "model.safetensors")



class BlockCalls:
    """The blocks `predict_blockwise` predicted, in order; `interrupt_at(n)` makes the n-th
    of the next ones raise instead, as a crash or Ctrl-C would."""

    def __init__(self) -> None:
        self.calls: list = []
        self.at: int | None = None
        self.error: type[BaseException] = KeyboardInterrupt

    def interrupt_at(self, number: int, error: type[BaseException] = KeyboardInterrupt) -> None:
        self.calls.clear()
        self.at, self.error = number, error

    def record_only(self) -> None:
        self.calls.clear()
        self.at = None


@pytest.fixture
def block_calls(monkeypatch) -> BlockCalls:
    from biounet.inference import blockwise

    original, record = blockwise._predict_block, BlockCalls()

    def recorded(job, index, tiles):
        record.calls.append(index)
        if len(record.calls) == record.at:
            raise record.error
        return original(job, index, tiles)

    monkeypatch.setattr(blockwise, "_predict_block", recorded)
    return record
