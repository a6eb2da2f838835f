"""Splitting extraction work over ranks or job-array tasks, and merging what the shards wrote.

A shard ``k/n`` takes every ``n``-th item from ``k``. A shard's embedding file (a *part*) is the ``.npz`` a
single-process ``embed`` writes for its items plus ``index`` (each row's position in the full input list) and
``shard`` (``"k/n"``); :func:`merge_parts` puts the rows of all ``n`` parts back in input order, which gives the
single-process file exactly.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GhostvladError
from .fileio import atomic_write

PART_KEYS = ("index", "shard")


class ShardError(GhostvladError):
    """A bad shard specification or an incomplete / inconsistent set of parts."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: every ``count``-th item from ``index`` (a job-array task, or a rank)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ShardError(f"shard {self.index}/{self.count}: need 0 <= k < n")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"k/n"`` (k counted from 0)."""
        k, _, n = text.partition("/")
        try:
            index, count = int(k), int(n)
        except ValueError:
            raise ShardError(f"bad shard {text!r}: use k/n with 0 <= k < n, e.g. 0/4") from None
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def take(self, items: Sequence) -> list:
        return list(items[self.index :: self.count])


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez`` written atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, write)


def merge_parts(parts: Sequence[str | os.PathLike]) -> dict[str, np.ndarray]:
    """The arrays of one embedding file from the parts of all ``n`` shards, rows in input order."""
    loaded, seen = [], {}
    for path in parts:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: cannot read the part ({exc})") from None
        if not set(PART_KEYS) <= arrays.keys():
            raise ShardError(f"{path}: not a shard part (written by `embed --shard k/n`)")
        shard = Shard.parse(str(arrays.pop("shard")))
        if shard.index in seen:
            raise ShardError(f"{path}: shard {shard} given twice (also {seen[shard.index]})")
        seen[shard.index] = path
        loaded.append((shard, arrays))
    counts = {s.count for s, _ in loaded}
    if len(counts) != 1:
        raise ShardError(f"parts of different shardings ({', '.join(f'/{c}' for c in sorted(counts))})" if counts
                         else "no parts given")
    count = counts.pop()
    missing = sorted(set(range(count)) - seen.keys())
    if missing:
        raise ShardError(f"missing shard(s) {', '.join(f'{k}/{count}' for k in missing)}")
    keys = set(loaded[0][1])
    if any(set(a) != keys for _, a in loaded):
        raise ShardError("parts hold different arrays (mixing --window and whole-file parts?)")
    merged = {k: np.concatenate([a[k] for _, a in loaded]) for k in keys}
    order = np.argsort(merged.pop("index"), kind="stable")
    return {k: v[order] for k, v in merged.items()}
