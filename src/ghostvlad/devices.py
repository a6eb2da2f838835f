"""Device names: check a ``--device`` value against the devices this machine has, before any work."""
from __future__ import annotations

import torch

from .errors import GhostvladError


class DeviceError(GhostvladError):
    """A device name that is malformed or names a device this machine does not have."""


def available_devices() -> list[str]:
    """``cpu``, then each visible GPU (``cuda:0`` ...), then ``mps`` where PyTorch offers it."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device) -> torch.device:
    """``torch.device(name)`` if this machine has it; else :class:`DeviceError` listing the devices it has."""
    available = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {str(name)!r}; available: {', '.join(available)}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda" and device.index is None and len(available) > 1 and available[1].startswith("cuda"):
        return device
    if str(device) in available:
        return device
    raise DeviceError(f"device {str(name)!r} is not available on this machine; available: {', '.join(available)}")
