"""Command-line interface: ``ghostvlad <command>``; one module per topic registers its commands."""
from __future__ import annotations

import sys

from . import calibrate, data, demo, diarize, eval, export, gallery, model, serve, stream, train  # noqa: F401  (each registers its commands)
from .common import GLIBC_TUNABLES, app, reexec_with_tunables, wants_tunables

__all__ = ["GLIBC_TUNABLES", "app", "main", "reexec_with_tunables"]


def main() -> None:
    if wants_tunables(sys.argv[1:]):
        reexec_with_tunables(["-m", "ghostvlad", *sys.argv[1:]])
    app(prog_name="ghostvlad")
