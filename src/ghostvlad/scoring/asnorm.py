"""Adaptive symmetric score normalisation (AS-norm1; Matejka et al. 2017, Cumani et al. 2011)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .vectors import unit_rows


def cohort_scores(emb: np.ndarray, cohort: np.ndarray) -> np.ndarray:
    """(M, C) cosine similarities of embeddings (M, D) against cohort embeddings (C, D)."""
    emb, cohort = np.asarray(emb), np.asarray(cohort)
    if emb.ndim != 2 or cohort.ndim != 2 or emb.shape[1] != cohort.shape[1]:
        raise ValueError(f"need emb (M, D) and cohort (C, D), got shapes {emb.shape} and {cohort.shape}")
    dtype = np.result_type(emb, cohort, np.float32)
    return unit_rows(emb.astype(dtype), "emb") @ unit_rows(cohort.astype(dtype), "cohort").T


def _top_stats(cohort: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise mean and standard deviation of the k largest values."""
    top = np.partition(cohort, cohort.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1), top.std(axis=1)


def as_norm(scores: ArrayLike, enroll_cohort: ArrayLike, test_cohort: ArrayLike, top_k: int = 300) -> np.ndarray:
    """AS-norm1 scores: 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t).

    ``enroll_cohort[i]`` / ``test_cohort[i]`` hold the scores of trial i's enrolment / test side against
    the cohort (N, C); mu and sd are the mean and population standard deviation of each row's top_k
    largest scores, top_k clipped to C.
    """
    s = np.asarray(scores, dtype=np.float64)
    e = np.asarray(enroll_cohort, dtype=np.float64)
    t = np.asarray(test_cohort, dtype=np.float64)
    if s.ndim != 1 or e.shape != t.shape or e.shape[:1] != s.shape or e.ndim != 2:
        raise ValueError(
            f"need scores (N,) and enroll/test cohort scores (N, C), got shapes {s.shape}, {e.shape}, {t.shape}"
        )
    k = min(int(top_k), e.shape[1])
    if k < 2:
        raise ValueError(f"need at least 2 cohort scores per side (top_k={top_k}, cohort size {e.shape[1]})")
    if not (np.isfinite(s).all() and np.isfinite(e).all() and np.isfinite(t).all()):
        raise ValueError("scores and cohort scores must be finite")
    mu_e, sd_e = _top_stats(e, k)
    mu_t, sd_t = _top_stats(t, k)
    if not (np.all(sd_e > 0) and np.all(sd_t > 0)):
        raise ValueError(f"cohort top-{k} scores are constant for some trials; standard deviation is 0")
    return 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)
