"""The ``eval`` command: EER / minDCF of a model on a verification trial list (optionally with AS-norm)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (
    DeviceOpt, MinDurOpt, ModelOpt, PrecisionOpt, VerifyCacheOpt, app, err, fail, open_model, out, require_stored_model,
)


def _table(summary: dict):
    from rich.table import Table

    columns = {"cosine": summary, **({"AS-norm": summary["asnorm"]} if "asnorm" in summary else {})}
    table = Table(title=summary.get("trials"),
                  caption=f"{summary['n_trials']} trials scored, {summary['n_skipped']} skipped")
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right")
    table.add_row("EER %", *(f"{100 * m['eer']:.2f}" for m in columns.values()))
    table.add_row("threshold", *(f"{m['threshold']:.4f}" for m in columns.values()))
    for key in (k for k in summary if k.startswith("min_dcf_p")):
        table.add_row(f"minDCF p={key.removeprefix('min_dcf_p')}", *(f"{m[key]:.4f}" for m in columns.values()))
    return table


@app.command("eval")
def eval_(
    model_path: Path = ModelOpt,
    trials: Path = typer.Option(..., "--trials", "-t", help="Trial list: '<0|1> <enrol> <test>' or '<enrol> <test> target|nontarget'."),
    wav_root: Path = typer.Option(..., "--wav-root", "-w", help="Folder the trial-list paths are relative to."),
    cohort: Optional[Path] = typer.Option(None, help="AS-norm cohort: manifest CSV (path,speaker,duration) or one audio path per line."),
    top_k: int = typer.Option(300, "--top-k", min=2, help="AS-norm: closest cohort scores used per side."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: eval/<trials stem>)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON summary to this file."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache", help="Embedding cache folder (default: ~/.cache/ghostvlad)."),
    verify_cache: bool = VerifyCacheOpt,
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
    min_duration: float = MinDurOpt,
    store_threshold: bool = typer.Option(False, "--store-threshold", help="Save the EER threshold into the model, for 'verify'."),
) -> None:
    """Score every trial by cosine similarity; report EER, minDCF (p=0.01, 0.05) and write scores, DET plot, JSON."""
    from ..data.trials import TrialsError
    from ..errors import describe
    from ..evaluate import EvalError, evaluate, write_outputs
    from ..modelfile import resolve_model_path

    if not wav_root.is_dir():
        fail(f"{wav_root}: wav root is not a folder")
    model = open_model(model_path, precision, device, min_duration)
    if store_threshold:
        require_stored_model(model, model_path, "a threshold")
    try:
        result = evaluate(model, trials, wav_root, cohort=cohort, top_k=top_k, cache_dir=cache_dir, progress=True,
                          verify_cache=verify_cache)
    except (EvalError, TrialsError) as exc:
        fail(str(exc))
    for message in result.bad_files.values():
        err.print(f"skipped {message}", highlight=False, markup=False)
    if result.cache_error:
        err.print(f"warning: {result.cache_error}", highlight=False, markup=False)
    out_dir = out_dir or Path("eval") / trials.stem
    try:
        write_outputs(result, out_dir, json_path)
    except OSError as exc:
        fail(f"cannot write the results: {describe(exc)}")
    out.print(_table(result.summary))
    out.print(f"wrote {out_dir}/ (scores, det.png, summary.json); embedded {result.computed} files, "
              f"{result.cached} from the cache", highlight=False)
    if store_threshold:
        model.threshold = result.summary["threshold"]
        model.save(resolve_model_path(model_path))
        out.print(f"stored threshold {model.threshold:.4f} in {model_path}", highlight=False)
