"""The PyTorch model: :class:`SpeakerModel` (an :class:`~ghostvlad.embedding.Embedder`) and :func:`load_model`,
which opens any saved model (directory, ``.safetensors``, run folder or ``.onnx``)."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch

from .allocator import keep_freed_memory
from .chunked import embed_chunked, steps_per_chunk
from .devices import resolve_device
from .embedding import Embedder, pad_batch
from .errors import describe
from .features import FrontEndConfig, Spectrogram
from .modelfile import ModelFileError, read_model, write_model
from .models import EncoderConfig, SpeakerEncoder, stack
from .precision import get_precision
from .schema import ConfigError, checked, convert, differences
from .streaming import EmbeddingStream


class SpeakerModel(Embedder):
    """A speaker encoder with its front-end, ready to embed audio.

    ``embed`` / ``embed_batch`` accept file paths or mono float waveforms (``sample_rate`` resamples arrays
    that are not 16 kHz). Batches are bucketed by length and padded; masking keeps each embedding equal to
    the one computed alone. Clips longer than ``chunk_frames`` spectrogram frames are embedded chunk by chunk
    (:mod:`ghostvlad.chunked`: same result, memory bounded by the chunk); :meth:`stream` embeds live audio.
    """

    def __init__(
        self,
        encoder: SpeakerEncoder,
        frontend: FrontEndConfig = FrontEndConfig(),
        *,
        threshold: float | None = None,
        info: dict | None = None,
        calibration: dict | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        min_duration: float = 0.5,
        batch_frames: int = 3200,
        chunk_frames: int = 3200,
        channels_last: bool = True,
    ) -> None:
        self._precision = get_precision(precision)  # ConfigError naming the choices for an unknown name
        if encoder.freq_bins != frontend.n_freq:
            raise ValueError(f"the encoder reads {encoder.freq_bins} frequency bins, the front-end gives "
                             f"{frontend.n_freq} (frontend.max_freq {frontend.max_freq})")
        steps_per_chunk(encoder, chunk_frames)  # ValueError if too small for the backbone
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            keep_freed_memory()  # what the CLI used to re-exec under glibc tunables for (see .allocator)
        self.saved_encoder = encoder.eval()  # the weights as saved (written by save, hashed by cache_key)
        self.fused_encoder = encoder.fused().to(self.device)  # what runs: BatchNorm folded into the convs
        if channels_last:
            self.fused_encoder = self.fused_encoder.to(memory_format=torch.channels_last)
        self.frontend = Spectrogram(frontend).to(self.device)
        self.threshold = threshold
        self.info = dict(info or {})
        self.calibration = calibration  # score -> LLR map and operating points, see scoring.calibration
        self.precision = precision
        self.min_duration = min_duration
        self.batch_frames = batch_frames
        self.chunk_frames = chunk_frames

    # -- configuration -------------------------------------------------------------------------------
    @property
    def config(self) -> EncoderConfig:
        return self.saved_encoder.config

    @property
    def frontend_config(self) -> FrontEndConfig:
        return self.frontend.config

    def _hash_weights(self, digest: hashlib._Hash) -> None:
        for name, tensor in sorted(self.saved_encoder.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy())

    def to_config(self) -> dict:
        return {
            "encoder": self.config.to_dict(),
            "frontend": self.frontend.config.to_dict(),
            "threshold": self.threshold,
            "info": self.info,
            "calibration": self.calibration,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (directory, or one ``.safetensors`` file)."""
        return write_model(path, self.to_config(), self.saved_encoder.state_dict())

    # -- embedding -----------------------------------------------------------------------------------
    def autocast(self) -> AbstractContextManager:
        """The context the forward pass runs in: autocast to ``precision`` (nothing for fp32)."""
        return self._precision.autocast(self.device.type)

    @torch.inference_mode()
    def embed_waveforms(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Embed validated 16 kHz mono waveforms: ``(N, embed_dim)`` float32. Clips of at most ``chunk_frames``
        frames run as one padded batch, longer ones chunk by chunk."""
        long = [self.frontend_config.num_frames(len(w)) > self.chunk_frames for w in waves]
        out = np.empty((len(waves), self.embed_dim), dtype=np.float32)
        short = [i for i, is_long in enumerate(long) if not is_long]
        if short:
            batch, lengths = (torch.from_numpy(a).to(self.device) for a in pad_batch([waves[i] for i in short]))
            feats, frames = self.frontend(batch, lengths)
            if bool((frames == frames[0]).all()):
                frames = None  # equal lengths: no masking needed
            with self.autocast():
                emb = self.fused_encoder.embed(feats, frames)
            out[short] = torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()
        for i in (i for i, is_long in enumerate(long) if is_long):
            wave = torch.from_numpy(np.ascontiguousarray(waves[i], dtype=np.float32))  # no copy of a valid clip
            emb = embed_chunked(self.frontend, self.fused_encoder, wave, self.chunk_frames,
                                autocast=self.autocast())
            out[i] = torch.nn.functional.normalize(emb.float(), dim=-1)[0].cpu().numpy()
        return out

    def stream(self) -> EmbeddingStream:
        """A streaming embedder of live 16 kHz mono audio: ``push(samples)``, ``embedding()``, ``reset()``.

        ``embedding()`` equals the offline embedding of all audio pushed so far with the mirror extension off
        (streaming is causal); see :class:`~ghostvlad.streaming.EmbeddingStream`.
        """
        return EmbeddingStream(self.fused_encoder, self.frontend_config, device=self.device,
                               chunk_frames=self.chunk_frames, min_duration=self.min_duration,
                               autocast=self.autocast)


def ensemble(models: Sequence[SpeakerModel]) -> SpeakerModel:
    """One model holding ``models`` as its branches (:func:`ghostvlad.models.stack`): its cosine scores are the
    means of theirs. They must share the network per branch and the front-end (:class:`ModelFileError`); the
    ensemble has no threshold or calibration of its own (calibrate it), and its ``info`` lists its members'."""
    if len(models) < 2 or not all(isinstance(m, SpeakerModel) for m in models):
        raise ModelFileError("ensemble: give two or more PyTorch models (ONNX and TorchScript files cannot be stacked)")
    base = models[0]
    for i, m in enumerate(models[1:], 2):
        if m.frontend_config != base.frontend_config:
            raise ModelFileError(f"ensemble: model {i}'s front-end differs from model 1's: "
                                 f"{differences(base.frontend_config.to_dict(), m.frontend_config.to_dict())}")
    try:
        encoder = stack([m.saved_encoder for m in models])
    except ConfigError as exc:
        raise ModelFileError(f"ensemble: {exc}") from None
    return SpeakerModel(encoder, base.frontend_config, info={"ensemble": [m.info for m in models]},
                        device=base.device, precision=base.precision, min_duration=base.min_duration,
                        batch_frames=base.batch_frames, chunk_frames=base.chunk_frames)


def load_pytorch_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device,
    precision: str,
    min_duration: float,
    mirror: bool | None,
    batch_frames: int,
) -> SpeakerModel:
    """A :class:`SpeakerModel` from a model directory, ``.safetensors`` file or run folder (see
    :func:`ghostvlad.loading.load_model` for the arguments). Raises :class:`ModelFileError`."""
    config, state = read_model(path)
    try:
        frontend = FrontEndConfig(**checked(FrontEndConfig, config.get("frontend", {}), "frontend"))
        encoder = SpeakerEncoder(EncoderConfig.from_dict(config["encoder"]), frontend.n_freq)
        threshold = config.get("threshold")
        if threshold is not None and not convert(threshold, float)[0]:
            raise ValueError(f"threshold: expected a finite number or null, got {threshold!r}")
        for key in ("info", "calibration"):
            if not isinstance(config.get(key) or {}, dict):
                raise ValueError(f"{key}: expected an object, got {config[key]!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: bad model config ({describe(exc)})") from None
    expected = encoder.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k} has shape {tuple(v.shape)}, config needs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelFileError(f"{path}: weights do not match the config: {'; '.join(problems[:3])}{more}")
    encoder.load_state_dict(state)
    if mirror is not None:
        frontend = FrontEndConfig(**{**frontend.to_dict(), "mirror": mirror})
    return SpeakerModel(
        encoder,
        frontend,
        threshold=threshold,
        info=config.get("info"),
        calibration=config.get("calibration"),
        device=device,
        precision=precision,
        min_duration=min_duration,
        batch_frames=batch_frames,
    )
