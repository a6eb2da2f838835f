"""Open-set identification on held-out speakers: enrolled from one session, asked from another (not a test).

For every synthetic corpus given (its ``speakers.json`` test split, as :mod:`ghostvlad.data.synth` writes it), each
test speaker in turn is left out of the gallery (an unknown voice) and the others are enrolled from one of their
sessions (the mean of its utterances' embeddings, as :class:`ghostvlad.gallery.Gallery` enrols); every utterance
of the enrolled speakers' other sessions and every utterance of the unknown speaker is a query, answered with the
best-scoring speaker or "unknown" below the threshold (as ``ghostvlad identify`` answers). Counts are pooled over
every left-out speaker and enrolment session (:func:`ghostvlad.scoring.identification.leave_one_out`). This is
the measurement of the transfer issue ("a gallery of 9 such speakers, enrolled from one session and queried from
the other: 21 % top-1; an unenrolled speaker was called unknown 0 times in 10").

Several models are stacked into one (``ghostvlad.inference.ensemble``: the mean of their cosines), as the demo
stacks its networks. The threshold is what ``ghostvlad identify`` decides by (``--threshold``, else the model's
calibrated EER point, else its stored threshold), else (an ensemble) the EER threshold of its scores on
``--threshold-set``'s trials (default: the first corpus; the demo stores the threshold of its own corpus's trials
likewise); ``--far`` adds stricter thresholds from those trials (an unknown voice gets one chance per enrolled
speaker to pass, so open-set galleries need them).

    python bench/identify.py bench_out/transfer/corpus-two-session-200 --models bench_out/transfer/runs/two-*-s{0,1,2}
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _runtime import add_runtime_options, apply_runtime_options

from ghostvlad.evaluate import embed_files, evaluate
from ghostvlad.inference import ensemble
from ghostvlad.loading import load_model
from ghostvlad.recipes import held_out_sessions
from ghostvlad.scoring.calibration import DecisionRule, far_threshold
from ghostvlad.scoring.identification import leave_one_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpora", nargs="+", type=Path, help="Synthetic corpora (speakers.json, test/).")
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="ghostvlad models or run folders.")
    parser.add_argument("--threshold", type=float, default=None, help="Accept a match scoring at least this.")
    parser.add_argument("--threshold-set", type=Path, default=None,
                        help="A folder with trials.txt and test/ for the thresholds an ensemble and --far use.")
    parser.add_argument("--far", nargs="*", type=float, default=[0.01],
                        help="Also decide at the thresholds of these false-accept rates on --threshold-set's trials.")
    parser.add_argument("--cache-dir", type=Path, default=None, help="Embedding cache (as ghostvlad eval's).")
    add_runtime_options(parser)
    args = parser.parse_args()
    apply_runtime_options(args)
    models = [load_model(path) for path in args.models]
    model = models[0] if len(models) == 1 else ensemble(models)
    calib = args.threshold_set or args.corpora[0]
    point = DecisionRule.for_model(model, threshold=args.threshold).point  # what `ghostvlad identify` decides by
    trials = evaluate(model, calib / "trials.txt", calib / "test", cache_dir=args.cache_dir) \
        if point is None or args.far else None
    thresholds = [(point.name, point.threshold) if point else (f"EER on {calib.name}", trials.summary.threshold)]
    thresholds += [(f"FAR {100 * far:g} % on {calib.name}", far_threshold(trials.scores, trials.labels, far))
                   for far in args.far]
    print(f"{len(models)} model(s)")
    print("| corpus | speakers (gallery) | queries: enrolled / unknown | top-1 | threshold "
          "| identified (right and accepted) | unknown called unknown |")
    print("|---|---|---|---|---|---|---|")
    for root in args.corpora:
        listed = held_out_sessions(root)
        done = embed_files(model, [p for _, _, files in listed for p in files], args.cache_dir)
        for reason in done.errors.values():
            print(f"skipped {reason}")
        sessions: dict[str, list[np.ndarray]] = {}
        for speaker, _, files in listed:
            kept = [done.embeddings[p] for p in files if p in done.embeddings]
            if kept:
                sessions.setdefault(speaker, []).append(np.stack(kept))
        for name, threshold in thresholds:
            c = leave_one_out(sessions, threshold)
            print(f"| {root.name} | {len(sessions)} ({len(sessions) - 1}) | {c.enrolled} / {c.unknown} "
                  f"| {100 * c.top1_rate:.1f} % | {threshold:.3f} ({name}) | {100 * c.identification_rate:.1f} % "
                  f"| {100 * c.unknown_rejection_rate:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
