"""Exponential moving average (EMA) of the encoder's weights and BatchNorm statistics: with ``train.ema`` set, the
model a run validates and exports is the average, not the last step's weights (Polyak averaging; the decay warms
up as ``min(ema, (1 + n) / (10 + n))`` after ``n`` updates, so the random initial weights fade out at once)."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

WARMUP = 10  # the decay after n updates is at most (1 + n) / (WARMUP + n)


class WeightAverage:
    """An averaged copy of ``module`` (same device and layout); :meth:`update` after every optimiser step.

    The decay of each update is computed on the host from the update count: no device sync.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay of the update that follows ``updates`` earlier ones."""
        return min(self.decay, (1 + updates) / (WARMUP + updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards ``module``'s current weights and buffers (integer buffers are copied)."""
        weight = 1.0 - self.decay_at(self.updates)
        ours = [*self.module.parameters(), *self.module.buffers()]
        theirs = [t.detach() for t in (*module.parameters(), *module.buffers())]
        floats = [(a, b) for a, b in zip(ours, theirs, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], weight)  # (as torch.optim.swa_utils)
        for a, b in zip(ours, theirs, strict=True):
            if not a.is_floating_point():
                a.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
