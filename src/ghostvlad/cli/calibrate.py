"""The ``calibrate`` command: fit score -> LLR calibration and operating points on a trial list, store them."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (
    DeviceOpt, MinDurOpt, ModelOpt, PrecisionOpt, VerifyCacheOpt, app, err, fail, open_model, out, progress_callback,
    require_stored_model,
)

OperatingPointOpt = typer.Option(
    None, "--operating-point",
    help="eer, far@0.01, ... (stored by 'ghostvlad calibrate'), or bayes (P(same) >= 1/2 at --prior). "
         "Default: eer when calibrated, else the model's stored threshold.")
ThresholdOpt = typer.Option(None, help="Accept threshold on the cosine score (instead of an operating point).")
PriorOpt = typer.Option(0.5, "--prior", help="Prior probability of a match, for P(same) and the bayes operating point.")


def decision_rule(model, model_path: Path, operating_point: Optional[str], threshold: Optional[float], prior: float):
    """The model's :class:`~ghostvlad.scoring.calibration.DecisionRule`, or a one-line error."""
    from ..scoring.calibration import CalibrationError, DecisionRule

    try:
        return DecisionRule.for_model(model, operating_point, threshold=threshold, prior=prior)
    except CalibrationError as exc:
        fail(f"{model_path}: {exc}")


def _table(cal, scores, labels):
    import numpy as np
    from rich.table import Table

    table = Table(caption=f"LLR = {cal.a:.3f} * score {cal.b:+.3f}")
    for name in ("operating point", "threshold", "FAR %", "FRR %", "LLR"):
        table.add_column(name, justify="left" if name == "operating point" else "right")
    for name, t in cal.thresholds.items():
        far = 100 * np.mean(scores[labels == 0] >= t)
        frr = 100 * np.mean(scores[labels == 1] < t)
        table.add_row(name, f"{t:.4f}", f"{far:.2f}", f"{frr:.2f}", f"{cal.llr(t):.2f}")
    return table


@app.command()
def calibrate(
    model_path: Path = ModelOpt,
    trials: Path = typer.Option(..., "--trials", "-t", help="Trial list: '<0|1> <enrol> <test>' or '<enrol> <test> target|nontarget'."),
    wav_root: Path = typer.Option(..., "--wav-root", "-w", help="Folder the trial-list paths are relative to."),
    far: list[float] = typer.Option([0.01], "--far", help="False-accept rate of an operating point to store (repeatable)."),
    prior: float = typer.Option(0.5, "--prior", help="Effective target prior the logistic regression is weighted for."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache", help="Embedding cache folder (default: ~/.cache/ghostvlad)."),
    verify_cache: bool = VerifyCacheOpt,
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
    min_duration: float = MinDurOpt,
) -> None:
    """Fit LLR = a * score + b (prior-weighted logistic regression) and EER / FAR thresholds; store them in the model."""
    from ..data.trials import TrialsError
    from ..errors import GhostvladError
    from ..evaluate import EvalError, evaluate
    from ..modelfile import resolve_model_path
    from ..scoring.calibration import cllr, fit_calibration

    if not wav_root.is_dir():
        fail(f"{wav_root}: wav root is not a folder")
    model = open_model(model_path, precision, device, min_duration)
    require_stored_model(model, model_path, "a calibration")
    try:
        with progress_callback("embedding") as on_progress:
            result = evaluate(model, trials, wav_root, cache_dir=cache_dir, on_progress=on_progress,
                              verify_cache=verify_cache)
    except (EvalError, TrialsError) as exc:
        fail(str(exc))
    for message in result.bad_files.values():
        err.print(f"skipped {message}", highlight=False, markup=False)
    if result.cache_error:
        err.print(f"warning: {result.cache_error}", highlight=False, markup=False)
    try:
        cal = fit_calibration(result.scores, result.labels, prior=prior, fars=tuple(far))
    except GhostvladError as exc:  # CalibrationError, or MetricsError for scores no metric can use
        fail(f"{trials}: {exc}")
    model.calibration = cal.to_dict()
    model.save(resolve_model_path(model_path))
    out.print(_table(cal, result.scores, result.labels))
    out.print(f"fitted on {len(result.scores)} trials at prior {prior:g}; Cllr {cllr(cal.llr(result.scores), result.labels):.3f} "
              f"bits; stored the calibration in {model_path}", highlight=False)
