"""A tiny model and a small wav corpus with trials and a cohort, for `evaluate` and the commands built on it."""
import numpy as np
import pytest
import soundfile as sf

from ghostvlad.inference import SpeakerModel
from support.audio import tone
from support.models import tone_model

SPEAKERS = {"a": 220.0, "b": 330.0, "c": 500.0}


def tiny_model(seed: int = 0) -> SpeakerModel:
    """Random tiny model; batch-norm statistics set on a few tones so that embeddings differ (cosines ~0.5-0.95)."""
    return tone_model([100.0 + 90 * k for k in range(6)], 0.5, seed)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture()
def corpus(tmp_path):
    """wav root with 2 clips per speaker (different lengths), 3 cohort clips, and all 15 pairs as trials."""
    rng = np.random.default_rng(0)
    root = tmp_path / "wav"
    files = []
    for spk, freq in SPEAKERS.items():
        for k, seconds in enumerate((1.0, 1.3)):
            rel = f"{spk}/{k}.wav"
            (root / spk).mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, tone(rng, freq * (1 + 0.02 * k), seconds), 16000)
            files.append(rel)
    cohort = []
    for k in range(4):
        path = tmp_path / "cohort" / f"c{k}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, tone(rng, 150.0 + 90 * k, 1.1), 16000)
        cohort.append(str(path))
    lines = [f"{int(x[0] == y[0])} {x} {y}" for i, x in enumerate(files) for y in files[i + 1:]]
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(lines) + "\n")
    return {"root": root, "files": files, "trials": trials, "cohort": cohort, "cache": tmp_path / "cache"}
