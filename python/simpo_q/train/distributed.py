"""The few facts about torch.distributed that training, checkpoints, the importance matrix
and the pipeline share: this process's rank and the world size (one process when no group
is running), starting a group, and the whole of a possibly sharded (FSDP2 DTensor) tensor."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_distributed() -> bool:
    """More than one process takes part (each collective needs all of them)."""
    return dist.is_initialized() and dist.get_world_size() > 1


def start(force: bool = False) -> tuple[int, int]:
    """(rank, world); starts the process group under torchrun with several ranks, or with
    `force` (FSDP2 on a single process, e.g. one GPU) even outside torchrun."""
    if not dist.is_initialized() and (int(os.environ.get("WORLD_SIZE", "1")) > 1 or force):
        if "MASTER_ADDR" not in os.environ:  # one process, not started by torchrun
            import socket

            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
        dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
    return rank_world()


def full(t):
    """The whole tensor: an FSDP2 shard (DTensor) gathered from every rank (a collective:
    every rank must call it), a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
