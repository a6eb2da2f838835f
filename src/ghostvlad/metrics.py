"""Verification metrics under a short public name: ``ghostvlad.metrics.eer`` and ``ghostvlad.metrics.min_dcf``."""
from __future__ import annotations

from .scoring.metrics import eer, min_dcf

__all__ = ["eer", "min_dcf"]
