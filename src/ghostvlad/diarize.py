"""Baseline speaker diarization: who spoke when, from one recording, written as RTTM.

1. **Speech activity** (:func:`speech_frames`): log-energy of 25 ms frames every 10 ms against an adaptive
   threshold placed ``threshold`` of the way from the noise floor (10th percentile of the frame energies) to the
   speech level (95th percentile); the decisions are median-smoothed, pauses shorter than ``min_silence`` are
   bridged and bursts shorter than ``min_speech`` dropped. A recording whose energy spread is under
   ``min_range_db`` has no detectable pauses and is all speech.
2. **Embeddings**: windows (default 2 s every 0.5 s) inside each speech region, embedded in batches
   (:mod:`ghostvlad.windows`); a window never spans a pause. All windows have the same length (the last one of a
   region ends at the region's end), except for a region shorter than a window, which is one window.
3. **Clustering** (:func:`cluster`): spectral clustering (scikit-learn) of a graph that links each window to its
   ``p >= 2`` most cosine-similar windows, ``p`` chosen as the one that makes the eigengap of the graph Laplacian
   most pronounced relative to the spectrum (the normalised maximum eigengap, NME, of Park et al., "Auto-tuning
   spectral clustering for speaker diarization using normalized maximum eigengap", IEEE SPL 2019). The number of
   speakers, when not given, comes from the model's same-speaker ``threshold`` when there is one
   (:func:`count_speakers`: clusters whose mean embeddings score above it are merged, as identification scores a
   query against enrolled speaker means; clusters holding under ``min_share`` of the windows are not counted), and
   otherwise from the position of the largest NME eigengap. On the demo corpus, whose speakers change channel
   between recording sessions, the eigengap tends to count sessions rather than speakers (README, diarization).
4. **Segments**: each speech frame takes the cluster of most of the windows covering it (a tie goes to the
   window whose centre is nearest); runs of one cluster become segments, speakers named in order of appearance.

Limits of this baseline: one speaker at a time (overlapped speech goes to one of them); the eigengap needs a few
dozen windows per speaker and is unreliable on very short recordings (give ``speakers`` there); above
``max_points`` windows (about 12 minutes at the default hop) clustering runs on an evenly spaced subset.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
import scipy.ndimage
from sklearn.cluster import SpectralClustering
from threadpoolctl import threadpool_limits

from .audio import SAMPLE_RATE
from .errors import GhostvladError
from .fileio import atomic_write_text
from .scoring.vectors import unit_rows
from .windows import embed_slices, window_bounds, window_samples

if TYPE_CHECKING:
    from .embedding import Embedder

__all__ = [
    "DiarizeError", "Segment", "VadConfig", "cluster", "count_speakers", "diarize", "speech_frames", "speech_regions",
    "write_rttm",
]


class DiarizeError(GhostvladError):
    """Bad diarization settings (speaker counts, VAD parameters, an RTTM file id)."""


@dataclass(frozen=True)
class VadConfig:
    """Energy-based speech detection (times in seconds)."""

    frame: float = 0.025
    hop: float = 0.010
    threshold: float = 0.4  # fraction of the way from the noise floor to the speech level, in dB
    floor_percentile: float = 10.0
    speech_percentile: float = 95.0
    min_range_db: float = 10.0  # below this floor-to-speech spread, everything is speech
    smooth: float = 0.1  # median filter over the frame decisions
    min_speech: float = 0.3
    min_silence: float = 0.3

    def __post_init__(self) -> None:
        checks = (
            (0 < self.hop <= self.frame, f"need 0 < hop ({self.hop}) <= frame ({self.frame})"),
            (0 < self.threshold < 1, f"threshold {self.threshold} must be in (0, 1)"),
            (0 <= self.floor_percentile < self.speech_percentile <= 100,
             f"need 0 <= floor_percentile ({self.floor_percentile}) < speech_percentile "
             f"({self.speech_percentile}) <= 100"),
            (min(self.min_range_db, self.smooth, self.min_speech, self.min_silence) >= 0,
             "min_range_db, smooth, min_speech and min_silence must be >= 0"),
        )
        for ok, message in checks:
            if not ok:
                raise DiarizeError(f"VadConfig: {message}")


@dataclass(frozen=True)
class Segment:
    """One speaker turn: ``start`` and ``end`` in seconds, and the speaker's label."""

    start: float
    end: float
    speaker: str

    @property
    def duration(self) -> float:
        return self.end - self.start


# -- speech activity ---------------------------------------------------------------------------------
def frame_log_energy(wave: np.ndarray, sample_rate: int, frame: float, hop: float) -> np.ndarray:
    """Log-energy (dB) of ``frame``-s frames centred on every ``hop``-s step: ``ceil(len / hop)`` values."""
    win, step = max(1, round(frame * sample_rate)), max(1, round(hop * sample_rate))
    count = max(1, math.ceil(len(wave) / step))
    left = max(0, (win - step) // 2)
    power = np.concatenate([[0.0], np.cumsum(np.square(wave, dtype=np.float64))])
    lo = np.clip(np.arange(count) * step - left, 0, len(wave))
    hi = np.clip(np.arange(count) * step - left + win, 0, len(wave))
    return 10 * np.log10((power[hi] - power[lo]) / np.maximum(hi - lo, 1) + 1e-10)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of every run of equal values in a 1-D array."""
    starts = np.concatenate([[0], np.flatnonzero(mask[1:] != mask[:-1]) + 1])
    return starts, np.diff(np.append(starts, len(mask)))


def _drop_short_runs(mask: np.ndarray, value: bool, shortest: int, interior_only: bool) -> np.ndarray:
    """Flip runs of ``value`` shorter than ``shortest`` frames (optionally only those between other runs)."""
    starts, lengths = _runs(mask)
    values = mask[starts]
    flip = (values == value) & (lengths < shortest)
    if interior_only:
        flip[[0, -1]] = False
    return np.repeat(np.where(flip, ~values, values), lengths)


def speech_frames(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, config: VadConfig = VadConfig()) -> np.ndarray:
    """Speech/non-speech decision (bool) for every ``config.hop``-s frame of ``wave``."""
    energy = frame_log_energy(wave, sample_rate, config.frame, config.hop)
    floor, level = np.percentile(energy, [config.floor_percentile, config.speech_percentile])
    if level - floor < config.min_range_db:  # speech in under (100 - speech_percentile) % of the frames, or none
        level = energy.max()
        if level - floor < config.min_range_db:
            return np.ones(len(energy), dtype=bool)
    speech = energy > floor + config.threshold * (level - floor)
    size = 2 * round(config.smooth / config.hop / 2) + 1
    speech = scipy.ndimage.median_filter(speech, size=size, mode="nearest")
    speech = _drop_short_runs(speech, False, round(config.min_silence / config.hop), interior_only=True)
    return _drop_short_runs(speech, True, round(config.min_speech / config.hop), interior_only=False)


def _frame_regions(mask: np.ndarray) -> np.ndarray:
    """``(R, 2)`` first and past-the-end frame of every run of True."""
    starts, lengths = _runs(mask)
    keep = mask[starts]
    return np.stack([starts[keep], starts[keep] + lengths[keep]], axis=1)


def speech_regions(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, config: VadConfig = VadConfig()) -> np.ndarray:
    """Speech regions ``(R, 2)`` as start and end times in seconds."""
    regions = _frame_regions(speech_frames(wave, sample_rate, config)) * config.hop
    return np.minimum(regions, len(wave) / sample_rate)


# -- clustering --------------------------------------------------------------------------------------
def _neighbours(similarity: np.ndarray, count: int) -> np.ndarray:
    """``(N, count)`` indices of each row's most similar other rows, most similar first."""
    similarity = similarity.copy()
    np.fill_diagonal(similarity, -np.inf)  # a window is not its own neighbour
    top = np.argpartition(-similarity, count - 1, axis=1)[:, :count]
    order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _knn_affinity(neighbours: np.ndarray, p: int) -> np.ndarray:
    """Each row linked (1) to its ``p`` nearest neighbours, symmetrised."""
    graph = np.zeros((len(neighbours), len(neighbours)))
    np.put_along_axis(graph, neighbours[:, :p], 1.0, axis=1)
    return (graph + graph.T) / 2


def _eigengaps(affinity: np.ndarray) -> tuple[np.ndarray, float]:
    """Gaps between consecutive eigenvalues of the Laplacian ``D - A``, and its largest eigenvalue."""
    laplacian = np.diag(affinity.sum(axis=1)) - affinity
    eig = scipy.linalg.eigvalsh(laplacian)
    return np.diff(eig), float(eig[-1])


def count_speakers(embeddings: np.ndarray, threshold: float, min_share: float = 0.05) -> int:
    """Number of speakers among embeddings, from a same-speaker cosine ``threshold`` (at least 1).

    Greedy agglomeration on cluster means: the two clusters whose unit-normalised mean embeddings are most similar
    merge while that similarity is at least ``threshold``; clusters left with under ``min_share`` of the embeddings
    (stray windows: overlaps, noises, turn changes) are not counted, unless no cluster reaches it. ``O(N**2)``
    memory and about ``N**3`` time.
    """
    if not 0 <= min_share < 1:
        raise DiarizeError(f"min_share must be in [0, 1), got {min_share}")
    if not -1 <= threshold <= 1:  # also refuses NaN
        raise DiarizeError(f"threshold must be a cosine in [-1, 1], got {threshold}")
    n = len(embeddings)
    if n == 0:
        return 1
    sums = unit_rows(embeddings, "embeddings", np.float64)
    unit, sizes, alive = sums.copy(), np.ones(n), np.ones(n, dtype=bool)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    while True:
        i, j = divmod(int(np.argmax(similarity)), n)
        if similarity[i, j] < threshold:
            break
        sums[i] += sums[j]
        sizes[i] += sizes[j]
        alive[j] = False
        similarity[j, :] = similarity[:, j] = -np.inf
        unit[i] = unit_rows(sums[i], "cluster mean")
        row = np.where(alive, unit @ unit[i], -np.inf)
        row[i] = -np.inf
        similarity[i, :] = similarity[:, i] = row
    counted = int(np.sum(sizes[alive] >= min_share * n))
    return counted if counted else int(alive.sum())  # no cluster big enough: nothing merged, each its own speaker


def cluster(
    embeddings: np.ndarray,
    speakers: int | None = None,
    max_speakers: int = 8,
    max_points: int = 1500,
    threshold: float | None = None,
) -> np.ndarray:
    """Cluster labels ``(N,)`` (0..k-1) of embeddings; ``k`` is ``speakers`` or estimated (module docstring).

    ``threshold``: same-speaker cosine threshold for estimating ``k`` with :func:`count_speakers` (none: eigengap).
    The cost grows as ``N**3``: above ``max_points`` embeddings, an evenly spaced subset of that many is clustered
    and every embedding goes to the cluster with the most similar mean.
    """
    if speakers is not None and speakers < 1:
        raise DiarizeError(f"speakers must be at least 1, got {speakers}")
    if max_speakers < 1:
        raise DiarizeError(f"max_speakers must be at least 1, got {max_speakers}")
    x = unit_rows(embeddings, "embeddings")
    subset = x if len(x) <= max_points else x[np.round(np.linspace(0, len(x) - 1, max_points)).astype(int)]
    if speakers is None and threshold is not None:
        speakers = min(count_speakers(subset, threshold), max_speakers)
    labels = _spectral(subset, speakers, max_speakers)
    if len(x) <= max_points:
        return labels
    centres = np.stack([subset[labels == c].mean(axis=0) for c in range(int(labels.max()) + 1)])
    return np.argmax(x @ centres.T, axis=1)


# LAPACK's dense symmetric eigensolvers gain little from threads, and OpenBLAS threads that spin on a busy
# machine made them 100x slower here (n=500: 2.6 s with 2 threads, 0.02 s with 1, 2 cores under load).
@threadpool_limits.wrap(limits=1, user_api="blas")
def _spectral(x: np.ndarray, speakers: int | None, max_speakers: int) -> np.ndarray:
    """Spectral clustering of unit vectors with the number of clusters given or chosen by NME."""
    n = len(x)
    fixed = None if speakers is None else min(speakers, n)
    if n == 0 or fixed == 1 or (fixed is None and (n < 3 or max_speakers == 1)):
        return np.zeros(n, dtype=np.int64)
    if fixed == n:
        return np.arange(n)
    candidates = np.unique(np.round(np.geomspace(2, max(2, n // 4), 16)).astype(int))  # p = 1 shatters the graph
    neighbours = _neighbours(x @ x.T, min(int(candidates[-1]), n - 1))
    top = min(max_speakers, n - 1)
    best = None
    for p in candidates:
        affinity = _knn_affinity(neighbours, int(p))
        gaps, largest = _eigengaps(affinity)
        k = fixed or int(np.argmax(gaps[:top])) + 1
        ratio = p / (gaps[k - 1] / (largest + 1e-10) + 1e-10)
        if best is None or ratio < best[0]:
            best = (ratio, k, affinity)
    _, k, affinity = best
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected")  # separate speakers: expected
        return SpectralClustering(k, affinity="precomputed", random_state=0).fit_predict(affinity)


# -- frames to segments ------------------------------------------------------------------------------
def _frame_labels(starts: np.ndarray, ends: np.ndarray, labels: np.ndarray, frames: int, hop: float) -> np.ndarray:
    """Cluster of every frame: most windows covering it, ties to the nearest window centre; -1 if uncovered."""
    first = np.clip(np.round(starts / hop).astype(int), 0, frames)
    last = np.clip(np.round(ends / hop).astype(int), 0, frames)
    k = int(labels.max()) + 1
    diff = np.zeros((frames + 1, k))
    np.add.at(diff, (first, labels), 1.0)
    np.add.at(diff, (last, labels), -1.0)
    votes = np.cumsum(diff[:-1], axis=0)
    order = np.argsort(first + last)
    centres = (first + last)[order] / 2
    t = np.arange(frames) + 0.5
    after = np.minimum(np.searchsorted(centres, t), len(centres) - 1)
    before = np.maximum(after - 1, 0)
    nearest = np.where(np.abs(centres[before] - t) <= np.abs(centres[after] - t), before, after)
    covered = votes.max(axis=1) > 0
    votes[np.arange(frames), labels[order][nearest]] += 0.5
    return np.where(covered, votes.argmax(axis=1), -1)


def _turns(frame_labels: np.ndarray, hop: float, duration: float) -> list[Segment]:
    """Speaker turns from per-frame labels (-1: no speech), speakers named in order of appearance."""
    starts, lengths = _runs(frame_labels)
    values = frame_labels[starts]
    keep = values >= 0
    names: dict[int, str] = {}
    for v in values[keep]:
        names.setdefault(int(v), f"SPEAKER_{len(names):02d}")
    return [
        Segment(round(float(s * hop), 3), round(float(min((s + n) * hop, duration)), 3), names[int(v)])
        for s, n, v in zip(starts[keep], lengths[keep], values[keep])
    ]


# -- the pipeline ------------------------------------------------------------------------------------
def diarize(
    model: Embedder,
    audio: str | os.PathLike | np.ndarray,
    speakers: int | None = None,
    *,
    sample_rate: int | None = None,
    max_speakers: int = 8,
    window: float = 2.0,
    hop: float = 0.5,
    vad: VadConfig = VadConfig(),
    threshold: float | None = None,
) -> list[Segment]:
    """Speaker turns of one recording (path or waveform; ``sample_rate`` for arrays not at 16 kHz), in time order.

    ``speakers`` fixes the number of speakers; otherwise it is estimated (up to ``max_speakers``) from ``threshold``
    (default: the model's stored threshold), or from the eigengap when there is none (module docstring). Raises
    :class:`~ghostvlad.audio.AudioError` on unreadable audio and :class:`DiarizeError` on bad settings.
    """
    win, stride = window_samples(model, window, hop)
    wave = model.load_item(audio, sample_rate)
    rate = model.frontend_config.sample_rate
    shortest = model.frontend_config.min_samples
    step = max(1, round(vad.hop * rate))
    mask = speech_frames(wave, rate, vad)
    bounds = []
    for first, last in _frame_regions(mask) * step:
        length = min(last, len(wave)) - first
        if length >= shortest:
            s, _ = window_bounds(length, win, stride, shortest)
            s = np.minimum(s, max(length - win, 0))  # the last window ends at the region's end, full length
            bounds.append((s + first, s + first + min(win, length)))
    if not bounds:
        return []
    starts, ends = (np.concatenate(b) for b in zip(*bounds))
    threshold = model.threshold if threshold is None else threshold
    labels = cluster(embed_slices(model, wave, starts, ends), speakers, max_speakers, threshold=threshold)
    frame_labels = _frame_labels(starts / rate, ends / rate, labels, len(mask), vad.hop)
    return _turns(np.where(mask, frame_labels, -1), vad.hop, len(wave) / rate)


def rttm_lines(segments: list[Segment], file_id: str) -> list[str]:
    """NIST RTTM ``SPEAKER`` lines (times with millisecond precision)."""
    if not file_id or re.search(r"\s", file_id):
        raise DiarizeError(f"RTTM file id must be non-empty without whitespace, got {file_id!r}")
    return [
        f"SPEAKER {file_id} 1 {s.start:.3f} {s.duration:.3f} <NA> <NA> {s.speaker} <NA> <NA>" for s in segments
    ]


def write_rttm(segments: list[Segment], path: str | os.PathLike, file_id: str) -> None:
    """Write ``segments`` as an RTTM file, atomically."""
    atomic_write_text(path, "".join(line + "\n" for line in rttm_lines(segments, file_id)))
