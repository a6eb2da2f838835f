"""Recipes on synthetic speakers: train on one corpus, measure in-domain and cross-domain transfer, the demo.

A transfer check scores held-out speakers of the training corpus (in-domain) and unseen speakers heard through
channel types that neither the training corpus nor the augmentation has (:data:`CROSS_DOMAIN`: telephone lines,
AMR-NB / G.726 / G.722 / RealAudio 14.4 / Nellymoser codecs, saturation, larger rooms). Besides the EER it
reports the mean cosine of target pairs within one session and across sessions, and of non-target pairs: a
model that recognises recording channels rather than voices scores same-session pairs far above cross-session
ones. ``bench/transfer.py`` adds voices of other synthesis engines (:mod:`ghostvlad.data.engine_set`).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .data.manifest import build_manifest, scan_voxceleb, speaker_of
from .data.synth import OnProgress, SynthConfig, synthesize_corpus
from .evaluate import EvalResult, embed_files, evaluate, write_outputs
from .embedding import Embedder
from .inference import ensemble
from .loading import load_model
from .precision import native_bf16, resolve_precision
from .scoring.calibration import CalibrationError, fit_calibration
from .train.config import load_config
from .train.loop import LogRow, Trainer

# Training corpus of the demo: many speakers, few utterances each, every utterance of a session through one channel.
# Every session of a speaker has the same voice (drift 0): over seeds 0-4, drift 1 / 0.5 / 0 gave one network a
# held-out EER of 25.7 / 24.4 / 23.0 % and stacks of three 22.8 / 22.4 / 19.7 % (docs/transfer.md "More or less
# pitch and rate drift between sessions"); seeds 5-9 gave drift 1 and 0 the same (24.3 / 24.9, stacks 21.2 / 21.0:
# docs/transfer.md "Five fresh seeds: drift and MixStyle")
DEMO_CORPUS = SynthConfig(speakers=200, test_speakers=20, sessions=4, utterances=2, min_duration=2.0,
                          max_duration=5.0, trials=900, seed=0, voices="all", channels="studio", drift=0.0)
# Unseen speakers through unseen channel types: the cross-domain test set
CROSS_DOMAIN = SynthConfig(speakers=13, test_speakers=12, sessions=3, utterances=3, min_duration=2.0,
                           max_duration=5.0, trials=600, seed=1000, voices="all", channels="field")

# Networks the demo trains (train.seed = seed, seed + 1, ...) and stacks into its model (ghostvlad.inference.ensemble):
# which random draw of the training one run makes moves the held-out EER by about 3 points; over 5 seeds, two
# stacked runs gave a held-out mean EER of 19.9 % against 21.0 % for one run (docs/transfer.md "Ensembles"). The
# band-limited front-end (demo.yaml's frontend.max_freq) trains a network in 0.6 times the time, so three fit where
# two did: over the same 5 seeds, real talkers 26.7 % against 28.4 % for two full-band networks (docs/transfer.md
# "A band-limited front-end")
DEMO_MEMBERS = 3
# The demo trains its networks side by side, one compute thread each: networks this thin use a second thread poorly
# (2 cores: the demo's training took 327 s, one network after the other with two threads each 525-584 s), a
# network's draw then does not depend on the machine's core count, and over 6 paired seeds one thread scored as two
# did (held-out mean -0.5 +- 1.4 points: docs/transfer.md "The demo's networks side by side")
MEMBER_THREADS = 1

Stage = Callable[[str], None]


@dataclass
class TransferScores:
    """Verification on one test corpus, plus the cosine statistics that show channel learning."""

    eer: float
    min_dcf: float  # p_target = 0.05
    threshold: float
    trials: int
    cos_same_session: float  # mean cosine of target pairs recorded in one session
    cos_cross_session: float  # mean cosine of target pairs from different sessions
    cos_nontarget: float  # mean cosine of different speakers

    @property
    def session_gap(self) -> float:
        """Same-session minus cross-session target cosine: near 0 for a model of voices, large for channels."""
        return self.cos_same_session - self.cos_cross_session


def synthesize(root: str | os.PathLike, config: SynthConfig, workers: int | None = None,
               on_progress: OnProgress | None = None) -> Path:
    """A synthetic corpus at ``root`` (resumes; see :func:`ghostvlad.data.synth.synthesize_corpus`)."""
    synthesize_corpus(root, config, workers=workers, on_progress=on_progress)
    return Path(root)


def train_on_corpus(corpus: str | os.PathLike, run: str | os.PathLike, config: str = "demo",
                    overrides: Sequence[str] = (), validate: bool = True, on_log: LogRow | None = None) -> Path:
    """Train ``config`` on the ``dev`` speakers of a synthetic corpus (validating on its trials); returns the run
    folder, whose exported model (``valid.select``) is a loadable model. Resumes an interrupted run."""
    corpus, run = Path(corpus), Path(run)
    files = scan_voxceleb(corpus / "dev")
    manifest = build_manifest(files, [speaker_of(f, corpus / "dev") for f in files], corpus / "dev.csv")
    valid = [f"valid.trials={corpus / 'trials.txt'}", f"valid.wav_root={corpus / 'test'}"] if validate else []
    Trainer(load_config(config, [*valid, *overrides]), manifest.manifest, run, device="cpu").run(on_log=on_log)
    return run


def held_out_sessions(corpus: Path) -> list[tuple[str, str, list[str]]]:
    """(speaker, session, wav paths) of the corpus's test split, from its ``speakers.json``."""
    speakers = json.loads((corpus / "speakers.json").read_text())
    out = []
    for speaker, entry in speakers.items():
        if entry["split"] != "test":
            continue
        for session, info in entry["sessions"].items():
            folder = corpus / "test" / speaker / session
            out.append((speaker, session, [str(folder / f"{u + 1:05d}.wav") for u in range(len(info["durations"]))]))
    return out


def session_cosines(model: Embedder, corpus: str | os.PathLike,
                    cache_dir: str | os.PathLike | None = None) -> tuple[float, float, float]:
    """Mean cosine of same-session target pairs, cross-session target pairs and non-target pairs over all test
    utterances of a synthetic corpus."""
    sessions = held_out_sessions(Path(corpus))
    paths = [p for _, _, files in sessions for p in files]
    done = embed_files(model, paths, cache_dir)
    keep = [i for i, p in enumerate(paths) if p in done.embeddings]
    emb = np.stack([done.embeddings[paths[i]] for i in keep]).astype(np.float64)
    speaker = np.array([s for s, _, files in sessions for _ in files])[keep]
    session = np.array([f"{s}/{v}" for s, v, files in sessions for _ in files])[keep]
    cos = emb @ emb.T
    upper = np.triu(np.ones_like(cos, dtype=bool), 1)
    same_speaker = speaker[:, None] == speaker[None, :]
    same_session = session[:, None] == session[None, :]
    return (float(cos[upper & same_session].mean()), float(cos[upper & same_speaker & ~same_session].mean()),
            float(cos[upper & ~same_speaker].mean()))


def score_corpus(model: Embedder, corpus: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 report: str | os.PathLike | None = None) -> tuple[TransferScores, EvalResult]:
    """Evaluate ``model`` on a synthetic corpus's trials (and write ``report`` outputs when given)."""
    corpus = Path(corpus)
    result = evaluate(model, corpus / "trials.txt", corpus / "test", cache_dir=cache_dir)
    if report is not None:
        write_outputs(result, report)
    s = result.summary
    same, cross, non = session_cosines(model, corpus, cache_dir)
    return TransferScores(s.eer, s.min_dcf[0.05], s.threshold, s.n_trials, same, cross, non), result


_progress: queue.Queue | None = None  # in a member's process: where its training rows go


def _start_member(progress: queue.Queue | None) -> None:
    global _progress
    torch.set_num_threads(MEMBER_THREADS)
    _progress = progress


def _train_member(k: int, corpus: str, run: str, overrides: list[str]) -> None:
    try:
        log = None if _progress is None else (lambda row, steps: _progress.put((k, row, steps)))
        train_on_corpus(corpus, run, "demo", overrides, on_log=log)
    finally:
        if _progress is not None:
            _progress.put((k, None, 0))  # after all of this member's rows (one process's puts arrive in order)


def train_side_by_side(corpus: str | os.PathLike, runs: Sequence[str | os.PathLike],
                       overrides: Sequence[Sequence[str]], on_log: LogRow | None = None) -> None:
    """Train the ``demo`` config into each of ``runs`` (with its ``overrides``) at once, each in a process of its own
    with :data:`MEMBER_THREADS` compute threads; ``on_log(row, steps)`` gets every run's logged rows (``network``: 1,
    2, ...). Every run is finished or resumable when this returns or raises (the first run's error, after all ended).
    """
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no copied torch thread pools
    progress = context.Queue() if on_log is not None else None
    with ProcessPoolExecutor(len(runs), mp_context=context, initializer=_start_member, initargs=(progress,)) as pool:
        futures = [pool.submit(_train_member, k, str(corpus), str(run), list(extra))
                   for k, (run, extra) in enumerate(zip(runs, overrides, strict=True))]
        ended = 0
        while progress is not None and ended < len(runs):
            try:
                k, row, steps = progress.get(timeout=0.5)
            except queue.Empty:
                if all(f.done() for f in futures):  # a process that died without saying so
                    break
                continue
            if row is None:
                ended += 1
            else:
                on_log({**row, "network": k + 1}, steps)
    for future in futures:
        future.result()


@dataclass
class DemoResult:
    in_domain: TransferScores
    cross_domain: TransferScores
    model: Path
    report: Path
    timings: dict[str, float] = field(default_factory=dict)
    operating_points: dict[str, float] = field(default_factory=dict)  # the model's calibrated thresholds, by name

    def to_dict(self) -> dict:
        return {"in_domain": asdict(self.in_domain), "cross_domain": asdict(self.cross_domain),
                "model": str(self.model), "timings": self.timings, "operating_points": self.operating_points}


def run_demo(out_dir: str | os.PathLike, seed: int = 0, speakers: int | None = None, epochs: int | None = None,
             overrides: Sequence[str] = (), on_stage: Stage | None = None, on_log: LogRow | None = None,
             on_synth: OnProgress | None = None) -> DemoResult:
    """Synthesise the demo corpus and the cross-domain set, train the ``demo`` config :data:`DEMO_MEMBERS` times
    side by side (``out_dir/run``, ``out_dir/run-1``, ...; :func:`train_side_by_side`) and stack the networks into
    one model, evaluate it on both.

    Every stage resumes when re-run into the same ``out_dir``. The model is written to ``out_dir/model`` with its
    EER threshold on the in-domain trials and a calibration fitted on them (operating points ``eer`` and
    ``far@0.01``: a gallery that must call unknown voices unknown needs the stricter one; none when the trials
    separate perfectly); scores, DET plots and ``summary.json`` files to ``out_dir/eval``. ``on_stage(text)``
    announces each stage, ``on_synth(done, total)`` counts synthesised utterances (per corpus), ``on_log(row,
    steps)`` reports training's logged rows (with ``network``: which of the networks, from 1).
    """
    out = Path(out_dir)
    stage = on_stage or (lambda text: None)
    corpus_config = replace(DEMO_CORPUS, seed=seed)
    if speakers is not None:
        corpus_config = replace(corpus_config, speakers=speakers, test_speakers=max(2, speakers // 10))
    timings = {}

    t0 = time.perf_counter()
    stage(f"synthesising {corpus_config.speakers} training/test speakers and {CROSS_DOMAIN.test_speakers} "
          "cross-domain speakers")
    corpus = synthesize(out / "corpus", corpus_config, on_progress=on_synth)
    cross = synthesize(out / "cross", CROSS_DOMAIN, on_progress=on_synth)
    timings["synthesis"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cpu = torch.device("cpu")
    precision = resolve_precision(load_config("demo", overrides).train.precision, cpu).name
    stage(f"training the demo config {DEMO_MEMBERS} times side by side (train.seed {seed} to "
          f"{seed + DEMO_MEMBERS - 1}, {precision}"
          f"{'' if native_bf16(cpu) else ': this CPU has no native bfloat16, so this takes longer'}; resumes if "
          "interrupted)")
    runs = [out / ("run" if k == 0 else f"run-{k}") for k in range(DEMO_MEMBERS)]
    train_side_by_side(corpus, runs, [[f"train.seed={seed + k}", *([f"train.epochs={epochs}"] if epochs is not None
                                                                   else []), *overrides] for k in range(DEMO_MEMBERS)],
                       on_log)
    timings["training"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stage("evaluating on held-out speakers: in-domain and cross-domain")
    model = ensemble([load_model(run) for run in runs])
    cache = out / "cache"
    in_domain, scored = score_corpus(model, corpus, cache, out / "eval" / "in-domain")
    cross_domain, _ = score_corpus(model, cross, cache, out / "eval" / "cross-domain")
    model.threshold = in_domain.threshold
    try:
        calibration = fit_calibration(scored.scores, scored.labels)
    except CalibrationError:  # perfectly separated trials: no finite score -> LLR map, the threshold alone decides
        calibration = None
    model.calibration = None if calibration is None else calibration.to_dict()
    model.save(out / "model")
    timings["evaluation"] = time.perf_counter() - t0
    return DemoResult(in_domain, cross_domain, out / "model", out / "eval", timings,
                      {} if calibration is None else dict(calibration.thresholds))
