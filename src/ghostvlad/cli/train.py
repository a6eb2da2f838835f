"""The train command."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import app, err, fail, out, sleeping_thread_waits


@app.command(context_settings={"allow_extra_args": False})
def train(
    overrides: list[str] = typer.Argument(None, help="Config overrides, e.g. optim.lr=0.01 train.epochs=10."),
    config: str = typer.Option(..., "--config", "-c", help="Shipped config (paper, paper-amsoftmax, modern, demo) or a YAML file."),
    data: Path = typer.Option(..., "--data", "-d", help="Manifest CSV or shard folder from `ghostvlad prepare`."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder; an existing one is resumed (one training process at a time: RUN/train.lock)."),
    init: Optional[Path] = typer.Option(None, help="Start from this model (converted Keras model or ours; new head)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ... (default: this rank's GPU if any, else cpu)."),
    max_steps: Optional[int] = typer.Option(
        None, min=1, help="Stop (with a checkpoint) once the run has made this many steps in all, counted from its start; "
                   "the same command without it (or with a larger value) continues exactly as an uninterrupted run. "
                   "The learning-rate schedule follows the config's epochs, never --max-steps."),
) -> None:
    """Train a speaker encoder. One GPU: `ghostvlad train ...`; several: `torchrun --nproc_per_node N -m ghostvlad train ...`."""
    sleeping_thread_waits()  # before torch is imported
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..errors import GhostvladError, describe
    from ..train.config import load_config
    from ..train.distributed import teardown
    from ..train.loop import Trainer

    try:
        cfg = load_config(config, overrides or [])
        trainer = Trainer(cfg, data, out_dir, init=init, device=device)
    except (GhostvladError, OSError) as exc:
        teardown()
        fail(describe(exc))
    main = trainer.dist.main
    for note in trainer.notices if main else []:
        err.print(f"note: {note}", highlight=False)
    bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("loss {task.fields[loss]} acc {task.fields[acc]} lr {task.fields[lr]} {task.fields[speed]} crops/s"),
                   TimeElapsedColumn(), console=err, disable=not (main and err.is_terminal))
    task = bar.add_task("train", total=trainer.parts.batches.steps, epoch=0, loss="-", acc="-", lr="-", speed="-")

    def on_log(row: dict, steps: int) -> None:
        bar.update(task, completed=row["step"], total=steps, epoch=row["epoch"], loss=row["loss"], acc=row["acc"],
                   lr=row["lr"], speed=row["crops_per_s"])
        if main and not err.is_terminal:
            err.print(f"epoch {row['epoch']} step {row['step']}/{steps} loss {row['loss']} acc {row['acc']} "
                      f"lr {row['lr']} {row['crops_per_s']} crops/s (data wait {row['data_wait']})", highlight=False)

    try:
        with bar:
            state = trainer.run(max_steps=max_steps, on_log=on_log)
    except (GhostvladError, OSError) as exc:
        fail(describe(exc))
    finally:
        teardown()
    if main:
        best = "" if state.best == float("inf") else f", best {'EER' if cfg.valid.trials else 'loss'} {state.best:.4f}"
        model = out_dir / "model"
        where = (f"model in {model}" if (model / "config.json").exists()
                 else "no model yet (one is exported at the end of each epoch); run again to continue")
        out.print(f"{out_dir}: epoch {state.epoch}/{trainer.total_epochs}, step {state.global_step}{best}; {where}",
                  highlight=False)
