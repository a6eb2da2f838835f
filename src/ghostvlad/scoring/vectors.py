"""Unit-length vectors: the one normalisation that cosine scoring, galleries and clustering share."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike


def unit_rows(x: ArrayLike, what: str = "vectors", dtype: DTypeLike | None = None) -> np.ndarray:
    """``x`` (one vector ``(D,)`` or rows ``(..., D)``) divided by its norm along the last axis, in ``dtype``
    (default: ``x``'s floating type, float64 for integers). Raises ValueError naming ``what`` for zero or
    non-finite vectors (their direction, and so any cosine with them, is undefined)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    bad = ~(np.isfinite(norms) & (norms > 0))
    if bad.any():
        raise ValueError(f"{what} has {int(bad.sum())} zero vectors or vectors with NaN/inf; cosine is undefined")
    out = x / norms
    return out if dtype is None else out.astype(dtype)


def speaker_mean(embeddings: np.ndarray) -> np.ndarray:
    """Mean of unit embeddings ``(n, D)``, re-normalised to unit length (float32): what a speaker enrolled from
    them is searched by."""
    return unit_rows(np.asarray(embeddings, dtype=np.float64).mean(axis=0), "mean embedding", np.float32)
