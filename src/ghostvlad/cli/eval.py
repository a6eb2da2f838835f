"""The ``eval`` command: EER / minDCF of a model on a verification trial list (optionally with AS-norm)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from .common import (DeviceOpt, MinDurOpt, MirrorOpt, ModelOpt, PrecisionOpt, VerifyCacheOpt, app, err, fail,
                     open_model, out, progress_callback, require_stored_model, resolve_auto, start_ranks)

if TYPE_CHECKING:
    from ..evaluate import EvalSummary


def _table(summary: EvalSummary):
    from rich.table import Table

    columns = {"cosine": summary, **({"AS-norm": summary.asnorm} if summary.asnorm is not None else {})}
    table = Table(title=summary.trials, caption=f"{summary.n_trials} trials scored, {summary.n_skipped} skipped")
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right")
    table.add_row("EER %", *(f"{100 * m.eer:.2f}" for m in columns.values()))
    table.add_row("threshold", *(f"{m.threshold:.4f}" for m in columns.values()))
    for p in summary.min_dcf:
        table.add_row(f"minDCF p={p:g}", *(f"{m.min_dcf[p]:.4f}" for m in columns.values()))
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
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", "--cache", help="Embedding cache folder (default: "
                                             "~/.cache/ghostvlad; lock-free part files, safe on network filesystems; "
                                             "with --shard it must be shared by the tasks)."),
    verify_cache: bool = VerifyCacheOpt,
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
    min_duration: float = MinDurOpt,
    batch_frames: int = typer.Option(3200, min=1, help="Cap on padded frames per batch (measured fastest on CPU: ~3200)."),
    workers: int = typer.Option(2, min=1, help="Threads reading metadata and decoding audio."),
    shard: Optional[str] = typer.Option(None, help="k/n: only embed every n-th file from the k-th into the cache (a "
                                        "job-array task); then run eval without --shard to score from the cache."),
    mirror: Optional[bool] = MirrorOpt,
    store_threshold: bool = typer.Option(False, "--store-threshold", help="Save the EER threshold into the model, for "
                                         "'verify' (with the model's own front-end: not with a --mirror override)."),
) -> None:
    """Score every trial by cosine similarity; report EER, minDCF (p=0.01, 0.05) and write scores, DET plot, JSON.

    Under `torchrun --nproc_per_node N -m ghostvlad eval ...` every rank embeds its share of the files on its own
    GPU and rank 0 scores (same results as one process).
    """
    from ..data.trials import TrialsError
    from ..errors import describe
    from ..evaluate import EvalError, embed_files, evaluate, read_cohort, write_outputs
    from ..modelfile import resolve_model_path
    from ..sharding import Shard, ShardError
    from ..train.distributed import teardown

    if not wav_root.is_dir():
        fail(f"{wav_root}: wav root is not a folder")
    try:
        part = None if shard is None else Shard.parse(shard)
    except ShardError as exc:
        fail(str(exc))
    ranks = start_ranks()
    if ranks is not None and part is not None:
        fail("--shard is for separate jobs; under torchrun the ranks share the files already")
    if ranks is not None and device == "auto":
        device = str(ranks.device)
    device, precision = resolve_auto(device, precision)
    model = open_model(model_path, precision, device, min_duration, None if store_threshold else mirror, batch_frames)
    if store_threshold:
        require_stored_model(model, model_path, "a threshold")
        if mirror is not None and mirror != model.frontend_config.mirror:
            fail(f"{model_path}: --store-threshold stores the threshold of the model as saved (mirror "
                 f"{'on' if model.frontend_config.mirror else 'off'}); drop --{'' if mirror else 'no-'}mirror to store "
                 "it, or --store-threshold to measure the override")
    if ranks is None or ranks.main:
        err.print(f"embedding on {device}, {precision}"
                  + (f", {ranks.world} ranks" if ranks else f", shard {part}" if part else ""), highlight=False)
    try:
        if part is not None:
            from ..data.trials import read_trials

            files = [os.path.join(wav_root, f) for f in read_trials(trials).files()]
            with progress_callback("embedding") as on_progress:
                done = embed_files(model, [*files, *(read_cohort(cohort) if cohort else [])], cache_dir, on_progress,
                                   workers=workers, shard=part, verify_cache=verify_cache)
            for message in done.errors.values():
                err.print(f"skipped {message}", highlight=False, markup=False)
            out.print(f"shard {part}: embedded {done.computed} files into the cache, {done.cached} were there, "
                      f"{len(done.errors)} failed; run eval without --shard to score", highlight=False)
            return
        with progress_callback("embedding") as on_progress:
            result = evaluate(model, trials, wav_root, cohort=cohort, top_k=top_k, cache_dir=cache_dir,
                              on_progress=on_progress, workers=workers, ranks=ranks, verify_cache=verify_cache)
    except (EvalError, TrialsError) as exc:
        fail(str(exc))
    finally:
        if ranks is not None and ranks.world > 1:
            teardown()
    if result is None:  # not rank 0: its files went to rank 0
        return
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
        model.threshold = result.summary.threshold
        model.save(resolve_model_path(model_path))
        out.print(f"stored threshold {model.threshold:.4f} in {model_path}", highlight=False)
