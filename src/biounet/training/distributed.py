"""Data-parallel training with torch.distributed (DDP): ranks, tile shares, synchronised flags.

Launched by `torchrun --nproc-per-node N -m biounet train ...` (or `biounet train
--nproc N`), which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Backend: gloo on
CPU, nccl on GPU. Every step consumes the global tile indices [s*B*W, (s+1)*B*W) of the
seeded tile sequence; rank r takes the r-th run of B of them. With drop-out off, N
ranks with batch B therefore follow the same trajectory as one process with batch N*B.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_environment() -> tuple[int, int]:
    """Join the process group described by torchrun's variables; return (rank, world_size).

    Without WORLD_SIZE > 1 nothing is initialised and (0, 1) comes back.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    """Return (rank, world size) of this process, (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_indices(start_step: int, iterations: int, batch_size: int, rank: int, world: int):
    """Tile indices this rank draws for steps start_step..iterations-1, in order.

    Example:
        >>> list(rank_indices(1, 3, 2, 1, 2))  # steps 1 and 2, batch 2, rank 1 of 2
        [6, 7, 10, 11]
    """
    for step in range(start_step, iterations):
        first = (step * world + rank) * batch_size
        yield from range(first, first + batch_size)


def any_rank(flag: bool) -> bool:
    """True if `flag` is set on any rank (so all ranks stop at the same step)."""
    _, world = rank_and_world()
    if world == 1:
        return flag
    value = torch.tensor([1 if flag else 0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_rng_states() -> list[torch.Tensor]:
    """Every rank's torch RNG state (for drop-out), gathered on all ranks."""
    state = torch.get_rng_state()
    _, world = rank_and_world()
    if world == 1:
        return [state]
    states = [torch.empty_like(state) for _ in range(world)]
    dist.all_gather(states, state)
    return states
