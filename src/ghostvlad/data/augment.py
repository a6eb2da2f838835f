"""Training-crop augmentation with MUSAN noise / music / babble and room impulse responses.

Deterministic from the generator it is given (the datasets pass one seeded by ``(seed, epoch, utterance)``),
so augmented batches, like the crops, do not depend on worker processes and replay exactly on resume.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve

from ..audio import SAMPLE_RATE, AudioError, load_audio

# SNR ranges (dB) per MUSAN category, as used by the VoxCeleb recipes of Kaldi and its successors
SNR_DB = {"noise": (0.0, 15.0), "music": (5.0, 15.0), "speech": (13.0, 20.0)}
AUDIO_SUFFIXES = (".wav", ".flac")


def _audio_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)


def _segment(path: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``size``-sample stretch of a file (tiled when the file is shorter), read partially at 16 kHz."""
    info = sf.info(path)
    if info.samplerate == SAMPLE_RATE and info.frames > size:
        start = int(rng.integers(0, info.frames - size))
        wave, _ = sf.read(path, start=start, frames=size, dtype="float32", always_2d=True)
        return wave.mean(axis=1)
    wave = load_audio(path, min_duration=0.0)
    return np.resize(wave, size)


@dataclass
class Augmenter:
    """With probability ``prob`` a crop gets one of: reverberation, or noise/music/babble at a random SNR."""

    musan: dict[str, list[str]] = field(default_factory=dict)  # category -> files
    rirs: list[str] = field(default_factory=list)
    prob: float = 0.6

    @classmethod
    def from_dirs(cls, musan: str | os.PathLike | None, rir: str | os.PathLike | None, prob: float) -> Augmenter | None:
        """``None`` when neither folder is given; a clear error when a given folder holds no audio."""
        if musan is None and rir is None:
            return None
        aug = cls(prob=prob)
        if musan is not None:
            root = Path(musan)
            aug.musan = {c: files for c in SNR_DB if (files := _audio_files(root / c))}
            if not aug.musan:
                raise ValueError(f"{root}: no audio under noise/, music/ or speech/ (expected the MUSAN layout)")
        if rir is not None:
            aug.rirs = _audio_files(Path(rir))
            if not aug.rirs:
                raise ValueError(f"{rir}: no .wav/.flac room impulse responses found")
        return aug

    def __call__(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return crop
        kinds = [*self.musan, *(["reverb"] if self.rirs else [])]
        kind = kinds[int(rng.integers(len(kinds)))]
        try:
            if kind == "reverb":
                return self._reverb(crop, rng)
            return self._add(crop, kind, rng)
        except (AudioError, sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"augmentation {kind}", str(exc)) from exc

    def _reverb(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rir = load_audio(self.rirs[int(rng.integers(len(self.rirs)))], min_duration=0.0)
        rir = rir / np.sqrt(np.sum(rir**2) + 1e-12)
        return fftconvolve(crop, rir)[: len(crop)].astype(np.float32)

    def _add(self, crop: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
        files = self.musan[kind]
        noise = _segment(files[int(rng.integers(len(files)))], len(crop), rng)
        snr = rng.uniform(*SNR_DB[kind])
        speech_power = np.mean(crop**2) + 1e-12
        noise_power = np.mean(noise**2) + 1e-12
        return (crop + noise * np.sqrt(speech_power / (noise_power * 10 ** (snr / 10)))).astype(np.float32)
