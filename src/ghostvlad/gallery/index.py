"""The search side of a gallery: unit speaker means, the float32 matrix of all of them, exact top-k search and the
decision on each match."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GhostvladError
from ..scoring.calibration import Decision, DecisionRule
from ..scoring.vectors import unit_rows


class GalleryError(GhostvladError):
    """A gallery file that is missing, not ours, made by another model, empty; or a bad enrolment."""


@dataclass(frozen=True)
class Match:
    """One ranked candidate of an identification: cosine score against the speaker's mean embedding."""

    name: str
    score: float
    utterances: int
    decision: Decision

    @property
    def accepted(self) -> bool | None:
        return self.decision.accept


def top_matches(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row indices, scores)`` of the ``k`` highest ``matrix @ query``, best first (exact)."""
    scores = matrix @ query
    k = min(k, len(scores))
    idx = np.argpartition(scores, len(scores) - k)[len(scores) - k:]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return idx, scores[idx]


@dataclass
class SpeakerIndex:
    """The speaker means of one generation of a gallery, searched as ``matrix @ query``."""

    generation: int
    names: list[str]
    counts: np.ndarray  # utterances per speaker
    matrix: np.ndarray  # (speakers, dim) float32 unit rows

    def search(self, embedding: np.ndarray, top: int, rule: DecisionRule) -> list[Match]:
        """The ``top`` speakers closest to ``embedding``, best first, each with ``rule``'s decision."""
        if top < 1:
            raise GalleryError(f"top must be at least 1, got {top}")
        q = np.asarray(embedding, dtype=np.float32)
        if q.shape != (self.matrix.shape[1],) or not np.isfinite(q).all() or not np.linalg.norm(q) > 0:
            raise GalleryError(f"query embedding must be a finite non-zero vector of {self.matrix.shape[1]} "
                               f"values, got shape {q.shape}")
        idx, scores = top_matches(self.matrix, unit_rows(q, "query", np.float32), top)
        return [Match(self.names[i], float(s), int(self.counts[i]), rule(s)) for i, s in zip(idx, scores)]
