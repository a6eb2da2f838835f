"""Optimisers by name. A factory takes the parameter groups (each with its weight decay), the learning rate and
``fused`` (one kernel per step on a GPU, which also skips the step on a device-side ``found_inf`` flag), then its
own settings."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from ..registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry(
    "optimiser", base=torch.optim.Optimizer, context=("params", "lr", "fused"))


def _fused(fused: bool) -> dict:
    return {"fused": True} if fused else {}


@OPTIMIZERS.register("adam")
def adam(params: Iterable, lr: float, fused: bool, eps: float = 1e-7) -> torch.optim.Adam:
    """Adam with coupled L2 weight decay (the paper's); eps 1e-7 as Keras."""
    return torch.optim.Adam(params, lr=lr, eps=eps, **_fused(fused))


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable, lr: float, fused: bool, eps: float = 1e-7) -> torch.optim.AdamW:
    """AdamW: Adam with decoupled weight decay."""
    return torch.optim.AdamW(params, lr=lr, eps=eps, **_fused(fused))


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable, lr: float, fused: bool, momentum: float = 0.9) -> torch.optim.SGD:
    """SGD with Nesterov momentum."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, **_fused(fused))
