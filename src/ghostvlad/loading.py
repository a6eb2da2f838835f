"""Opening a saved model: :func:`load_model` picks the loader of the file's kind from :data:`LOADERS`."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from .embedding import Embedder
from .export import load_onnx_model
from .inference import load_pytorch_model

LOADERS: dict[str, Callable[..., Embedder]] = {
    "onnx": load_onnx_model,  # an ONNX export: OnnxSpeakerModel, onnxruntime on CPU
    "pytorch": load_pytorch_model,  # a model directory, .safetensors file or run folder: SpeakerModel
}


def model_kind(path: str | os.PathLike) -> str:
    """The :data:`LOADERS` key of a saved model: ``onnx`` for a ``.onnx`` file, else ``pytorch``."""
    return "onnx" if Path(path).suffix == ".onnx" else "pytorch"


def load_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    min_duration: float = 0.5,
    mirror: bool | None = None,
    batch_frames: int = 3200,
) -> Embedder:
    """Load a saved model: a directory, ``.safetensors`` file or run folder gives a
    :class:`~ghostvlad.inference.SpeakerModel`, a ``.onnx`` file (see :mod:`ghostvlad.export`) an
    ``OnnxSpeakerModel`` that runs in onnxruntime (CPU, fp32).

    ``mirror`` overrides the stored front-end; ``min_duration`` (seconds) rejects shorter audio;
    ``batch_frames`` caps the padded spectrogram frames of one batch. Raises
    :class:`~ghostvlad.modelfile.ModelFileError`.
    """
    return LOADERS[model_kind(path)](path, device=device, precision=precision, min_duration=min_duration,
                                     mirror=mirror, batch_frames=batch_frames)
