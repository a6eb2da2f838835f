"""The main job on an embedded default: synthesise speakers, train, evaluate on held-out speakers."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from .common import app, err, fail, out


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo"), "--out", "-o", help="Working folder (re-running resumes every stage)."),
    speakers: int = typer.Option(40, help="Synthetic speakers (a quarter held out for testing)."),
    seed: int = typer.Option(0, help="Seed of the corpus and the training run."),
    epochs: int = typer.Option(None, help="Override the demo config's epochs."),
) -> None:
    """Synthesise a multi-speaker corpus, train the `demo` config on it, evaluate EER/minDCF on held-out speakers."""
    from rich.table import Table

    from ..audio import AudioError
    from ..data.manifest import build_manifest, scan_voxceleb, speaker_of
    from ..data.synth import SynthConfig, synthesize_corpus
    from ..evaluate import evaluate, write_outputs
    from ..inference import load_model
    from ..modelfile import resolve_model_path
    from ..train.config import load_config
    from ..train.loop import Trainer, TrainError

    corpus, run, report = out_dir / "corpus", out_dir / "run", out_dir / "eval"
    timings = {}

    t0 = time.perf_counter()
    err.print(f"[1/4] synthesising {speakers} speakers into {corpus}", highlight=False)
    # many sessions of few utterances: a speaker's identity, not its recording channels, must explain the data
    config = SynthConfig(speakers=speakers, test_speakers=max(2, speakers // 4), sessions=10, utterances=2, seed=seed)
    synth = synthesize_corpus(corpus, config, progress=err.is_terminal)
    timings["synthesis"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    err.print("[2/4] checking the training audio and writing the manifest", highlight=False)
    files = scan_voxceleb(corpus / "dev")
    manifest = build_manifest(files, [speaker_of(f, corpus / "dev") for f in files], corpus / "dev.csv",
                              progress=err.is_terminal)
    timings["manifest"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    err.print("[3/4] training the demo config (resumes if interrupted)", highlight=False)
    overrides = [f"valid.trials={corpus / 'trials.txt'}", f"valid.wav_root={corpus / 'test'}", f"train.seed={seed}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")

    def on_log(row: dict, steps: int) -> None:
        err.print(f"  epoch {row['epoch']} step {row['step']}/{steps} loss {row['loss']} acc {row['acc']} "
                  f"{row['crops_per_s']} crops/s", highlight=False)

    try:
        trainer = Trainer(load_config("demo", overrides), manifest.manifest, run, device="cpu")
        trainer.run(on_log=on_log)
    except (TrainError, AudioError, ValueError) as exc:
        fail(str(exc))
    timings["training"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    err.print("[4/4] evaluating on held-out speakers", highlight=False)
    model = load_model(run)
    result = evaluate(model, corpus / "trials.txt", corpus / "test", cache_dir=out_dir / "cache")
    write_outputs(result, report)
    model.threshold = result.summary["threshold"]
    model.save(run / "model")
    timings["evaluation"] = time.perf_counter() - t0

    s = result.summary
    table = Table(title=f"ghostvlad demo: {synth['test_speakers']} held-out synthetic speakers")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("trials (target / non-target)", f"{int(result.labels.sum())} / {int((1 - result.labels).sum())}")
    table.add_row("EER", f"{100 * s['eer']:.2f} %")
    table.add_row("minDCF (p=0.01)", f"{s['min_dcf_p0.01']:.3f}")
    table.add_row("minDCF (p=0.05)", f"{s['min_dcf_p0.05']:.3f}")
    table.add_row("threshold at EER", f"{s['threshold']:.3f}")
    for stage, seconds in timings.items():
        table.add_row(f"time: {stage}", f"{seconds:.0f} s")
    out.print(table)
    out.print(f"model: {run / 'model'} (threshold stored)   DET plot and scores: {report}/", highlight=False)
