"""Learning-rate schedules as multipliers of the base LR, as functions of the (fractional) epoch."""
from __future__ import annotations

import math
from collections.abc import Callable

from ..registry import Registry
from .config import ScheduleConfig

Schedule = Callable[[float], float]
SCHEDULES: Registry[Schedule] = Registry("schedule", context=("epochs", "config"))  # settings: the schedule section


@SCHEDULES.register("paper")
def paper(epochs: int, config: ScheduleConfig) -> Schedule:
    """The original ``step_decay``: two cycles of (1, 0.1, 0.01) x lr, restarting at half the epochs,
    with ``warmup_ratio`` x lr during the first ``warmup_epochs`` epochs (original.md §4.3)."""
    half = epochs // 2
    s1, s2, s3 = int(half * 0.5), int(half * 0.8), half
    s4 = s3 + s1
    s5 = s4 + (s2 - s1)
    milestones = [s1, s2, s3, s4, s5, epochs]
    factors = [1.0, 0.1, 0.01, 1.0, 0.1, 0.01]
    if config.warmup_ratio:
        milestones = [int(config.warmup_epochs), *milestones]
        factors = [config.warmup_ratio, *factors]

    def factor(epoch: float) -> float:
        e = int(epoch)
        return next((f for m, f in zip(milestones, factors) if e < m), factors[-1])

    return factor


def _warmup(epoch: float, warmup: float) -> float:
    return min(1.0, (epoch + 1e-9) / warmup) if warmup > 0 else 1.0


@SCHEDULES.register("cosine")
def cosine(epochs: int, config: ScheduleConfig) -> Schedule:
    """Linear warm-up, then cosine decay to ``min_ratio``."""

    def factor(epoch: float) -> float:
        if epoch < config.warmup_epochs:
            return _warmup(epoch, config.warmup_epochs)
        t = min(1.0, (epoch - config.warmup_epochs) / max(epochs - config.warmup_epochs, 1e-9))
        return config.min_ratio + (1 - config.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


@SCHEDULES.register("onecycle")
def onecycle(epochs: int, config: ScheduleConfig) -> Schedule:
    """Linear warm-up, then linear decay to ``min_ratio`` at the last epoch."""

    def factor(epoch: float) -> float:
        if epoch < config.warmup_epochs:
            return _warmup(epoch, config.warmup_epochs)
        t = min(1.0, (epoch - config.warmup_epochs) / max(epochs - config.warmup_epochs, 1e-9))
        return 1 - (1 - config.min_ratio) * t

    return factor


@SCHEDULES.register("constant")
def constant(epochs: int, config: ScheduleConfig) -> Schedule:
    """The base LR after the linear warm-up."""
    return lambda epoch: _warmup(epoch, config.warmup_epochs)
