"""What the benchmarks share: the thread count, and running under the CLI's glibc malloc tunables."""
from __future__ import annotations

import argparse
import sys

import torch

from ghostvlad.cli import reexec_with_tunables


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-tunables", action="store_true", help="Run without the CLI's glibc malloc tunables.")


def apply_runtime_options(args: argparse.Namespace) -> None:
    """Restart under the tunables (unless ``--no-tunables``), then set the torch thread count."""
    if not args.no_tunables:
        reexec_with_tunables(sys.argv)
    torch.set_num_threads(args.threads)
