"""A tiny model for calibration tests and the `calibrate` command."""
from ghostvlad.inference import SpeakerModel
from support.models import tone_model


def tiny_model() -> SpeakerModel:
    """Random tiny model with batch-norm statistics set on a few tones, so that embeddings differ."""
    return tone_model([150 + 200 * k for k in range(6)], 0.8)
