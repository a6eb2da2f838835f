"""Command-line interface: ``ghostvlad <command>``; one module per topic registers its commands."""
from __future__ import annotations

from . import calibrate, data, demo, diarize, eval, export, gallery, model, serve, stream, train  # noqa: F401  (each registers its commands)
from .common import app

__all__ = ["app", "main"]


def main() -> None:
    app(prog_name="ghostvlad")
