"""Training checkpoints in safetensors: weights, optimiser state, RNG state, step; never pickle.

Layout of one file: tensors `model/<name>`, `optimizer/<param index>/<name>` and
`rng/torch/<rank>`; metadata (JSON strings) `format`, `format_version`, `configs` (model,
train and augmentation configs), `step`, `param_groups`, `extra` and a sha256 over the
tensors. Files are written under a temporary name and renamed, so the previous
checkpoint survives any crash or kill during a write.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from biounet.data.io import check_input_file
from biounet.data.outputs import atomic_path
from biounet.weightfile import load_state_dict_checked, tensors_checksum

FORMAT = "biounet-checkpoint"
FORMAT_VERSION = "1"


@dataclass
class Checkpoint:
    """What a checkpoint restores: configs, step, states, and free-form `extra` (JSON)."""

    configs: dict[str, Any]
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    torch_rng_states: list[torch.Tensor]
    extra: dict[str, Any]


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    configs: dict[str, Any],
    extra: dict[str, Any] | None = None,
    rng_states: list[torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically and return its path.

    `rng_states` holds one torch RNG state per rank (default: this process's).
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {
        f"model/{name}": tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
    }
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for name, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optimizer/{index}/{name}"] = tensor.detach().cpu().contiguous()
    for rank, state in enumerate(rng_states or [torch.get_rng_state()]):
        tensors[f"rng/torch/{rank}"] = state
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "configs": json.dumps(configs, sort_keys=True),
        "step": str(int(step)),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
        "extra": json.dumps(extra or {}),
        "sha256": tensors_checksum(tensors),
    }
    path = Path(path)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`, verifying format and checksum.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a readable, intact biounet checkpoint.
    """
    from safetensors import SafetensorError, safe_open

    path = check_input_file(path, name="checkpoint")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"checkpoint {path} is not a readable safetensors checkpoint "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from None
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} is not a biounet checkpoint of format version {FORMAT_VERSION}"
        )
    if tensors_checksum(tensors) != metadata.get("sha256"):
        raise ValueError(f"checkpoint {path} failed its checksum: it was changed or damaged")
    optimizer_tensors: dict[int, dict[str, torch.Tensor]] = {}
    model_state = {}
    rng_states: dict[int, torch.Tensor] = {}
    for key, tensor in tensors.items():
        kind, _, rest = key.partition("/")
        if kind == "model":
            model_state[rest] = tensor
        elif kind == "optimizer":
            index, _, name = rest.partition("/")
            optimizer_tensors.setdefault(int(index), {})[name] = tensor
        elif kind == "rng":
            rng_states[int(rest.rpartition("/")[2])] = tensor
    return Checkpoint(
        configs=json.loads(metadata["configs"]),
        step=int(metadata["step"]),
        model_state=model_state,
        optimizer_state={
            "state": optimizer_tensors,
            "param_groups": json.loads(metadata["param_groups"]),
        },
        torch_rng_states=[rng_states[rank] for rank in sorted(rng_states)],
        extra=json.loads(metadata.get("extra", "{}")),
    )


def restore(
    checkpoint: Checkpoint,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int = 0,
) -> None:
    """Load a checkpoint's model, optimiser and this rank's torch RNG state in place."""
    load_state_dict_checked(model, checkpoint.model_state, source="checkpoint")
    optimizer.load_state_dict(checkpoint.optimizer_state)
    if rank >= len(checkpoint.torch_rng_states):
        raise ValueError(
            f"checkpoint holds RNG states of {len(checkpoint.torch_rng_states)} rank(s); "
            f"cannot resume rank {rank}: resume with the same number of processes"
        )
    torch.set_rng_state(checkpoint.torch_rng_states[rank])
