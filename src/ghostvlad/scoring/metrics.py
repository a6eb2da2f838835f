"""Verification metrics: equal error rate, minimum detection cost and DET operating points.

Convention throughout: labels 1 = target (same speaker), 0 = non-target; a trial is accepted
when its score is >= the threshold.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from ..errors import GhostvladError


class MetricsError(GhostvladError):
    """Scores and labels that no metric can be computed from (one class only, NaN, mismatched lengths, ...)."""


def check_scores(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (float64 scores, int8 labels)."""
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MetricsError(f"scores must be numeric: {e}") from None
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise MetricsError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if len(s) != len(y):
        raise MetricsError(f"scores and labels differ in length: {len(s)} vs {len(y)}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise MetricsError(
            f"labels must be 0 (non-target) or 1 (target); {int(bad.sum())} are not, e.g. {y[bad][0]!r}"
        )
    y = y.astype(np.int8)
    n_target = int(y.sum())
    if n_target == 0 or n_target == len(y):
        raise MetricsError(
            f"need both target (1) and non-target (0) trials, got {n_target} targets "
            f"and {len(y) - n_target} non-targets"
        )
    n_bad = int((~np.isfinite(s)).sum())
    if n_bad:
        raise MetricsError(f"scores must be finite; {n_bad} of {len(s)} are NaN or infinite")
    return s, y


def _roc(s: np.ndarray, y: np.ndarray, drop_intermediate: bool) -> tuple[np.ndarray, ...]:
    """sklearn ROC with a finite first threshold (max score + 1, as sklearn < 1.3 gave; it rejects all)."""
    fpr, tpr, thr = roc_curve(y, s, pos_label=1, drop_intermediate=drop_intermediate)
    thr[0] = thr[1] + 1.0
    return fpr, tpr, thr


def eer(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """(EER as a fraction, threshold at the EER), computed as the original ``calculate_eer``.

    The ROC is linearly interpolated and the FPR where FPR = 1 - TPR found with Brent's method;
    the threshold is interpolated on the same ROC points.
    """
    s, y = check_scores(scores, labels)
    fpr, tpr, thr = _roc(s, y, drop_intermediate=True)
    tpr_at = interp1d(fpr, tpr)
    rate = brentq(lambda x: 1.0 - x - tpr_at(x), 0.0, 1.0)
    return float(rate), float(interp1d(fpr, thr)(rate))


def min_dcf(
    scores: ArrayLike, labels: ArrayLike, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """(normalised minimum detection cost, threshold achieving it).

    C_det(t) = c_miss * p_target * P_miss(t) + c_fa * (1 - p_target) * P_fa(t), minimised over every
    distinct threshold (ties handled exactly) and divided by min(c_miss * p_target, c_fa * (1 - p_target)),
    as in the NIST SRE / VoxSRC scoring scripts.
    """
    if not 0.0 < p_target < 1.0:
        raise MetricsError(f"p_target must be in (0, 1), got {p_target}")
    if not (c_miss > 0 and c_fa > 0):
        raise MetricsError(f"c_miss and c_fa must be positive, got {c_miss} and {c_fa}")
    s, y = check_scores(scores, labels)
    fpr, tpr, thr = _roc(s, y, drop_intermediate=False)
    cost = c_miss * p_target * (1.0 - tpr) + c_fa * (1.0 - p_target) * fpr
    best = int(np.argmin(cost))
    return float(cost[best] / min(c_miss * p_target, c_fa * (1.0 - p_target))), float(thr[best])


def det_points(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(false-alarm rates, miss rates), one point per distinct threshold.

    Ordered from reject-all (0, 1) to accept-all (1, 0).
    """
    s, y = check_scores(scores, labels)
    fpr, tpr, _ = _roc(s, y, drop_intermediate=False)
    return fpr, 1.0 - tpr
