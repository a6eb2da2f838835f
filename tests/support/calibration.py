"""A tiny model for calibration tests and the `calibrate` command."""
import numpy as np

from ghostvlad.inference import SpeakerModel
from support.audio import tone
from support.models import calibrated_tiny_model


def tiny_model() -> SpeakerModel:
    """Random tiny model with batch-norm statistics set on a few tones, so that embeddings differ."""
    rng = np.random.default_rng(0)
    return calibrated_tiny_model([tone(rng, 150 + 200 * k) for k in range(6)])
