"""Process-group setup for ``torchrun`` or SLURM's ``srun`` (PyTorch DDP); a single process needs nothing."""
from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..devices import resolve_device
from ..errors import GhostvladError

DEFAULT_TIMEOUT = 1800.0  # seconds


class DistError(GhostvladError):
    """A launch environment that cannot work (one line, names what to set)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    local_world: int = 1  # ranks on this node

    @property
    def main(self) -> bool:
        return self.rank == 0


def launch_environment(env: dict[str, str] | None = None) -> tuple[int, int, int, int]:
    """``(rank, world, local_rank, local_world)`` from torchrun's variables or, failing those, SLURM's.

    A task of a multi-task ``srun`` step (``SLURM_STEP_NUM_TASKS`` > 1) needs ``MASTER_ADDR`` and ``MASTER_PORT``
    (the rendezvous torchrun would provide); without them it refuses, rather than start independent runs that
    write one folder.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")), int(env.get("LOCAL_WORLD_SIZE", world))
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if tasks > 1 and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not env.get(v)]
        if missing:
            raise DistError(f"srun started {tasks} tasks but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                            "not set: export MASTER_ADDR=<first node's hostname> MASTER_PORT=<free port> before srun, "
                            "or run one torchrun per node")
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE") or str(tasks)
        local_world = int(per_node.split("(")[0].split(",")[0])
        return int(env["SLURM_PROCID"]), tasks, int(env.get("SLURM_LOCALID", "0")), local_world
    return 0, 1, 0, 1


def setup(device: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> DistInfo:
    """Read the launcher's environment, pick the device, and join the process group when there are several ranks.

    ``timeout``: seconds a rank waits in a collective before the job fails (NCCL's default is 10 minutes).
    """
    rank, world, local, local_world = launch_environment()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:  # this rank's GPU (srun --gpus-per-task 1 shows each task one GPU: cuda:0)
            dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))  # env:// rendezvous
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout),
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local, dev, local_world)


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def all_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def all_true(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` holds on every rank."""
    if info.world == 1:
        return flag
    device = info.device if info.device.type == "cuda" else torch.device("cpu")
    value = torch.tensor([0 if flag else 1], device=device)
    dist.all_reduce(value)
    return int(value) == 0


def gather_to_main(obj: object, info: DistInfo) -> list[object] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); None on the other ranks."""
    if info.world == 1:
        return [obj]
    parts: list[object] | None = [None] * info.world if info.main else None
    dist.gather_object(obj, parts, dst=0)
    return parts


def check_shared_folder(folder: Path, info: DistInfo) -> None:
    """Fail on every rank, clearly, when some rank does not see the files rank 0 writes into ``folder``.

    Rank 0 writes a random token there; every rank reads it back. Ranks on nodes without a shared filesystem
    would otherwise train on and checkpoint into folders of their own.
    """
    if info.world == 1:
        return
    token = secrets.token_hex(16) if info.main else None
    probe = folder / ".rank0-token"
    if info.main:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    box = [token]
    dist.broadcast_object_list(box, src=0)
    try:
        seen = probe.read_text() == box[0]
    except OSError:
        seen = False
    if not all_true(seen, info):
        blind = gather_to_main(None if seen else f"rank {info.rank} on {socket.gethostname()}", info)
        names = ", ".join(b for b in blind or [] if b) or "another rank"
        raise DistError(f"{folder}: {names} cannot see the run folder rank 0 writes; give --out on a filesystem "
                        "shared by all nodes")
    barrier(info)
    if info.main:
        probe.unlink(missing_ok=True)


def teardown() -> None:
    """Leave the process group: a rank that exits inside one can abort at shutdown (gloo's threads)."""
    if dist.is_initialized():
        dist.destroy_process_group()

