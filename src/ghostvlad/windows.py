"""Embeddings over time: one embedding per sliding window of a recording, computed in batches.

Windows of ``window`` seconds start every ``hop`` seconds; the last one ends at the end of the clip and may be
shorter. It is embedded with its true length (the batch is padded and masked, as in
:meth:`SpeakerModel.embed_waveforms`), so every row equals the embedding of that slice computed alone.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass

import numpy as np

from .audio import AudioError, load_audio
from .embedding import NON_FINITE, Embedder, length_batches, prefetch
from .errors import GhostvladError


class WindowError(GhostvladError):
    """A window or hop that is not a positive length, or too short for the front-end."""


@dataclass
class Windows:
    """Window start and end times (seconds, float64, ``(N,)``) and their unit-norm embeddings ``(N, D)``."""

    starts: np.ndarray
    ends: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def window_bounds(num_samples: int, window: int, hop: int, shortest: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``(starts, ends)`` of windows of ``window`` samples every ``hop`` samples over ``num_samples``.

    The last window stops at the end (a clip shorter than ``window`` gives one window: the whole clip). A trailing
    window shorter than ``shortest`` samples is dropped (it can only arise when ``hop >= window - shortest``).
    """
    if window < 1 or hop < 1:
        raise WindowError(f"window ({window}) and hop ({hop}) must be at least one sample")
    count = 1 + math.ceil(max(num_samples - window, 0) / hop)
    starts = np.arange(count, dtype=np.int64) * hop
    ends = np.minimum(starts + window, num_samples)
    keep = ends - starts >= min(shortest, num_samples)
    return starts[keep], ends[keep]


def embed_slices(model: Embedder, wave: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Embed ``wave[starts[i]:ends[i]]`` for every i, several slices per forward pass: ``(N, D)`` float32.

    Slices are grouped by length so that a batch stays under ``model.batch_frames`` padded frames.
    """
    batches = length_batches(np.asarray(ends) - np.asarray(starts), model.frontend_config, model.batch_frames)
    if not batches:
        raise WindowError("no slices to embed")
    out: np.ndarray | None = None
    for batch in batches:
        emb = model.embed_waveforms([wave[starts[i] : ends[i]] for i in batch])
        if out is None:
            out = np.empty((len(starts), emb.shape[1]), dtype=np.float32)
        out[batch] = emb
    return out


def window_samples(model: Embedder, window: float, hop: float) -> tuple[int, int]:
    """Window and hop (seconds) in samples; WindowError (one line) if they are not usable with the model's
    front-end."""
    for name, value in (("window", window), ("hop", hop)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise WindowError(f"{name} must be a positive number of seconds, got {value!r}")
    rate = model.frontend_config.sample_rate
    shortest = model.frontend_config.min_samples
    if round(window * rate) < shortest:
        raise WindowError(f"window {window} s is too short: the front-end needs at least {shortest} samples")
    return round(window * rate), max(1, round(hop * rate))


def embed_windows(model: Embedder, wave: np.ndarray, window: float = 2.0, hop: float = 0.5) -> Windows:
    """One embedding per ``window``-second window every ``hop`` seconds of a validated mono waveform.

    ``wave`` is at the model's sample rate (16 kHz); times in the result are in seconds.
    """
    win, step = window_samples(model, window, hop)
    shortest = model.frontend_config.min_samples
    if len(wave) < shortest:
        raise WindowError(f"clip too short for windows: {len(wave)} samples, needs at least {shortest}")
    starts, ends = window_bounds(len(wave), win, step, shortest)
    embeddings = embed_slices(model, np.asarray(wave, dtype=np.float32), starts, ends)
    rate = model.frontend_config.sample_rate
    return Windows(starts / rate, ends / rate, embeddings)


@dataclass
class WindowsResult:
    """One item of :func:`iter_windows`: the windows of a file, or the reason it failed."""

    index: int
    source: str
    windows: Windows | None = None
    error: AudioError | None = None


def iter_windows(
    model: Embedder, paths: Sequence[str | os.PathLike], window: float = 2.0, hop: float = 0.5, *, workers: int = 2
) -> Iterator[WindowsResult]:
    """Window embeddings of many files, in input order; the next files are decoded while the model runs.

    Bad files are yielded with their :class:`AudioError`; :class:`WindowError` for unusable ``window``/``hop``.
    """
    window_samples(model, window, hop)

    def load(path: str | os.PathLike) -> np.ndarray | AudioError:
        try:
            return load_audio(path, min_duration=model.min_duration)
        except AudioError as err:
            return err

    with closing(prefetch(load, paths, workers=workers, ahead=workers)) as waves:  # decode `workers` files ahead
        for index, (path, wave) in enumerate(zip(paths, waves)):
            source = str(path)
            if isinstance(wave, np.ndarray) and len(wave) < model.frontend_config.min_samples:
                wave = AudioError(source, f"too short for windows: {len(wave)} samples")
            if isinstance(wave, AudioError):
                yield WindowsResult(index, source, error=wave)
                continue
            windows = embed_windows(model, wave, window, hop)
            if np.isfinite(windows.embeddings).all():
                yield WindowsResult(index, source, windows=windows)
            else:
                yield WindowsResult(index, source, error=AudioError(source, NON_FINITE))
