"""Identification metrics: closed-set top-1 accuracy and open-set rates at a threshold.

A query is scored against every enrolled speaker (``scores``: queries x speakers, higher = more alike) and
answered with its best-scoring speaker, or "unknown" when that score is below the threshold, as
:meth:`ghostvlad.gallery.Gallery.identify` answers. Queries of speakers who are not enrolled (truth ``-1``) measure
how often an unknown voice is taken for someone enrolled. :func:`leave_one_out` runs the whole protocol on
speakers recorded in several sessions: enrolled from one session, asked from the others.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .metrics import MetricsError
from .vectors import speaker_mean

UNKNOWN = -1  # truth of a query whose speaker is not enrolled


@dataclass(frozen=True)
class IdentificationCounts:
    """Counts of one or more identification rounds; ``+`` pools rounds (e.g. galleries of different speakers)."""

    enrolled: int = 0  # queries of enrolled speakers
    unknown: int = 0  # queries of speakers not enrolled
    top1: int = 0  # enrolled queries whose best match is their speaker (whatever its score)
    identified: int = 0  # enrolled queries whose best match is their speaker and passes the threshold
    false_alarms: int = 0  # unknown queries whose best match passes the threshold

    def __add__(self, other: IdentificationCounts) -> IdentificationCounts:
        return IdentificationCounts(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))

    @property
    def top1_rate(self) -> float:
        """Closed-set accuracy: the right speaker ranked first (NaN without enrolled queries)."""
        return self.top1 / self.enrolled if self.enrolled else float("nan")

    @property
    def identification_rate(self) -> float:
        """Open set: the right speaker ranked first and accepted (detection and identification rate)."""
        return self.identified / self.enrolled if self.enrolled else float("nan")

    @property
    def unknown_rejection_rate(self) -> float:
        """Open set: unknown speakers answered "unknown" (1 - false-alarm rate; NaN without unknown queries)."""
        return 1.0 - self.false_alarms / self.unknown if self.unknown else float("nan")


def identification_counts(scores: ArrayLike, truth: ArrayLike, threshold: float) -> IdentificationCounts:
    """Count the answers to queries scored against a gallery.

    ``scores``: (queries, speakers) finite scores; ``truth``: each query's speaker as a column index of
    ``scores``, or :data:`UNKNOWN` (-1) for a speaker not enrolled. A best score equal to ``threshold`` is accepted.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(truth)
    if s.ndim != 2 or s.shape[1] == 0:
        raise MetricsError(f"scores must be (queries, speakers) with at least one speaker, got shape {s.shape}")
    if t.shape != (s.shape[0],) or not np.issubdtype(t.dtype, np.integer):
        raise MetricsError(f"truth must be {s.shape[0]} integer speaker indices, got {t.dtype} of shape {t.shape}")
    if ((t < UNKNOWN) | (t >= s.shape[1])).any():
        raise MetricsError(f"truth holds indices outside -1..{s.shape[1] - 1}")
    if not np.isfinite(s).all() or not np.isfinite(threshold):
        raise MetricsError("scores and threshold must be finite")
    best = s.argmax(axis=1)
    accepted = s[np.arange(len(s)), best] >= threshold
    known = t != UNKNOWN
    right = known & (best == t)
    return IdentificationCounts(enrolled=int(known.sum()), unknown=int((~known).sum()), top1=int(right.sum()),
                                identified=int((right & accepted).sum()),
                                false_alarms=int((~known & accepted).sum()))


def leave_one_out(sessions: Mapping[str, Sequence[np.ndarray]], threshold: float) -> IdentificationCounts:
    """Counts pooled over every speaker left out of the gallery (an unknown voice) and every session ``k`` that
    all speakers have: the others are enrolled from their ``k``-th session (:func:`speaker_mean` of its unit
    embeddings, as a gallery enrols them) and asked with every utterance of their other sessions; every
    utterance of the left-out speaker asks as an unknown. ``sessions``: speaker -> one ``(utterances, D)`` array
    of unit embeddings a session; scores are cosines."""
    if len(sessions) < 2:
        raise MetricsError(f"identification needs two or more speakers, got {len(sessions)}")
    speakers = sorted(sessions)
    total = IdentificationCounts()
    for k in range(min(len(v) for v in sessions.values())):
        for unknown in speakers:
            enrolled = [s for s in speakers if s != unknown]
            gallery = np.stack([speaker_mean(sessions[s][k]) for s in enrolled]).astype(np.float64)
            asked = [(e, i) for i, s in enumerate(enrolled) for j, e in enumerate(sessions[s]) if j != k]
            asked += [(e, UNKNOWN) for e in sessions[unknown]]
            queries = np.concatenate([np.asarray(e, dtype=np.float64) for e, _ in asked])
            truth = np.concatenate([np.full(len(e), t) for e, t in asked])
            total = total + identification_counts(queries @ gallery.T, truth, threshold)
    return total
