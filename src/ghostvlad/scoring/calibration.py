"""Score calibration and calibrated decisions: cosine score -> log-likelihood ratio -> same/different.

**Calibration.** A verification score ``s`` is mapped to a log-likelihood ratio
``LLR(s) = log p(s | same) / p(s | different) = a * s + b`` by prior-weighted logistic regression
(Brümmer's linear calibration, as in BOSARIS/FoCal). With ``N_t`` target and ``N_n`` non-target trials and an
effective prior ``pi``, scikit-learn's ``LogisticRegression`` (no penalty) minimises

    - pi / N_t * sum_targets log sigmoid(a s + c) - (1 - pi) / N_n * sum_nontargets log sigmoid(-(a s + c)),

so ``a s + c`` is the log posterior odds at prior ``pi`` whatever the class counts, and the LLR is
``a s + c - logit(pi)``, i.e. ``b = c - logit(pi)``. At any other prior ``p`` the posterior is
``P(same | s) = sigmoid(LLR(s) + logit(p))``.

**Operating points.** Decisions threshold the raw cosine score. A calibration stores thresholds measured on
its evaluation data: ``eer`` (false accepts = false rejects) and ``far@X`` (the lowest threshold whose
false-accept rate is at most X). ``bayes`` is computed at decision time: accept when the posterior at the
stated prior is at least 1/2, i.e. ``LLR(s) >= -logit(p)`` (minimum expected cost with equal costs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression

from ..errors import GhostvladError
from .metrics import check_scores, eer

BAYES = "bayes"
GIVEN = "given"  # a threshold given by the caller
STORED = "stored"  # the model's plain ``threshold`` (no calibration)
DEFAULT_POINT = "eer"


class CalibrationError(GhostvladError):
    """Scores that cannot be calibrated, an invalid stored calibration, or an unknown operating point."""


def far_name(far: float) -> str:
    """Operating-point name of a false-accept rate: ``far@0.01``."""
    return f"far@{far:g}"


def is_point_name(name: str) -> bool:
    """Whether ``name`` is an operating-point name at all: ``eer``, ``bayes`` or ``far@X`` with 0 < X < 1."""
    if name in (DEFAULT_POINT, BAYES):
        return True
    head, _, rate = name.partition("@")
    try:
        return head == "far" and 0.0 < float(rate) < 1.0
    except ValueError:
        return False


def far_threshold(scores: ArrayLike, labels: ArrayLike, far: float) -> float:
    """Lowest threshold whose false-accept rate (share of non-targets with score >= threshold) is <= ``far``.

    It lies halfway between the highest non-target score that must be rejected and the next higher score.
    """
    if not 0.0 < far < 1.0:
        raise CalibrationError(f"false-accept rate must be in (0, 1), got {far}")
    s, y = check_scores(scores, labels)
    nontarget = np.sort(s[y == 0])[::-1]
    allowed = int(np.floor(far * len(nontarget) + 1e-9))  # false accepts permitted (< len(nontarget))
    reject = nontarget[allowed]  # must score below the threshold
    above = s[s > reject]
    return float((reject + above.min()) / 2) if above.size else float(np.nextafter(reject, np.inf))


def cllr(llr: ArrayLike, labels: ArrayLike) -> float:
    """Log-likelihood-ratio cost in bits: 0 is perfect, 1 is an uninformative system (LLR always 0)."""
    s, y = check_scores(llr, labels)
    return float((np.logaddexp(0, -s[y == 1]).mean() + np.logaddexp(0, s[y == 0]).mean()) / (2 * np.log(2)))


@dataclass(frozen=True)
class OperatingPoint:
    """A named decision threshold on the cosine score."""

    name: str
    threshold: float

    def describe(self) -> str:
        if self.name in (GIVEN, STORED):
            return f"threshold {self.threshold:.4f}"
        return f"operating point {self.name}, threshold {self.threshold:.4f}"


@dataclass(frozen=True)
class Calibration:
    """``LLR = a * score + b``, fitted at effective prior ``prior``, with thresholds measured on the same data."""

    a: float
    b: float
    prior: float = 0.5
    thresholds: dict[str, float] = field(default_factory=dict)

    def llr(self, scores: ArrayLike) -> np.ndarray | float:
        return self.a * np.asarray(scores, dtype=np.float64) + self.b

    def posterior(self, scores: ArrayLike, prior: float = 0.5) -> np.ndarray | float:
        """``P(same | score)`` at the given prior probability of a target trial."""
        return expit(self.llr(scores) + logit(_check_prior(prior)))

    def operating_point(self, name: str, prior: float = 0.5) -> OperatingPoint:
        """A stored operating point, or ``bayes`` at ``prior``."""
        if name == BAYES:
            return OperatingPoint(BAYES, float((-logit(_check_prior(prior)) - self.b) / self.a))
        if name not in self.thresholds:
            raise CalibrationError(f"unknown operating point {name!r}; this model has: "
                                   f"{', '.join([*self.thresholds, BAYES])}")
        return OperatingPoint(name, self.thresholds[name])

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "prior": self.prior, "thresholds": dict(self.thresholds)}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        try:
            cal = cls(float(data["a"]), float(data["b"]), float(data.get("prior", 0.5)),
                      {str(k): float(v) for k, v in dict(data.get("thresholds") or {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"invalid calibration in the model ({type(exc).__name__}: {exc})") from None
        values = [cal.a, cal.b, *cal.thresholds.values()]
        if not (np.isfinite(values).all() and cal.a > 0 and 0 < cal.prior < 1):
            raise CalibrationError(f"invalid calibration in the model: {cal.to_dict()}")
        return cal


def _check_prior(prior: float) -> float:
    if not 0.0 < prior < 1.0:
        raise CalibrationError(f"prior must be in (0, 1), got {prior}")
    return prior


def fit_calibration(scores: ArrayLike, labels: ArrayLike, *, prior: float = 0.5,
                    fars: tuple[float, ...] = (0.01,)) -> Calibration:
    """Fit ``LLR = a * score + b`` (see the module docstring) and measure the EER and ``far@X`` thresholds."""
    s, y = check_scores(scores, labels)
    _check_prior(prior)
    if s[y == 1].min() > s[y == 0].max():
        raise CalibrationError(f"the {len(s)} scores separate targets from non-targets perfectly, so the LLR "
                               "slope is unbounded; calibrate on more (or harder) trials")
    n_target = int(y.sum())
    weights = np.where(y == 1, prior / n_target, (1 - prior) / (len(y) - n_target)) * len(y)
    fit = LogisticRegression(C=np.inf, max_iter=1000, tol=1e-8).fit(s[:, None], y, sample_weight=weights)
    a, c = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if not a > 0:
        raise CalibrationError(f"scores do not rise with the chance of a target trial (fitted slope {a:.3g})")
    thresholds = {DEFAULT_POINT: eer(s, y)[1]}
    thresholds.update({far_name(f): far_threshold(s, y, f) for f in fars})
    return Calibration(a, c - float(logit(prior)), prior, thresholds)


@dataclass(frozen=True)
class Decision:
    """A score judged at an operating point (``accept`` is None when no threshold is known)."""

    score: float
    accept: bool | None
    point: OperatingPoint | None
    llr: float | None
    p_same: float | None
    prior: float

    def explain(self) -> str:
        """``operating point far@0.01, threshold 0.4120; LLR 3.20, P(same)=0.961 at prior 0.5``."""
        parts = [] if self.point is None else [self.point.describe()]
        if self.llr is not None:
            parts.append(f"LLR {self.llr:.2f}, P(same)={self.p_same:.3f} at prior {self.prior:g}")
        return "; ".join(parts)


@dataclass(frozen=True)
class DecisionRule:
    """Turns cosine scores into :class:`Decision` s: an operating point, and a calibration when there is one."""

    point: OperatingPoint | None
    calibration: Calibration | None = None
    prior: float = 0.5

    @classmethod
    def for_model(cls, model: Any, operating_point: str | None = None, *, threshold: float | None = None,
                  prior: float = 0.5) -> DecisionRule:
        """The rule for a :class:`~ghostvlad.inference.SpeakerModel` (or None: only ``threshold`` applies).

        ``threshold`` (given) wins; else the named ``operating_point`` of the model's calibration; else its
        ``eer`` point; else the model's plain stored threshold; else no decision.
        """
        _check_prior(prior)
        stored = getattr(model, "calibration", None)
        cal = Calibration.from_dict(stored) if stored else None
        if threshold is not None:
            if operating_point is not None:
                raise CalibrationError("give a threshold or an operating point, not both")
            if not np.isfinite(threshold):
                raise CalibrationError(f"threshold must be a finite number, got {threshold}")
            return cls(OperatingPoint(GIVEN, float(threshold)), cal, prior)
        if operating_point is not None:
            if not is_point_name(operating_point):
                has = "" if cal is None else f"; this model has: {', '.join([*cal.thresholds, BAYES])}"
                raise CalibrationError(f"unknown operating point {operating_point!r}: use eer, far@X (0 < X < 1, "
                                       f"as stored by 'ghostvlad calibrate') or bayes{has}")
            if cal is None:
                raise CalibrationError(f"operating point {operating_point!r} needs a calibrated model "
                                       "(run 'ghostvlad calibrate')")
            return cls(cal.operating_point(operating_point, prior), cal, prior)
        if cal is not None and DEFAULT_POINT in cal.thresholds:
            return cls(cal.operating_point(DEFAULT_POINT), cal, prior)
        plain = getattr(model, "threshold", None)
        return cls(None if plain is None else OperatingPoint(STORED, float(plain)), cal, prior)

    def __call__(self, score: float) -> Decision:
        score = float(score)
        accept = None if self.point is None else score >= self.point.threshold
        if self.calibration is None:
            return Decision(score, accept, self.point, None, None, self.prior)
        return Decision(score, accept, self.point, float(self.calibration.llr(score)),
                        float(self.calibration.posterior(score, self.prior)), self.prior)
