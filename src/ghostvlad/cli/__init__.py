"""Command-line interface: ``ghostvlad <command>``; one module per topic registers its commands."""
from __future__ import annotations

import os
import sys

from . import calibrate, data, demo, diarize, eval, export, gallery, model, train  # noqa: F401  (each registers its commands)
from .common import GLIBC_TUNABLES, app

__all__ = ["GLIBC_TUNABLES", "app", "main"]


def main() -> None:
    if sys.platform.startswith("linux") and "GLIBC_TUNABLES" not in os.environ and not os.environ.get("GHOSTVLAD_NO_REEXEC"):
        env = {**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES}
        os.execve(sys.executable, [sys.executable, "-m", "ghostvlad", *sys.argv[1:]], env)
    app(prog_name="ghostvlad")
