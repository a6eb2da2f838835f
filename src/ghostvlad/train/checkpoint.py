"""Training checkpoints: everything needed to continue exactly, written atomically, loaded without unpickling code."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import GhostvladError, describe
from ..fileio import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(GhostvladError):
    """A missing, corrupt or unsafe checkpoint file."""


@dataclass
class TrainState:
    """Where a run stands: checkpointed (under the key ``progress``) and returned by a run."""

    epoch: int = 0
    step: int = 0  # next step within the epoch
    global_step: int = 0
    best: float = math.inf  # best validation EER (or training loss when no trials are configured)
    loss_sum: float = 0.0  # this epoch's losses so far (kept across a resume, for the epoch's mean loss)
    loss_steps: int = 0


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, nested dicts/lists) to a temporary file, then rename."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: a checkpoint can hold data, never code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"{path}: unreadable checkpoint ({describe(exc)[:300]})") from None
