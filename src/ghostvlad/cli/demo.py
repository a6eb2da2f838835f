"""The main job on an embedded default: synthesise speakers, train, evaluate in-domain and cross-domain."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import app, err, fail, out, progress_bar, sleeping_thread_waits


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo"), "--out", "-o", help="Working folder (re-running resumes every stage)."),
    speakers: Optional[int] = typer.Option(None, help="Synthetic speakers (a tenth held out for testing; default 200)."),
    seed: int = typer.Option(0, help="Seed of the corpus and the first training run (the others: seed + 1, ...)."),
    epochs: Optional[int] = typer.Option(None, help="Override the demo config's epochs."),
) -> None:
    """Synthesise a multi-speaker corpus, train the `demo` config on it three times and stack the networks into one
    model, and evaluate EER/minDCF on held-out speakers of its voices and channels (in-domain) and on unseen
    speakers heard through channel types the training never saw (cross-domain: telephone lines, speech codecs,
    saturation)."""
    sleeping_thread_waits()  # before torch is imported
    from rich.table import Table

    from ..errors import GhostvladError, describe
    from ..recipes import DEMO_MEMBERS, run_demo

    steps = iter(range(1, 4))
    bar = progress_bar()
    task = bar.add_task("  synth (utterances)", total=None)

    def on_stage(text: str) -> None:
        step = next(steps)
        bar.update(task, visible=step == 1)  # the bar counts synthesised utterances
        err.print(f"[{step}/3] {text}", highlight=False)

    def on_log(row: dict, total: int) -> None:
        err.print(f"  network {row['network']}/{DEMO_MEMBERS} epoch {row['epoch']} step {row['step']}/{total} "
                  f"loss {row['loss']} acc {row['acc']} {row['crops_per_s']} crops/s", highlight=False)

    try:
        with bar:
            result = run_demo(out_dir, seed=seed, speakers=speakers, epochs=epochs, on_stage=on_stage, on_log=on_log,
                              on_synth=lambda done, total: bar.update(task, completed=done, total=total))
    except (GhostvladError, OSError) as exc:
        fail(describe(exc))

    table = Table(title="ghostvlad demo: held-out synthetic speakers")
    table.add_column("metric")
    table.add_column("in-domain", justify="right")
    table.add_column("cross-domain", justify="right")
    a, b = result.in_domain, result.cross_domain
    table.add_row("trials", str(a.trials), str(b.trials))
    table.add_row("EER", f"{100 * a.eer:.2f} %", f"{100 * b.eer:.2f} %")
    table.add_row("minDCF (p=0.05)", f"{a.min_dcf:.3f}", f"{b.min_dcf:.3f}")
    table.add_row("target cosine, same session", f"{a.cos_same_session:.3f}", f"{b.cos_same_session:.3f}")
    table.add_row("target cosine, other session", f"{a.cos_cross_session:.3f}", f"{b.cos_cross_session:.3f}")
    table.add_row("non-target cosine", f"{a.cos_nontarget:.3f}", f"{b.cos_nontarget:.3f}")
    for stage, seconds in result.timings.items():
        table.add_row(f"time: {stage}", f"{seconds:.0f} s", "")
    out.print(table)
    (result.report / "demo.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    points = ", ".join(f"{name} {value:.3f}" for name, value in result.operating_points.items())
    stored = f"calibrated, operating points {points}" if points else "threshold stored"
    out.print(f"model: {result.model} ({stored})   DET plots, scores, demo.json: {result.report}/", highlight=False)
