"""Verification scoring: error rates, detection cost and score normalisation."""

from ghostvlad.scoring.asnorm import as_norm
from ghostvlad.scoring.metrics import eer, min_dcf

__all__ = ["as_norm", "eer", "min_dcf"]
