"""Synthetic "speakers", a conversation of them with its reference annotation, a tiny model that tells them
apart, and the error rate, for `diarize` and its command."""
import numpy as np
import pytest
import scipy.signal as sps
from pyannote.core import Annotation, Timeline
from pyannote.core import Segment as Turn
from pyannote.metrics.diarization import DiarizationErrorRate

from ghostvlad.inference import SpeakerModel
from support.models import calibrated_tiny_model

RATE = 16000
KINDS = ("low", "mid", "high")  # "speakers" that the untrained tiny model below tells apart
TURNS = (0, 1, 2, 0, 1, 2, 1, 0, 2, 1, 0, 2, 0, 1)


def voice(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A stationary synthetic 'speaker' (low or mid harmonic tones, or high-passed noise), 3 Hz syllable envelope."""
    n = round(seconds * RATE)
    t = np.arange(n) / RATE
    if kind == "low":
        x = 0.3 * np.sin(2 * np.pi * 150 * t) + 0.2 * np.sin(2 * np.pi * 450 * t) + 0.1 * np.sin(2 * np.pi * 750 * t)
    elif kind == "mid":
        x = 0.3 * np.sin(2 * np.pi * 1100 * t) + 0.2 * np.sin(2 * np.pi * 2200 * t)
    else:
        x = 0.3 * sps.sosfilt(sps.butter(4, 3000, "high", fs=RATE, output="sos"), rng.normal(0, 1, n))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t + rng.uniform(0, 2 * np.pi))
    return (x * envelope + rng.normal(0, 0.01, n)).astype(np.float32)


def pause(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 0.002, round(seconds * RATE)).astype(np.float32)  # about -54 dBFS: quiet, not silent


@pytest.fixture(scope="module")
def model() -> SpeakerModel:
    """Random tiny model; batch-norm statistics set on the three signal kinds so that their embeddings differ."""
    rng = np.random.default_rng(0)
    return calibrated_tiny_model([voice(k, 1.0, rng) for k in KINDS])


@pytest.fixture(scope="module")
def conversation() -> tuple[np.ndarray, Annotation]:
    """About a minute of turns of three 'speakers' separated by short pauses, and the reference annotation."""
    rng = np.random.default_rng(0)
    parts, reference, t = [], Annotation(uri="conv"), 0.0
    for k in TURNS:
        seconds = rng.uniform(2.5, 4.5)
        parts.append(voice(KINDS[k], seconds, rng))
        reference[Turn(t, t + seconds)] = KINDS[k]
        gap = rng.uniform(0.4, 0.8)
        parts.append(pause(gap, rng))
        t += seconds + gap
    return np.concatenate(parts), reference


def der(reference: Annotation, hypothesis: Annotation, duration: float) -> float:
    """Diarization error rate (pyannote.metrics), no forgiveness collar, over the whole recording."""
    return DiarizationErrorRate(collar=0.0)(reference, hypothesis, uem=Timeline([Turn(0, duration)]))
