"""Score held-out trial sets with a pretrained reference model: Resemblyzer's GE2E d-vector (not a test).

The transfer issue compares the demo model with "a small pretrained d-vector model (GE2E LSTM, 1.4 M parameters)";
Resemblyzer (PyPI ``resemblyzer``, weights inside the wheel) is that kind of model. Scoring our own held-out sets
with it shows how hard each set is for a model trained on thousands of real voices, so our EERs on them can be
read against it. Each folder holds ``trials.txt`` (``label enrol test``) and the files under ``test/``, as the
synth corpora and :mod:`ghostvlad.data.engine_set` write them. Resemblyzer trims silences (webrtcvad) and
scores the cosine of utterance embeddings.

With ``--models``, each model's own EER on the set and the EER of its scores fused with the reference's: both
systems' scores standardised over the set's trials (mean 0, standard deviation 1; no labels used), then
``(1 - w) * model + w * reference`` with ``w = --weight``. A fusion that beats both systems shows that the
reference knows something about the set's voices that the model does not.

    pip install resemblyzer 'setuptools<81'   # after the CPU torch; webrtcvad still imports pkg_resources
    python bench/reference.py bench_out/recorded bench_out/engines bench_out/transfer/cross
    python bench/reference.py bench_out/engines --models bench_out/transfer/runs/demo-demo-astp-s0
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from ghostvlad.data.trials import read_trials
from ghostvlad.evaluate import evaluate
from ghostvlad.loading import load_model
from ghostvlad.scoring.metrics import eer


def embed_set(encoder, root: Path, names: set[str]) -> dict[str, np.ndarray]:
    """Resemblyzer embeddings of the files ``names`` under ``root/test``."""
    from resemblyzer import preprocess_wav

    embeddings = {}
    for name in sorted(names):
        wave, rate = sf.read(root / "test" / name, dtype="float32")
        embeddings[name] = encoder.embed_utterance(preprocess_wav(wave, rate))
    return embeddings


def pair_scores(embeddings: dict[str, np.ndarray], enroll: list[str], test: list[str]) -> np.ndarray:
    return np.array([float(embeddings[a] @ embeddings[b]) for a, b in zip(enroll, test)])


def standardise(scores: np.ndarray) -> np.ndarray:
    return (scores - scores.mean()) / scores.std()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", type=Path, help="Folders with trials.txt and test/.")
    parser.add_argument("--models", nargs="*", type=Path, default=[],
                        help="ghostvlad models (or run folders) to score and fuse with the reference.")
    parser.add_argument("--weight", type=float, default=0.3, help="The reference's weight in the fusion.")
    parser.add_argument("--cache-dir", type=Path, default=None, help="Embedding cache of the models (ghostvlad eval).")
    args = parser.parse_args()
    if not 0 <= args.weight <= 1:
        raise SystemExit(f"--weight must be in [0, 1], got {args.weight}")
    try:
        from resemblyzer import VoiceEncoder
    except ImportError:
        raise SystemExit("resemblyzer is not installed (pip install resemblyzer 'setuptools<81')") from None
    encoder = VoiceEncoder("cpu", verbose=False)
    models = {path: load_model(path) for path in args.models}
    header = "| set | trials | Resemblyzer GE2E EER % |" + "".join(
        f" {path} | fused (w {args.weight:g}) |" for path in models)
    print(header + "\n|" + "---|" * header.count(" |"))
    for root in args.sets:
        if not (root / "trials.txt").is_file():
            raise SystemExit(f"{root}: no trials.txt (not a trial set)")
        trials = read_trials(root / "trials.txt")
        embeddings = embed_set(encoder, root, {*trials.enroll, *trials.test})
        reference = pair_scores(embeddings, trials.enroll, trials.test)
        cells = [str(len(reference)), f"{100 * eer(reference, trials.labels)[0]:.1f}"]
        for model in models.values():
            result = evaluate(model, root / "trials.txt", root / "test", cache_dir=args.cache_dir)
            theirs = pair_scores(embeddings, result.enroll, result.test)  # the trials the model scored
            fused = (1 - args.weight) * standardise(result.scores) + args.weight * standardise(theirs)
            cells += [f"{100 * eer(result.scores, result.labels)[0]:.1f}", f"{100 * eer(fused, result.labels)[0]:.1f}"]
        print(f"| {root} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
