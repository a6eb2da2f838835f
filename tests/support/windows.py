"""A gliding tone and a tiny model batching 3 windows of 2 s per forward pass, for `windows` and `embed --window`."""
import numpy as np
import pytest

from ghostvlad.inference import SpeakerModel
from support.models import calibrated_tiny_model

RATE = 16000


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * RATE))) / RATE
    return (0.3 * np.sin(2 * np.pi * (150 + 60 * t) * t) + rng.normal(0, 0.05, t.size)).astype(np.float32)


def tiny_model(mirror: bool = False, batch_frames: int = 3200) -> SpeakerModel:
    """Random tiny model with batch-norm statistics set on a few clips, so that embeddings differ."""
    return calibrated_tiny_model([clip(0.5, k) for k in range(4)], mirror=mirror, batch_frames=batch_frames)


@pytest.fixture(scope="module")
def model() -> SpeakerModel:
    return tiny_model(batch_frames=700)  # 3 windows of 2 s per forward pass
