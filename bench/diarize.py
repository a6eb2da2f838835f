"""Diarization speed and accuracy on this machine (a benchmark, not a test).

Builds a conversation from a synthetic corpus (``synthesize_corpus`` on a tiny configuration in a temporary
folder, or ``--corpus`` for an existing one): the test utterances of ``--speakers`` held-out speakers, taken in
turn order and concatenated with 0.2-0.8 s pauses of faint noise, so the true turns are known. Reports

* the real-time factor of :func:`ghostvlad.diarize.diarize` (speech detection, batched window embeddings,
  clustering) on ``--minutes`` of that conversation (repeated as needed), with the released configuration
  (``EncoderConfig()``, random weights) or ``--model``;
* the diarization error rate (``pyannote.metrics``; no collar and a 0.25 s collar) of the conversation, with the
  number of speakers given and estimated (from the model's threshold when it has one, and from the eigengap), next
  to putting all speech on one speaker; ``--seed`` changes the pauses between turns. With random weights the
  DER is meaningless (only the speech detection is measured): pass a trained model (``--model demo/model``).

    python bench/diarize.py [--model DIR] [--corpus DIR] [--speakers 4] [--minutes 3] [--threads 2]

"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from _runtime import add_runtime_options, apply_runtime_options
from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate

from ghostvlad.data.synth import SynthConfig, synthesize_corpus
from ghostvlad.diarize import diarize, speech_frames
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.loading import load_model
from ghostvlad.models import EncoderConfig, SpeakerEncoder

RATE = 16000
CORPUS = SynthConfig(speakers=5, test_speakers=4, sessions=1, utterances=6, min_duration=2.0, max_duration=5.0,
                     trials=0, seed=0)


def conversation(corpus: Path, speakers: int, seed: int) -> tuple[np.ndarray, Annotation]:
    """Round-robin turns of the first ``speakers`` test speakers' utterances, and the reference turns."""
    rng = np.random.default_rng(seed)
    folders = sorted(p for p in (corpus / "test").iterdir() if p.is_dir())[:speakers]
    if len(folders) < 2:
        raise SystemExit(f"{corpus}/test: needs at least 2 speakers, found {len(folders)}")
    queues = {f.name: sorted(f.rglob("*.wav")) for f in folders}
    parts, reference, t = [], Annotation(uri="conversation"), 0.0
    while any(queues.values()):
        for name, files in queues.items():
            if not files:
                continue
            wave, rate = sf.read(files.pop(0), dtype="float32")
            if rate != RATE:
                raise SystemExit(f"{files[0]}: expected {RATE} Hz, got {rate}")
            parts.append(wave)
            reference[Segment(t, t + len(wave) / RATE)] = name
            gap = rng.uniform(0.2, 0.8)
            parts.append(rng.normal(0, 3e-4, round(gap * RATE)).astype(np.float32))
            t += len(wave) / RATE + gap
    return np.concatenate(parts), reference


def hypothesis(segments) -> Annotation:
    out = Annotation(uri="conversation")
    for s in segments:
        out[Segment(s.start, s.end)] = s.speaker
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="Trained model (default: released configuration, random weights).")
    parser.add_argument("--corpus", type=Path, help="Existing synthetic corpus (default: synthesize a tiny one).")
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=3.0, help="Audio for the real-time factor.")
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--hop", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    add_runtime_options(parser)
    args = parser.parse_args()
    apply_runtime_options(args)
    warnings.filterwarnings("ignore", message="'uem' was approximated")
    if args.model:
        model = load_model(args.model)
    else:
        torch.manual_seed(0)
        model = SpeakerModel(SpeakerEncoder(EncoderConfig()), FrontEndConfig())
    cfg = model.config.flat()
    print(f"torch {torch.__version__}, {args.threads} threads, model {args.model or 'EncoderConfig() random weights'}: "
          f"{cfg['backbone']} width {cfg['width']:g} {cfg['pooling']} {cfg['clusters']}+{cfg['ghost_clusters']} "
          f"dim {cfg['embed_dim']}, "
          f"window {args.window} s hop {args.hop} s")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            corpus = Path(tmp) / "corpus"
            t0 = time.perf_counter()
            info = synthesize_corpus(corpus, CORPUS)
            print(f"synthesized {info['utterances']} utterances ({info['audio_seconds']:.0f} s) "
                  f"in {time.perf_counter() - t0:.1f} s")
        wave, reference = conversation(corpus, args.speakers, args.seed)
    duration = len(wave) / RATE
    speech = reference.get_timeline().support().duration()
    print(f"conversation: {len(reference.labels())} speakers, {len(reference)} turns, {duration:.1f} s "
          f"({speech:.1f} s speech)")

    long = np.tile(wave, int(np.ceil(args.minutes * 60 * RATE / len(wave))))[: round(args.minutes * 60 * RATE)]
    diarize(model, long[: 20 * RATE])  # warm-up
    t0 = time.perf_counter()
    vad = speech_frames(long)
    t_vad = time.perf_counter() - t0
    t0 = time.perf_counter()
    segments = diarize(model, long, len(reference.labels()))
    t_all = time.perf_counter() - t0
    seconds = len(long) / RATE
    print(f"speed on {seconds / 60:.1f} min: RTF {t_all / seconds:.4f} ({t_all:.1f} s; energy VAD alone "
          f"{t_vad * 1000:.0f} ms, {vad.mean():.0%} of frames speech), {len(segments)} segments")

    uem = Timeline([Segment(0, duration)])
    single = Annotation(uri="conversation")
    for region in reference.get_timeline().support():
        single[region] = "one"
    threshold = model.threshold
    runs = {"all speech one speaker (true turns)": single}
    t0 = time.perf_counter()
    runs["speakers given"] = hypothesis(diarize(model, wave, len(reference.labels())))
    if threshold is not None:
        runs[f"estimated, model threshold {threshold:.3f}"] = hypothesis(diarize(model, wave))
    model.threshold = None  # the eigengap estimate, as for a model without a threshold
    runs["estimated, eigengap"] = hypothesis(diarize(model, wave))
    model.threshold = threshold
    t_der = time.perf_counter() - t0
    print(f"{'DER on the conversation':<40} {'collar 0':>8} {'0.25 s':>8} {'speakers':>8}")
    for name, hyp in runs.items():
        scores = [DiarizationErrorRate(collar=c)(reference, hyp, uem=uem) for c in (0.0, 0.25)]
        print(f"{name:<40} {scores[0]:8.3f} {scores[1]:8.3f} {len(hyp.labels()):8d}")
    vad_hyp = Annotation(uri="conversation")
    for region in runs["speakers given"].get_timeline().support():
        vad_hyp[region] = "speech"
    ref_speech = Annotation(uri="conversation")
    for region in reference.get_timeline().support():
        ref_speech[region] = "speech"
    components = DiarizationErrorRate(collar=0.0)(ref_speech, vad_hyp, uem=uem, detailed=True)
    total = components["total"]
    print(f"speech detection alone: missed {components['missed detection'] / total:.3f}, "
          f"false alarm {components['false alarm'] / total:.3f} (of {total:.1f} s speech); "
          f"{len(runs) - 1} diarizations took {t_der:.1f} s")


if __name__ == "__main__":
    main()
