"""The original front-end in PyTorch: 257-bin STFT magnitude, per-frame normalisation over frequency.

``FrontEndConfig(max_freq=4000)`` keeps only the bins up to that frequency (129 of 257 at 4 kHz) and normalises each
frame over those: a network that never sees the upper band, which many recording channels remove or replace, and
that costs about half the compute.

Everything here is batched and runs on CPU or GPU. Variable-length batches are exact: each clip is
reflect-padded at its own ends (as ``librosa.stft(center=True, pad_mode='reflect')`` does for a lone clip)
before the batch is zero-padded, and frames past a clip's end are set to 0. ``Spectrogram(config,
stft="conv")`` computes the STFT as a strided conv1d with the windowed DFT basis instead of ``torch.stft``
(within 5e-7 of it): the form :mod:`ghostvlad.export` traces, twice as fast in onnxruntime as its STFT op.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
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
    max_freq: float | None = None  # highest frequency kept, Hz (None: all n_fft / 2 + 1 bins, the original)

    def __post_init__(self) -> None:
        if self.sample_rate != 16000:
            raise ValueError(f"frontend.sample_rate {self.sample_rate}: audio is always resampled to 16000 Hz")
        if not 0 < self.hop_length <= self.win_length <= self.n_fft:
            raise ValueError(f"frontend: need 0 < hop_length ({self.hop_length}) <= win_length ({self.win_length}) "
                             f"<= n_fft ({self.n_fft})")
        if not 0 < self.eps < 1:  # also refuses NaN
            raise ValueError(f"frontend.eps {self.eps}: must be in (0, 1)")
        if self.max_freq is not None and not self.sample_rate / self.n_fft <= self.max_freq <= self.sample_rate / 2:
            raise ValueError(f"frontend.max_freq {self.max_freq}: must lie between one bin "
                             f"({self.sample_rate / self.n_fft:g} Hz) and {self.sample_rate // 2} Hz, or be null (all)")

    @property
    def n_freq(self) -> int:
        """Frequency bins of the spectrogram: ``n_fft / 2 + 1``, or those up to ``max_freq``."""
        if self.max_freq is None:
            return self.n_fft // 2 + 1
        return int(self.max_freq * self.n_fft / self.sample_rate) + 1

    def to_dict(self) -> dict:
        """The fields; ``max_freq`` only when set, so that model files and cache keys of full-band models stay those
        of earlier versions."""
        data = asdict(self)
        if self.max_freq is None:
            del data["max_freq"]
        return data

    @property
    def min_samples(self) -> int:
        """Shortest clip the front-end accepts: its reflect padding needs more than ``n_fft / 2`` samples (after
        the mirror extension, if on)."""
        return self.n_fft // 2 // (2 if self.mirror else 1) + 1

    def check_length(self, num_samples: int) -> None:
        """ValueError unless a clip of ``num_samples`` samples is long enough for the front-end."""
        if num_samples < self.min_samples:
            raise ValueError(f"clip too short for the front-end: {num_samples} samples "
                             f"(needs at least {self.min_samples})")

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


STFTS = ("torch", "conv")


class Spectrogram(nn.Module):
    """Waveforms ``(B, N)`` + lengths -> normalised magnitude spectrograms ``(B, F, T)`` + frame counts (``F``:
    ``config.n_freq``, 257 for the original).

    ``stft="torch"`` uses ``torch.stft``; ``"conv"`` a strided conv1d with the windowed DFT basis (same values
    within 5e-7, traceable for ONNX). ``forward`` has no data-dependent Python besides the length check, which
    is skipped while tracing.
    """

    def __init__(self, config: FrontEndConfig = FrontEndConfig(), *, stft: str = "torch") -> None:
        super().__init__()
        if stft not in STFTS:
            raise ValueError(f"unknown stft {stft!r}; choose one of: {', '.join(STFTS)}")
        self.config = config
        self.stft = stft
        self.register_buffer("window", torch.hann_window(config.win_length, periodic=True), persistent=False)
        # samples each frame reads, and reflect padding in front of sample 0 (torch.stft centres the window in
        # its n_fft frame; the conv reads only the win_length samples under the window)
        self._frame, self._pad = config.n_fft, config.n_fft // 2
        if stft == "conv":
            offset = (config.n_fft - config.win_length) // 2
            self._frame, self._pad = config.win_length, config.n_fft // 2 - offset
            taps = torch.arange(config.win_length, dtype=torch.float64) + offset
            angle = 2 * torch.pi * torch.arange(config.n_freq, dtype=torch.float64)[:, None] * taps / config.n_fft
            window = torch.hann_window(config.win_length, periodic=True, dtype=torch.float64)
            basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window  # (2 * n_freq, win_length)
            self.register_buffer("basis", basis.float()[:, None, :], persistent=False)

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Features of a zero-padded batch; ``lengths`` None means every clip fills the batch's width."""
        cfg = self.config
        wave = wave.float()
        batch, total = wave.shape
        if lengths is None:  # equal lengths (training crops): no device-to-host sync in this call
            lengths = torch.full((batch,), total, dtype=torch.long, device=wave.device)
            self.config.check_length(total)
        else:
            if not torch.jit.is_tracing():  # one sync, free when ``lengths`` is on the CPU
                self.config.check_length(int(lengths.min()))
            lengths = lengths.to(device=wave.device, dtype=torch.long)
        scale = 2 if cfg.mirror else 1
        index, valid = _source_index(lengths, scale * total + 2 * self._pad, self._pad, cfg.mirror)
        feats = self._normalised(wave.gather(1, index.clamp(max=total - 1)) * valid)
        frames = 1 + scale * lengths // cfg.hop_length
        mask = torch.arange(feats.shape[-1], device=wave.device)[None, :] < frames[:, None]
        return feats * mask[:, None, :], frames

    def _normalised(self, padded: Tensor) -> Tensor:
        """Normalised magnitude spectra ``(B, F, frames)`` of reflect-padded waveforms ``(B, samples)``."""
        cfg = self.config
        if self.stft == "conv":
            parts = F.conv1d(padded[:, None, :], self.basis, stride=cfg.hop_length)
            real, imag = parts[:, : cfg.n_freq], parts[:, cfg.n_freq :]
            spec = torch.sqrt(real * real + imag * imag)
        else:
            spec = torch.stft(
                padded,
                n_fft=cfg.n_fft,
                hop_length=cfg.hop_length,
                win_length=cfg.win_length,
                window=self.window,
                center=False,
                return_complex=True,
            )[:, : cfg.n_freq].abs()
        mean = spec.mean(dim=1, keepdim=True)
        std = spec.std(dim=1, keepdim=True, unbiased=False)
        return (spec - mean) / (std + cfg.eps)

    def span(self, wave: Tensor, length: int, first: int, count: int, offset: int = 0) -> Tensor:
        """Frames ``[first, first + count)`` of one clip of ``length`` samples: ``(1, F, count)``.

        Equal to those columns of ``forward`` on the whole clip; frames before 0 or past the clip's last are
        zero (``first`` may be negative). ``wave`` (1-D) holds the clip's samples ``[offset, offset + len(wave))``,
        which must include every sample the frames read. Work and memory scale with ``count``, not ``length``.
        """
        cfg = self.config
        frames = self.config.num_frames(length)
        lo, hi = max(first, 0), min(first + count, frames)
        out = torch.zeros(1, cfg.n_freq, count, device=self.window.device)
        if hi > lo:
            width = (hi - lo - 1) * cfg.hop_length + self._frame
            lengths = torch.tensor([length], device=wave.device)
            index, valid = _source_index(lengths, width, self._pad, cfg.mirror, lo * cfg.hop_length)
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
