"""One tone per "speaker", a tiny model that tells them apart, and clips of them, for the gallery and its
commands."""
import numpy as np
import pytest
import soundfile as sf

from ghostvlad.inference import SpeakerModel
from support.audio import tone
from support.models import tone_model

SPEAKERS = {"alice": 200.0, "bob": 800.0, "carol": 2500.0, "dave": 6000.0}  # one tone per "speaker"


def tiny_model(seed: int = 0) -> SpeakerModel:
    """Random tiny model with batch-norm statistics set on the speakers' tones, so that embeddings differ."""
    return tone_model(SPEAKERS.values(), 0.5, seed)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture()
def clips(tmp_path):
    """Three clips per speaker (same tone, independent noise) and a silent and a too-short one."""
    rng = np.random.default_rng(1)
    out = {}
    for name, freq in SPEAKERS.items():
        out[name] = []
        for k in range(3):
            path = tmp_path / "wav" / f"{name}{k}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, tone(rng, freq, 1.0, noise=0.002), 16000, subtype="FLOAT")
            out[name].append(path)
    sf.write(tmp_path / "wav" / "silent.wav", np.zeros(16000, np.float32), 16000)
    sf.write(tmp_path / "wav" / "short.wav", tone(rng, 300.0, 0.2, noise=0.002), 16000)
    (tmp_path / "wav" / "bad.wav").write_bytes(b"RIFF not really audio" * 10)
    return out
