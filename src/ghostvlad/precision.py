"""Numeric precisions by name (``fp32``, ``bf16``, ``fp16``): the autocast dtype and where each may run; used by
inference and training alike."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .registry import Registry
from .schema import ConfigError


@dataclass(frozen=True)
class Precision:
    """A precision: ``dtype`` of autocast (None: plain fp32); ``gpu_only`` for training where the CPU has no fast
    kernels; ``scaled`` when training needs a gradient scaler (fp16's narrow range)."""

    name: str
    dtype: torch.dtype | None
    gpu_only: bool = False
    scaled: bool = False

    def autocast(self, device_type: str) -> AbstractContextManager:
        """The context that runs a forward pass in this precision on ``device_type``."""
        return nullcontext() if self.dtype is None else torch.autocast(device_type, dtype=self.dtype)

    def check_device(self, device_type: str) -> None:
        """:class:`ConfigError` where this precision cannot run (fp16 training on a CPU)."""
        if self.gpu_only and device_type != "cuda":
            raise ConfigError(f"{self.name} mixed precision needs a GPU; use bf16 on CPU")


PRECISIONS: Registry[Precision] = Registry("precision", base=Precision)


@PRECISIONS.register("fp32")
def fp32() -> Precision:
    """Full precision, no autocast."""
    return Precision("fp32", None)


@PRECISIONS.register("bf16")
def bf16() -> Precision:
    """bfloat16 autocast (CPU or GPU); reductions and heads stay fp32."""
    return Precision("bf16", torch.bfloat16)


@PRECISIONS.register("fp16")
def fp16() -> Precision:
    """float16 autocast; for training only on a GPU (with a gradient scaler)."""
    return Precision("fp16", torch.float16, gpu_only=True, scaled=True)


def get_precision(name: str) -> Precision:
    """The precision called ``name`` (:class:`ConfigError` naming the choices for an unknown one)."""
    return PRECISIONS.build(name)
