"""Score held-out trial sets with a pretrained reference model: Resemblyzer's GE2E d-vector (not a test).

The transfer issue compares the demo model with "a small pretrained d-vector model (GE2E LSTM, 1.4 M parameters)";
Resemblyzer (PyPI ``resemblyzer``, weights inside the wheel) is that kind of model. Scoring our own held-out sets
with it shows how hard each set is for a model trained on thousands of real voices, so our EERs on them can be
read against it. Each folder holds ``trials.txt`` (``label enrol test``) and the files under ``test/``, as the
synth corpora and :mod:`ghostvlad.data.engine_set` write them. Resemblyzer trims silences (webrtcvad) and
scores the cosine of utterance embeddings.

    pip install resemblyzer      # after the CPU torch is installed, so that it keeps it
    python bench/reference.py bench_out/recorded bench_out/engines bench_out/transfer/cross
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from ghostvlad.data.trials import read_trials
from ghostvlad.scoring.metrics import eer


def score_set(encoder, root: Path) -> tuple[float, int]:
    """(EER, number of trials) of ``encoder`` on the trial set in ``root``."""
    from resemblyzer import preprocess_wav

    trials = read_trials(root / "trials.txt")
    embeddings = {}
    for name in sorted({*trials.enroll, *trials.test}):
        wave, rate = sf.read(root / "test" / name, dtype="float32")
        embeddings[name] = encoder.embed_utterance(preprocess_wav(wave, rate))
    scores = np.array([float(embeddings[a] @ embeddings[b]) for a, b in zip(trials.enroll, trials.test)])
    return eer(scores, trials.labels)[0], len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", type=Path, help="Folders with trials.txt and test/.")
    args = parser.parse_args()
    try:
        from resemblyzer import VoiceEncoder
    except ImportError:
        raise SystemExit("resemblyzer is not installed (pip install resemblyzer)") from None
    encoder = VoiceEncoder("cpu", verbose=False)
    print("| set | trials | Resemblyzer GE2E EER % |\n|---|---|---|")
    for root in args.sets:
        if not (root / "trials.txt").is_file():
            raise SystemExit(f"{root}: no trials.txt (not a trial set)")
        value, count = score_set(encoder, root)
        print(f"| {root} | {count} | {100 * value:.1f} |")


if __name__ == "__main__":
    main()
