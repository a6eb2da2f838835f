"""How much do ensembles of independently trained models gain on held-out trial sets? (not a test)

For every set, the EER of each model alone and of every ensemble of ``k`` models (the mean of their cosine scores,
which is what one model of ``k`` branches computes: ``model.branches``), averaged over all ``k``-subsets of the
models given. Models trained on the same corpus with different seeds (``bench/transfer.py --seeds``) show how much
of a model's error is its own draw of initialisation and data order, and what ``model.branches=k`` can gain.
Each set folder holds ``trials.txt`` and the files under ``test/``, as :mod:`ghostvlad.data.synth` and
:mod:`ghostvlad.data.engine_set` write them.

    python bench/ensemble.py bench_out/engines bench_out/recorded --models bench_out/transfer/runs/demo-demo-astp-s*
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from ghostvlad.evaluate import evaluate
from ghostvlad.loading import load_model
from ghostvlad.scoring.metrics import eer


def subset_eers(scores: list[np.ndarray], labels: np.ndarray, sizes: list[int]) -> dict[int, float]:
    """Mean EER over every subset of ``k`` score vectors (scores averaged within the subset), per ``k``."""
    return {k: float(np.mean([eer(np.mean([scores[i] for i in subset], 0), labels)[0]
                              for subset in itertools.combinations(range(len(scores)), k)])) for k in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", type=Path, help="Folders with trials.txt and test/.")
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="ghostvlad models or run folders.")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 3, 4], help="Ensemble sizes k.")
    parser.add_argument("--cache-dir", type=Path, default=None, help="Embedding cache (as ghostvlad eval's).")
    args = parser.parse_args()
    sizes = [k for k in args.sizes if 1 <= k <= len(args.models)]
    if not sizes:
        parser.error(f"--sizes: none of {args.sizes} lies between 1 and the {len(args.models)} models")
    models = [load_model(path) for path in args.models]
    print("| set | trials | " + " | ".join(f"{k} model{'s' * (k > 1)}" for k in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    for root in args.sets:
        results = [evaluate(m, root / "trials.txt", root / "test", cache_dir=args.cache_dir) for m in models]
        got = subset_eers([r.scores for r in results], results[0].labels, sizes)
        print(f"| {root.name} | {len(results[0].labels)} | " + " | ".join(f"{100 * got[k]:.1f}" for k in sizes) + " |",
              flush=True)


if __name__ == "__main__":
    main()
