"""What the benchmarks share: the thread count, and the glibc tunables the CLI used to re-execute itself with."""
from __future__ import annotations

import argparse

import torch

# What `ghostvlad` set with a re-exec before the allocator settings moved in-process (ghostvlad.allocator); kept
# here only to compare against (bench/embed.py --api-vs-cli, bench/allocator.py).
FORMER_CLI_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:"
                       "glibc.malloc.trim_threshold=4294967296")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2)


def apply_runtime_options(args: argparse.Namespace) -> None:
    """Set the torch thread count."""
    torch.set_num_threads(args.threads)
