"""Process-group setup for ``torchrun`` (PyTorch DDP); a single process needs nothing."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> DistInfo:
    """Read torchrun's environment, pick the device, and join the process group when there are several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= info.world
    return value


def teardown() -> None:
    """Leave the process group: a rank that exits inside one can abort at shutdown (gloo's threads)."""
    if dist.is_initialized():
        dist.destroy_process_group()
