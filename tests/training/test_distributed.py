"""Two gloo processes on CPU: identical weights on both ranks, equal to one process with batch 2B."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from biounet.config import TrainConfig, UNetConfig
from biounet.data.dataset import make_training_image
from biounet.training.checkpoint import load_checkpoint
from biounet.training.trainer import Trainer

MODEL = UNetConfig(depth=2, base_channels=4, dropout=0.0)  # drop-out masks differ per rank


def items():
    rng = np.random.default_rng(5)
    result = []
    for index in range(3):
        labels = np.zeros((64, 64), np.int32)
        for cell in range(1, 5):
            y, x = rng.integers(8, 56, size=2)
            labels[y - 6 : y + 6, x - 6 : x + 6] = cell
        image = (labels > 0)[None] + rng.normal(0, 0.3, (1, 64, 64))
        result.append(make_training_image(f"s{index}", image.astype(np.float32), labels, model_config=MODEL, train_config=TrainConfig()))
    return result


def train(run_dir, batch_size, skeleton_recall=0.0):
    config = TrainConfig(iterations=4, tile_shape=(60, 60), batch_size=batch_size, optimizer="sgd", learning_rate=0.05, momentum=0.9, validate_every=4, checkpoint_every=4, workers=0, seed=3, skeleton_recall=skeleton_recall)
    data = items()
    trainer = Trainer(model_config=MODEL, train_config=config, augment_config=None, train_images=data[:2], val_images=data[2:], run_dir=run_dir, progress=False)
    trainer.fit()
    return trainer.model


def worker(rank, world, port, run_dir, out_dir, skeleton_recall):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = train(run_dir, batch_size=1, skeleton_recall=skeleton_recall)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / f"rank{rank}.safetensors"))
    finally:
        torch.distributed.destroy_process_group()


def free_port():
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("skeleton_recall", [0.0, 1.0])  # its recall pools over the ranks
def test_two_ranks_match_one_process_with_double_batch(tmp_path, skeleton_recall):
    mp.spawn(worker, args=(2, free_port(), tmp_path / "ddp", tmp_path, skeleton_recall), nprocs=2, join=True)
    train(tmp_path / "single", batch_size=2, skeleton_recall=skeleton_recall)
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint.safetensors")
    single = load_checkpoint(tmp_path / "single" / "checkpoint.safetensors")
    assert len(ddp.torch_rng_states) == 2 and ddp.step == 4
    rank0, rank1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    for key, value in single.model_state.items():
        torch.testing.assert_close(ddp.model_state[key], value, rtol=1e-4, atol=1e-5)
