"""Command-line interface: a thin layer over the Python API.

Each topic module (``cli/model.py``, ``cli/data.py``, ...) registers its commands on :data:`app`.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from typer.core import TyperGroup

from ..errors import GhostvladError, describe, one_line
from ..progress import OnProgress

err = Console(stderr=True, soft_wrap=True)  # one message, one line: never wrap
out = Console(soft_wrap=True)


class Commands(TyperGroup):
    """The command group: any error escaping a command becomes one line on stderr and exit status 1.

    Bad input (:class:`~ghostvlad.errors.GhostvladError`) and paths that cannot be read or written (``OSError``)
    print ``error: path: reason``; anything else is a bug and says so, with a pointer to ``--debug``, which
    re-raises it so the traceback is shown.
    """

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False, markup=False)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the one place that turns errors into messages
            # usage errors, --help and typer.Exit carry their own exit status: the parser reports them
            if ctx.params.get("debug") or hasattr(exc, "exit_code") or isinstance(exc, (typer.Exit, typer.Abort)):
                raise
            message = describe(exc)
            if isinstance(exc, MemoryError):
                message = f"out of memory ({message})"
            elif not isinstance(exc, (GhostvladError, OSError)):
                message = f"internal error: {message}; run with --debug for the traceback"
            err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
            raise typer.Exit(1) from None


app = typer.Typer(cls=Commands, add_completion=False, no_args_is_help=True,
                  help="Speaker recognition with Thin-ResNet34 + GhostVLAD.")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of an unexpected error.")
             ) -> None:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print escaped instead of failing
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")

def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {escape(one_line(message))}", highlight=False)
    raise typer.Exit(code)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )


@contextmanager
def progress_callback(description: str) -> Iterator[OnProgress]:
    """An ``on_progress(done, total)`` callback for the API (:mod:`ghostvlad.progress`) that draws a bar on stderr,
    on a terminal only, while the block runs."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def resolve_auto(device: str, precision: str) -> tuple[str, str]:
    """``auto`` device: the GPU (this rank's, under torchrun) if there is one, else the CPU; ``auto`` precision:
    embedding's (:func:`ghostvlad.precision.resolve_precision`: bf16 on a GPU that computes it natively, else fp32)."""
    import torch

    if device == "auto":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        from ..precision import resolve_precision

        kind = torch.device("cuda" if device.startswith("cuda") else "cpu")  # a bad name: load_model says so
        precision = resolve_precision(precision, kind, training=False).name
    return device, precision


def sleeping_thread_waits() -> None:
    """Let torch's OpenMP threads sleep rather than spin while they wait (``OMP_WAIT_POLICY=PASSIVE``), for commands
    that train: on a small CPU the data loader's worker processes then get the cycles the compute threads would
    spin away (2 cores: 300 steps of the demo recipe about 10 % faster, the same losses; embedding as fast).
    Read once, when torch is first imported, so the commands call it before that; a value already set is kept."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def start_ranks():
    """The process group when started by torchrun (or srun) with several ranks, else None."""
    from ..train.distributed import DistError, launch_environment, setup

    try:
        if launch_environment()[1] == 1:
            return None
        return setup()
    except DistError as exc:
        fail(str(exc))


def open_model(path: Path, precision: str = "auto", device: str = "auto", min_duration: float = 0.5,
               mirror: Optional[bool] = None, batch_frames: int = 3200):
    from ..loading import load_model

    device, precision = resolve_auto(device, precision)
    return load_model(path, device=device, precision=precision, min_duration=min_duration, mirror=mirror,
                      batch_frames=batch_frames)


def refuse_input_as_output(out_path: Path, inputs: Iterable[str | os.PathLike]) -> None:
    """Fail in one line when ``out_path`` is one of the command's inputs: writing it would destroy that input."""
    try:
        target = os.stat(out_path)
    except OSError:
        return
    names = {out_path.name, Path(os.path.realpath(out_path)).name}
    for item in inputs:
        if Path(item).name in names:  # same name first: no stat per input for a long --list
            try:
                same = os.path.samestat(target, os.stat(item))
            except OSError:
                continue
            if same:
                fail(f"{out_path}: is also an input ({item}); choose another --out")


def require_stored_model(model, model_path: Path, what: str) -> None:
    """Fail in one line unless ``model`` can be saved back (ONNX files cannot store a threshold or calibration)."""
    from ..inference import SpeakerModel

    if not isinstance(model, SpeakerModel):
        fail(f"{model_path}: cannot store {what} in an ONNX model; store it in the ghostvlad model (directory or "
             ".safetensors) and export again")


def finite(value: Optional[float]) -> Optional[float]:
    """Option callback: refuse NaN and infinities (click's ``min``/``max`` let them through)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


ModelOpt = typer.Option(..., "--model", "-m", help="Model directory, .safetensors file, or training run folder.")
PrecisionOpt = typer.Option("auto", help="fp32, or bf16 (autocast; faster on CPUs with AVX512-BF16 and on GPUs); "
                            "auto: bf16 on a GPU, fp32 on the CPU.")
DeviceOpt = typer.Option("auto", help="cpu, cuda, cuda:1, ...; auto: the GPU if there is one (this rank's under "
                         "torchrun), else the CPU.")
MinDurOpt = typer.Option(0.5, min=0.0, callback=finite, help="Reject clips shorter than this many seconds.")
VerifyCacheOpt = typer.Option(
    False, "--verify-cache",
    help="Trust a cached embedding only while the file's content hash (SHA-256) matches, not its size and "
         "modification time (for archives rewritten in place; reads each file once more).")
MirrorOpt = typer.Option(None, "--mirror/--no-mirror", help="Override the model's 'wav + reversed wav' test-time extension.")
