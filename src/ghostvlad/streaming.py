"""Streaming embeddings: the running embedding of live audio, equal to the offline embedding of all of it so far.

Audio is pushed in pieces of any size. Output steps of the backbone whose reach in time
(:attr:`~ghostvlad.models.backbones.ThinResNet.time_context`) lies inside the final spectrogram frames (those
whose STFT window does not reach the reflect padding at the current end) never change again: their pooling
statistics are committed to running sums and their samples dropped. The last steps depend on the end of the
audio so far; :meth:`EmbeddingStream.embedding` recomputes them provisionally from a bounded tail and merges
them with the committed sums. The work of a push or an update grows with the audio it adds, never with the
stream's length. A stride-2 stem (``resnet34l``) pads by the parity of the frame count, so its stream keeps one
set of sums per parity.

Streaming is causal, so the mirror ("wav + reversed wav") extension is off: the embedding equals that of a
model with ``mirror=False``.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from .audio import SILENCE_PEAK, AudioError, check_finite, pcm_to_float
from .chunked import merge, span_statistics, steps_per_chunk
from .features import FrontEndConfig, Spectrogram
from .models import SpeakerEncoder
from .models.pooling import Stats

SOURCE = "<stream>"


def pcm16_samples(data: bytes, source: str = SOURCE) -> np.ndarray:
    """Raw little-endian 16-bit PCM bytes -> float32 samples in [-1, 1]; AudioError for an odd byte count."""
    if len(data) % 2:
        raise AudioError(source, f"odd number of bytes ({len(data)}): 16-bit PCM has 2 bytes per sample")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768


class EmbeddingStream:
    """The running embedding of a live 16 kHz mono stream (see the module docstring); from ``model.stream()``.

    ``push(samples)`` adds audio; ``embedding()`` is the unit-norm embedding of everything pushed since the
    start or the last ``reset()``, or None while that is shorter than the model's ``min_duration`` or silent.
    One stream serves one caller at a time; streams of one model may run in parallel threads.

    ``encoder`` runs on ``device`` inside ``autocast()``; ``chunk_frames`` bounds the frames of one backbone run.
    """

    def __init__(
        self,
        encoder: SpeakerEncoder,
        frontend: FrontEndConfig,
        *,
        device: torch.device | str = "cpu",
        chunk_frames: int = 3200,
        min_duration: float = 0.5,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        config = FrontEndConfig(**{**frontend.to_dict(), "mirror": False})
        self._frontend = Spectrogram(config).to(device)
        self._network = encoder
        self._min_duration = min_duration
        self._autocast = autocast
        backbone = self._network.backbone
        self._stride, self._context = backbone.time_stride, backbone.time_context
        self._step = steps_per_chunk(self._network, chunk_frames)
        self._phases = (0, 1) if backbone.spec.stem_stride > 1 else (0,)
        self.reset()

    def reset(self) -> None:
        """Forget all audio: the next push starts a new stream."""
        self._buffer = np.zeros(0, np.float32)  # samples [self._offset, self._samples) of the stream
        self._offset = 0
        self._samples = 0
        self._peak = 0.0
        self._committed = 0  # output steps whose statistics are in self._sums
        self._sums: dict[int, Stats | None] = dict.fromkeys(self._phases)

    @property
    def duration(self) -> float:
        """Seconds of audio pushed since the start or the last reset."""
        return self._samples / self._frontend.config.sample_rate

    def push(self, samples: np.ndarray) -> None:
        """Append 16 kHz mono samples: float (any size, including 0), or integer PCM (scaled to [-1, 1]).

        Raises :class:`~ghostvlad.audio.AudioError` (and keeps the stream as it was) for anything else or for
        NaN/inf samples.
        """
        x = np.asarray(samples)
        if x.ndim != 1 or x.dtype.kind not in "fiu":
            raise AudioError(SOURCE, f"expected a 1-D array of samples, got shape {x.shape} and dtype {x.dtype}")
        x = pcm_to_float(x)
        check_finite(x, SOURCE)
        if not x.size:
            return
        self._buffer = np.concatenate([self._buffer, x])
        self._samples += x.size
        self._peak = max(self._peak, float(x.max()), float(-x.min()))
        with torch.inference_mode():
            while self._final_steps() - self._committed >= self._step:  # long pushes: commit chunk by chunk
                self._commit(self._committed + self._step)

    def embedding(self) -> np.ndarray | None:
        """Unit-norm embedding ``(embed_dim,)`` float32 of all audio so far, or None (see the class)."""
        cfg = self._frontend.config
        if (self._samples < cfg.min_samples or self.duration < self._min_duration
                or self._peak < SILENCE_PEAK):
            return None
        with torch.inference_mode():
            frames = cfg.num_frames(self._samples)
            final = self._final_steps()
            phase = self._phase(frames)
            if final > self._committed:
                for p in self._phases:
                    if p != phase:
                        self._sums[p] = merge(self._network, self._sums[p], self._run(final, p)[0])
            n_out = int(self._network.backbone.out_lengths(torch.tensor([frames])))
            stops = [final] if final > self._committed else []  # (committed <= final <= n_out)
            if n_out > final:
                stops.append(n_out)
            parts = self._statistics(tuple(stops), frames) if stops else []
            stats = self._sums[phase]
            if final > self._committed:
                stats = self._sums[phase] = merge(self._network, stats, parts.pop(0))
                self._advance(final)
            if parts:  # the provisional tail
                stats = merge(self._network, stats, parts[0])
            emb = self._network.embed_statistics(stats)
        return torch.nn.functional.normalize(emb.float(), dim=-1)[0].cpu().numpy()

    # -- internals -------------------------------------------------------------------------------------
    def _final_steps(self) -> int:
        """Output steps that no later audio can change: their reach ends in frames clear of the end padding."""
        cfg = self._frontend.config
        if self._samples < cfg.n_fft // 2:
            return 0
        final_frames = (self._samples - cfg.n_fft // 2) // cfg.hop_length + 1
        return max(0, (final_frames - self._context) // self._stride)

    def _phase(self, frames: int) -> int:
        return frames % 2 if len(self._phases) > 1 else 0

    def _statistics(self, stops: tuple[int, ...], total: int) -> list[Stats]:
        return span_statistics(self._frontend, self._network, torch.from_numpy(self._buffer), self._samples,
                               self._committed, stops, offset=self._offset, total_frames=total,
                               autocast=self._autocast())

    def _run(self, stop: int, phase: int) -> list[Stats]:
        """Statistics of the final steps ``[committed, stop)`` as seen with a frame count of parity ``phase``
        (for final steps the count matters only through a stride-2 stem's offset)."""
        frames = self._frontend.config.num_frames(self._samples)
        return self._statistics((stop,), frames if self._phase(frames) == phase else frames + 1)

    def _commit(self, stop: int) -> None:
        for p in self._phases:
            self._sums[p] = merge(self._network, self._sums[p], self._run(stop, p)[0])
        self._advance(stop)

    def _advance(self, committed: int) -> None:
        """Mark steps before ``committed`` as done and drop the samples no later step needs."""
        cfg = self._frontend.config
        self._committed = committed
        first_frame = max(0, self._stride * committed - self._context)
        keep = max(0, first_frame * cfg.hop_length - cfg.n_fft // 2)
        if keep > self._offset:
            self._buffer = self._buffer[keep - self._offset :]
            self._offset = keep
