"""Splitting extraction work over ranks or job-array tasks, and merging what the shards wrote.

A shard ``k/n`` takes every ``n``-th item from ``k``. A shard's embedding file (a *part*) is the ``.npz`` a
single-process ``embed`` writes for its items plus ``index`` (each row's position in the full input list),
``shard`` (``"k/n"``) and, to refuse parts of other runs, ``job`` (:func:`job_key` of the full input list and the
model); :func:`merge_parts` puts the rows of all ``n`` parts back in input order, which gives the single-process
file exactly.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GhostvladError
from .fileio import atomic_write

PART_KEYS = ("index", "shard")
JOB_KEY = "job"  # in parts written since the key was added; older parts merge without the check


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


def job_key(paths: Sequence[str], model_key: str) -> str:
    """What every part of one sharded job shares: a hash of the full input list (in order) and the model's key."""
    digest = hashlib.sha256(model_key.encode())
    for path in paths:
        digest.update(os.fsencode(path) + b"\0")
    return digest.hexdigest()


def _check_part(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    emb = arrays.get("embeddings")
    if emb is None or emb.ndim != 2 or emb.dtype.kind != "f":
        raise ShardError(f"{path}: not a shard part (no 2-D float 'embeddings')")
    rows = {k: len(v) for k, v in arrays.items() if k not in ("shard", JOB_KEY)}
    if len(set(rows.values())) != 1:
        raise ShardError(f"{path}: arrays of different lengths ({', '.join(f'{k} {n}' for k, n in rows.items())})")
    if not np.isfinite(emb).all():
        raise ShardError(f"{path}: embeddings hold NaN or infinite values")


def merge_parts(parts: Sequence[str | os.PathLike]) -> dict[str, np.ndarray]:
    """The arrays of one embedding file from the parts of all ``n`` shards, rows in input order."""
    loaded, seen, jobs = [], {}, {}
    for path in parts:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: cannot read the part ({exc})") from None
        except TypeError:  # np.load gave a bare array (.npy): it has no context manager
            raise ShardError(f"{path}: not a shard part (a single array, not an .npz)") from None
        if not set(PART_KEYS) <= arrays.keys():
            raise ShardError(f"{path}: not a shard part (written by `embed --shard k/n`)")
        _check_part(path, arrays)
        shard = Shard.parse(str(arrays.pop("shard")))
        if shard.index in seen:
            raise ShardError(f"{path}: shard {shard} given twice (also {seen[shard.index]})")
        seen[shard.index] = path
        if JOB_KEY in arrays:
            jobs.setdefault(str(arrays.pop(JOB_KEY)), path)
        loaded.append((shard, arrays))
    if len(jobs) > 1:
        first, other = list(jobs.values())[:2]
        raise ShardError(f"{other}: a part of another job than {first} (other input files, order or model)")
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
    if len({a["embeddings"].shape[1] for _, a in loaded}) != 1:
        raise ShardError("parts hold embeddings of different sizes (made with different models)")
    merged = {k: np.concatenate([a[k] for _, a in loaded]) for k in keys}
    order = np.argsort(merged.pop("index"), kind="stable")
    return {k: v[order] for k, v in merged.items()}
