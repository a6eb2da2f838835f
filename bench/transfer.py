"""Transfer benchmark and pooling ablation: does a recipe learn voices, or recording channels? (not a test)

For every (scenario, recipe, pooling, seed) it trains the ``demo`` network on a synthetic corpus and measures

* in-domain: held-out speakers of the training corpus's own voices and channel family, trials across sessions;
* cross-domain: :data:`ghostvlad.recipes.CROSS_DOMAIN`, unseen speakers through channel types that neither the
  training corpus nor the augmentation has: telephone lines, AMR-NB / G.726 / G.722 / RealAudio 14.4 / Nellymoser
  codecs, saturation, larger rooms;
* the mean target cosine within a session and across sessions (the gap shows channel learning), and non-target;
* with ``--engines DIR``, also "engines": the cross-engine held-out set of :mod:`ghostvlad.data.engine_set`
  (MBROLA, SVOX Pico, RHVoice, Kokoro and Piper voices, no espeak-ng synthesis, through field channels), built in
  DIR on first use and reused after (a finished set, e.g. one built with other voices, is scored as it is); needs
  those engines (README, More voices), skips the ones missing;
* with ``--recorded DIR``, also "recorded": real talkers (Debian ``ktuberling-data``'s word recordings, one person
  per language) through field channels, the ``recorded`` family of :mod:`ghostvlad.data.engine_set`, built likewise;
* with ``--tuxpaint DIR``, also "tuxpaint": other real talkers (Debian ``tuxpaint-stamps-default``'s spoken stamp
  descriptions, one volunteer per language; :func:`ghostvlad.data.engine_set.tuxpaint_talkers` lays them out in
  ``DIR-talkers``) through field channels, the same family, built likewise.

Scenarios: ``demo`` trains on the demo corpus (:data:`ghostvlad.recipes.DEMO_CORPUS`, sized by ``--speakers``,
``--sessions``, ``--utterances``, with ``--trials`` in-domain trials);
``two-session`` on 30 speakers who each have two sessions of very different channels (the case where a model is
most tempted to learn channels), tested on its 10 unseen speakers. Recipes: ``baseline`` (no augmentation, no
speed perturbation, random batches: the previous demo recipe) and ``demo`` (the shipped demo config).
Results are kept per run under ``--work`` (a re-run skips finished runs); the table gives mean +- std over seeds.

    python bench/transfer.py --scenario demo --recipes baseline demo --poolings tap --seeds 0
    python bench/transfer.py --scenario demo --recipes demo --poolings tap tstp astp vlad gvlad --seeds 0 1 2
    python bench/transfer.py --recipes demo --poolings astp --seeds 0 1 2 --epochs 6 --side-by-side 3  # make demo's
    python bench/transfer.py --scenario demo --recipes demo --poolings tap --engines bench_out/engines \
        --recorded bench_out/recorded --tuxpaint bench_out/tuxpaint
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from _runtime import add_runtime_options, apply_runtime_options

from ghostvlad.data.augment import STAGE_ORDER
from ghostvlad.data.engine_set import EngineSetConfig, build_engine_set, tuxpaint_talkers
from ghostvlad.data.synth import SynthConfig
from ghostvlad.data.voices import EngineUnavailable
from ghostvlad.fileio import atomic_write_text
from ghostvlad.loading import load_model
from ghostvlad.recipes import (CROSS_DOMAIN, DEMO_CORPUS, score_corpus, synthesize, train_on_corpus,
                               train_side_by_side)

OFF = "data.augment={" + ", ".join(f"{stage}: 0" for stage in STAGE_ORDER) + "}"
RECIPES = {"baseline": [OFF, "data.speeds=[1.0]", "train.sampler=random", "head.prototypical=0"], "demo": []}
POOLING = {"tap": [], "tstp": [], "astp": [],
           "vlad": ["model.clusters=8"], "gvlad": ["model.clusters=8", "model.ghost_clusters=2"]}


def corpus_config(scenario: str, args) -> SynthConfig:
    if scenario == "demo":
        return replace(DEMO_CORPUS, speakers=args.speakers, test_speakers=max(2, args.speakers // 10),
                       voices=args.voices, sessions=args.sessions, utterances=args.utterances, trials=args.trials,
                       drift=args.drift)
    return replace(DEMO_CORPUS, speakers=40, test_speakers=10, sessions=2, utterances=10, trials=2000, seed=200,
                   voices="all", drift=1.0)


def run_name(scenario: str, recipe: str, pooling: str, seed: int) -> str:
    return f"{scenario}-{recipe}-{pooling}-s{seed}"


def training_corpus(work: Path, scenario: str, args) -> Path:
    """The scenario's training corpus under ``work`` (synthesised on first use), named by what differs from the
    demo's."""
    config = corpus_config(scenario, args)
    changed = [name for name in ("voices", "sessions", "utterances", "trials", "drift")
               if scenario == "demo" and getattr(config, name) != getattr(DEMO_CORPUS, name)]
    suffix = "".join(f"-{config.voices}" if name == "voices" else f"-{getattr(config, name)}{name}" for name in changed)
    return synthesize(work / f"corpus-{scenario}-{args.speakers}{suffix}", config)


def overrides_of(recipe: str, pooling: str, seed: int, args) -> list[str]:
    return [*RECIPES[recipe], f"model.pooling={pooling}", *POOLING[pooling], f"train.seed={seed}",
            f"train.epochs={args.epochs}", "data.workers=1", *args.set]


def train_runs(work: Path, scenario: str, jobs: list[tuple[str, str, int]], args) -> dict[str, float]:
    """Train the (recipe, pooling, seed) runs not finished yet, ``--side-by-side`` at a time; their wall times (s):
    a run's own one after the other, its group's side by side."""
    corpus = training_corpus(work, scenario, args)
    todo = [job for job in jobs if not (work / "results" / f"{run_name(scenario, *job)}.json").exists()]
    seconds = {}
    for first in range(0, len(todo), args.side_by_side):
        group = todo[first:first + args.side_by_side]
        names = [run_name(scenario, *job) for job in group]
        t0 = time.perf_counter()
        if args.side_by_side == 1:
            train_on_corpus(corpus, work / "runs" / names[0], "demo", overrides_of(*group[0], args))
        else:
            train_side_by_side(corpus, [work / "runs" / name for name in names],
                               [overrides_of(*job, args) for job in group])
        seconds.update(dict.fromkeys(names, round(time.perf_counter() - t0, 1)))
    return seconds


def score_run(work: Path, scenario: str, recipe: str, pooling: str, seed: int, train_s: float | None, args) -> dict:
    """The run's row of results: scored and written once, read back after (and scored on sets added since)."""
    name = run_name(scenario, recipe, pooling, seed)
    result_path = work / "results" / f"{name}.json"
    if result_path.exists():
        row = json.loads(result_path.read_text())
        missing = {k: d for k, d in held_out_sets(args).items() if k not in row}  # sets added since that run
        if missing:
            model = load_model(work / "runs" / name)
            row.update({k: asdict(score_corpus(model, d, work / "cache")[0]) for k, d in missing.items()})
            atomic_write_text(result_path, json.dumps(row, indent=1))
        return row
    corpus, cross = training_corpus(work, scenario, args), synthesize(work / "cross", CROSS_DOMAIN)
    model = load_model(work / "runs" / name)
    cache = work / "cache"
    in_domain, _ = score_corpus(model, corpus, cache)
    cross_domain, _ = score_corpus(model, cross, cache)
    row = {"scenario": scenario, "recipe": recipe, "pooling": pooling, "seed": seed, "train_s": train_s,
           "side_by_side": args.side_by_side, "in_domain": asdict(in_domain), "cross_domain": asdict(cross_domain)}
    row.update({k: asdict(score_corpus(model, d, cache)[0]) for k, d in held_out_sets(args).items()})
    result_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(result_path, json.dumps(row, indent=1))
    return row


def held_out_sets(args) -> dict[str, Path]:
    """The optional held-out sets asked for: column name -> folder."""
    return {k: d for k, d in (("engines", args.engines), ("recorded", args.recorded), ("tuxpaint", args.tuxpaint))
            if d is not None}


def cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    v = np.array(values) * scale
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench_out/transfer"))
    parser.add_argument("--scenario", choices=["demo", "two-session"], default="demo")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["demo"])
    parser.add_argument("--poolings", nargs="+", choices=list(POOLING), default=["tap"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--speakers", type=int, default=DEMO_CORPUS.speakers, help="Demo scenario corpus size.")
    parser.add_argument("--voices", default=DEMO_CORPUS.voices, choices=["all", "formant", "klatt"],
                        help="Demo scenario training voices (synth pool).")
    parser.add_argument("--sessions", type=int, default=DEMO_CORPUS.sessions, help="Demo scenario sessions a speaker.")
    parser.add_argument("--utterances", type=int, default=DEMO_CORPUS.utterances,
                        help="Demo scenario utterances a session.")
    parser.add_argument("--trials", type=int, default=DEMO_CORPUS.trials, help="Demo scenario in-domain trials.")
    parser.add_argument("--drift", type=float, default=DEMO_CORPUS.drift,
                        help="Demo scenario: scale of a session's pitch and rate drift (SynthConfig.drift).")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--set", nargs="*", default=[], help="Extra config overrides (key.sub=value).")
    parser.add_argument("--side-by-side", type=int, default=1, metavar="N",
                        help="Train N runs at once, each in its own process with one compute thread, as `ghostvlad "
                             "demo` trains its networks (the same weights as the demo's for the demo recipe's seeds); "
                             "1: one after the other at this process's thread count.")
    parser.add_argument("--engines", type=Path, default=None,
                        help="Also score on the cross-engine held-out set in this folder (built on first use; a "
                             "finished set there is used as it is).")
    parser.add_argument("--recorded", type=Path, default=None,
                        help="Also score on real recorded talkers (apt-get install ktuberling-data) in this folder "
                             "(built on first use; a finished set there is used as it is).")
    parser.add_argument("--tuxpaint", type=Path, default=None,
                        help="Also score on other real talkers (apt-get install tuxpaint-stamps-default) in this "
                             "folder (built on first use, their recordings linked from DIR-talkers; a finished set "
                             "there is used as it is).")
    add_runtime_options(parser)
    args = parser.parse_args()
    if args.side_by_side < 1:
        parser.error(f"--side-by-side {args.side_by_side}: give 1 or more runs at once")
    apply_runtime_options(args)
    for option, folder, family in (("--engines", args.engines, "engines"), ("--recorded", args.recorded, "recorded"),
                                   ("--tuxpaint", args.tuxpaint, "recorded")):
        if folder is None:
            continue
        if (folder / "trials.txt").is_file():  # written last: a finished set, scored as it is whatever built it
            trials = len((folder / "trials.txt").read_text().splitlines())
            print(f"{family} set {folder}: as built ({trials} trials)")
            continue
        try:
            config = EngineSetConfig(family=family)
            if option == "--tuxpaint":
                config = replace(config, recorded_dir=str(tuxpaint_talkers(folder.with_name(folder.name + "-talkers"))))
            built = build_engine_set(folder, config, on_progress=lambda done, total: print(
                f"\r{family} set: {done}/{total} utterances", end="\n" if done == total else "", file=sys.stderr))
        except (EngineUnavailable, ValueError, OSError) as err:  # OSError: e.g. a read-only folder for the links
            raise SystemExit(f"{option} {folder}: {err}") from None
        print(f"{family} set {folder}: {built['speakers']} voices, {built['trials']} trials"
              + (f"; skipped {', '.join(built['skipped'])}" if built["skipped"] else ""))
    jobs = [(r, p, s) for r in args.recipes for p in args.poolings for s in args.seeds]
    seconds = train_runs(args.work, args.scenario, jobs, args)
    rows = [score_run(args.work, args.scenario, *job, seconds.get(run_name(args.scenario, *job)), args)
            for job in jobs]
    print(f"\n{args.scenario}: EER % and mean cosines (mean ± std over seeds {args.seeds})")
    extra = list(held_out_sets(args))
    print("| recipe | pooling | in-domain EER | cross-domain EER | " + "".join(f"{k} EER | " for k in extra)
          + "cross-domain minDCF(0.05) | target cos same / cross session (in-domain) | non-target cos | train s |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(extra))
    for r in args.recipes:
        for p in args.poolings:
            got = [row for row in rows if row["recipe"] == r and row["pooling"] == p]
            ind, crd = [g["in_domain"] for g in got], [g["cross_domain"] for g in got]
            eng = "".join(f"{cell([g[k]['eer'] for g in got])} | " for k in extra)
            print(f"| {r} | {p} | {cell([x['eer'] for x in ind])} | {cell([x['eer'] for x in crd])} | {eng}"
                  f"{cell([x['min_dcf'] for x in crd], 1, 3)} | "
                  f"{cell([x['cos_same_session'] for x in ind], 1, 2)} / "
                  f"{cell([x['cos_cross_session'] for x in ind], 1, 2)} | "
                  f"{cell([x['cos_nontarget'] for x in ind], 1, 2)} | {cell([g['train_s'] for g in got], 1, 0)} |")


if __name__ == "__main__":
    main()
