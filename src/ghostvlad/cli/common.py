"""Command-line interface: a thin layer over the Python API.

Each topic module (``cli/model.py``, ``cli/data.py``, ...) registers its commands on :data:`app`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Speaker recognition with Thin-ResNet34 + GhostVLAD.")
err = Console(stderr=True, soft_wrap=True)  # one message, one line: never wrap
out = Console(soft_wrap=True)

# glibc returns big activation buffers to the OS after every layer; these tunables keep them (measured:
# batched inference ~1.5x faster on CPU). Set before the process starts, hence the re-exec in main(), which is only
# for CPU inference: training ranks and their data workers (dozens of processes per node) must not each keep
# gigabytes of freed memory, and neither must torchrun's ranks.
GLIBC_TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"
INFERENCE_COMMANDS = frozenset({"embed", "eval", "verify", "enroll", "identify", "diarize", "calibrate", "stream"})


def wants_tunables(args: list[str]) -> bool:
    """Whether the command line ``args`` (after ``ghostvlad``) runs CPU inference in a single process."""
    command = next((a for a in args if not a.startswith("-")), None)
    device = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--device"), None)
    device = next((a.split("=", 1)[1] for a in args if a.startswith("--device=")), device)
    return (command in INFERENCE_COMMANDS and "WORLD_SIZE" not in os.environ
            and not (device or "").startswith("cuda"))


def reexec_with_tunables(argv: list[str]) -> None:
    """Restart this process as ``python *argv`` with :data:`GLIBC_TUNABLES` set (Linux; once; not when
    ``GHOSTVLAD_NO_REEXEC`` is set)."""
    done = "GLIBC_TUNABLES" in os.environ or os.environ.get("GHOSTVLAD_NO_REEXEC")
    if sys.platform.startswith("linux") and not done:
        os.execve(sys.executable, [sys.executable, *argv], {**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES})


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )


def resolve_device(device: str, precision: str) -> tuple[str, str]:
    """``auto`` device: the GPU (this rank's, under torchrun) if there is one, else the CPU; ``auto`` precision:
    bf16 on a GPU, fp32 on the CPU."""
    if device == "auto":
        import torch

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") else "fp32"
    return device, precision


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
               mirror: Optional[bool] = None):
    from ..inference import load_model
    from ..modelfile import ModelFileError

    device, precision = resolve_device(device, precision)
    try:
        return load_model(path, device=device, precision=precision, min_duration=min_duration, mirror=mirror)
    except (ModelFileError, ValueError) as exc:
        fail(str(exc))


ModelOpt = typer.Option(..., "--model", "-m", help="Model directory, .safetensors file, or training run folder.")
PrecisionOpt = typer.Option("auto", help="fp32, or bf16 (autocast; faster on CPUs with AVX512-BF16 and on GPUs); "
                            "auto: bf16 on a GPU, fp32 on the CPU.")
DeviceOpt = typer.Option("auto", help="cpu, cuda, cuda:1, ...; auto: the GPU if there is one (this rank's under "
                         "torchrun), else the CPU.")
MinDurOpt = typer.Option(0.5, help="Reject clips shorter than this many seconds.")
MirrorOpt = typer.Option(None, "--mirror/--no-mirror", help="Override the model's 'wav + reversed wav' test-time extension.")
