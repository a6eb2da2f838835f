"""Numeric precisions by name (``fp32``, ``bf16``, ``fp16``): the autocast dtype and where each may run; used by
inference and training alike. ``auto`` (:func:`resolve_precision`) takes bf16 where the device computes it natively;
elsewhere training takes fp16 on a GPU and fp32 on a CPU, and embedding fp32."""
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


AUTO = "auto"


def get_precision(name: str) -> Precision:
    """The precision called ``name`` (:class:`ConfigError` naming the choices for an unknown one)."""
    return PRECISIONS.build(name)


def check_training_precision(name: str) -> None:
    """:class:`ConfigError` unless ``name`` is a precision or ``auto``."""
    if name != AUTO:
        try:
            PRECISIONS.get(name)
        except ConfigError as exc:
            raise ConfigError(f"{exc}, or {AUTO} (bf16 where the device computes it natively)") from None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a GPU with bf16 arithmetic, or a CPU for which oneDNN has bf16
    kernels (AVX-512 or AMX, e.g. AMD Zen 4). Elsewhere PyTorch emulates it: on an AMD Zen 3 (AVX2) a training step
    of the demo network took 7 times as long in bf16 as in fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN's check: assume emulation
            return False
    return False


def resolve_precision(name: str, device: torch.device, training: bool = True) -> Precision:
    """The precision ``name`` on ``device``. ``auto`` for training: bf16 where the device computes it natively, else
    fp16 (with its gradient scaler) on a GPU and fp32 on a CPU; for embedding: bf16 on a GPU that computes it
    natively, else fp32 (on a CPU, fp32 keeps the embeddings and their cache keys the same on every machine)."""
    if name == AUTO:
        gpu = device.type == "cuda"
        if native_bf16(device) and (training or gpu):
            name = "bf16"
        else:
            name = "fp16" if training and gpu else "fp32"
    return get_precision(name)
