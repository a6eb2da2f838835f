"""The original front-end in PyTorch: 257-bin STFT magnitude, per-frame normalisation over frequency.

Everything here is batched and runs on CPU or GPU. Variable-length batches are exact: each clip is
reflect-padded at its own ends (as ``librosa.stft(center=True, pad_mode='reflect')`` does for a lone clip)
before the batch is zero-padded, and frames past a clip's end are set to 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class FrontEndConfig:
    """Parameters of the spectrogram front-end (defaults: the original system)."""

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    eps: float = 1e-5
    mirror: bool = False  # evaluation-time "wav + reversed wav" extension of the original

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict:
        return asdict(self)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a clip of ``num_samples`` samples (after the mirror extension, if on)."""
        n = 2 * num_samples if self.mirror else num_samples
        return 1 + n // self.hop_length


def _source_index(lengths: Tensor, width: int, pad: int, mirror: bool, start: int = 0) -> tuple[Tensor, Tensor]:
    """Index into each padded waveform for every sample of its mirrored, reflect-padded version.

    Returns ``(index (B, width), valid (B, width) bool)`` for the samples ``[start, start + width)`` of the
    mirrored, reflect-padded clips (``start = 0``, ``width`` covering the longest clip: all of them).
    """
    n = lengths[:, None]
    ext = 2 * n if mirror else n
    p = torch.arange(start, start + width, device=lengths.device)[None, :]  # position in the padded clip
    q = p - pad  # position in the extended clip
    q = torch.where(q < 0, -q, q)  # reflect at the start
    q = torch.where(q >= ext, 2 * (ext - 1) - q, q)  # reflect at the end
    valid = (q >= 0) & (p < ext + 2 * pad)
    if mirror:
        q = torch.where(q >= n, 2 * n - 1 - q, q)
    return q.clamp(min=0), valid


class Spectrogram(nn.Module):
    """Waveforms ``(B, N)`` + lengths -> normalised magnitude spectrograms ``(B, 257, T)`` + frame counts."""

    def __init__(self, config: FrontEndConfig = FrontEndConfig()) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_length, periodic=True), persistent=False)

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        cfg = self.config
        wave = wave.float()
        batch, total = wave.shape
        if lengths is None:
            lengths = torch.full((batch,), total, dtype=torch.long, device=wave.device)
        lengths = lengths.to(device=wave.device, dtype=torch.long)
        pad = cfg.n_fft // 2
        ext = 2 * lengths if cfg.mirror else lengths
        if int(ext.min()) <= pad:
            raise ValueError(f"clip too short for the front-end: {int(lengths.min())} samples (needs > {pad})")
        width = int(ext.max()) + 2 * pad
        index, valid = _source_index(lengths, width, pad, cfg.mirror)
        feats = self._normalised(wave.gather(1, index.clamp(max=total - 1)) * valid)
        frames = 1 + ext // cfg.hop_length
        mask = torch.arange(feats.shape[-1], device=wave.device)[None, :] < frames[:, None]
        return feats * mask[:, None, :], frames

    def _normalised(self, padded: Tensor) -> Tensor:
        """Normalised magnitude spectra ``(B, 257, frames)`` of reflect-padded waveforms ``(B, samples)``."""
        cfg = self.config
        spec = torch.stft(
            padded,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window,
            center=False,
            return_complex=True,
        ).abs()
        mean = spec.mean(dim=1, keepdim=True)
        std = spec.std(dim=1, keepdim=True, unbiased=False)
        return (spec - mean) / (std + cfg.eps)

    def span(self, wave: Tensor, length: int, first: int, count: int, offset: int = 0) -> Tensor:
        """Frames ``[first, first + count)`` of one clip of ``length`` samples: ``(1, 257, count)``.

        Equal to those columns of ``forward`` on the whole clip; frames before 0 or past the clip's last are
        zero (``first`` may be negative). ``wave`` (1-D) holds the clip's samples ``[offset, offset + len(wave))``,
        which must include every sample the frames read. Work and memory scale with ``count``, not ``length``.
        """
        cfg = self.config
        pad = cfg.n_fft // 2
        frames = self.config.num_frames(length)
        lo, hi = max(first, 0), min(first + count, frames)
        out = torch.zeros(1, cfg.n_freq, count, device=self.window.device)
        if hi > lo:
            width = (hi - lo - 1) * cfg.hop_length + cfg.n_fft
            lengths = torch.tensor([length], device=wave.device)
            index, valid = _source_index(lengths, width, pad, cfg.mirror, lo * cfg.hop_length)
            index = index - offset
            if bool((index[valid] < 0).any() or (index[valid] >= len(wave)).any()):
                raise ValueError(f"samples [{offset}, {offset + len(wave)}) do not cover frames [{lo}, {hi})")
            padded = wave.float()[index.clamp(0, len(wave) - 1)] * valid
            out[..., lo - first : hi - first] = self._normalised(padded.to(self.window.device))
        return out


def train_crop(
    wave: np.ndarray,
    rng: np.random.Generator,
    frames: int = 250,
    hop_length: int = 160,
    reverse_prob: float = 0.3,
) -> np.ndarray:
    """The original training crop, on raw samples.

    The clip is doubled (``concat(y, y)``), time-reversed with probability ``reverse_prob``, and a random
    window of ``(frames - 1) * hop_length`` samples is cut at a frame boundary, so the (centred) front-end
    yields exactly ``frames`` frames. Short clips are zero-padded on the right.
    """
    doubled = np.concatenate([wave, wave])
    if rng.random() < reverse_prob:
        doubled = doubled[::-1]
    size = (frames - 1) * hop_length
    total_frames = 1 + len(doubled) // hop_length
    if total_frames > frames:
        start = int(rng.integers(0, total_frames - frames)) * hop_length
        return np.ascontiguousarray(doubled[start : start + size], dtype=np.float32)
    out = np.zeros(size, dtype=np.float32)
    out[: min(size, len(doubled))] = doubled[:size]
    return out
