"""Verification trial lists: VoxCeleb `<0|1> <enrol> <test>`, Kaldi/VoxSRC `<enrol> <test> target|nontarget`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GhostvladError

_NUMERIC = {"0": 0, "1": 1}
_WORDS = {"nontarget": 0, "target": 1}


class TrialsError(GhostvladError):
    """A trial list is missing, empty or malformed."""


@dataclass(frozen=True, eq=False)
class Trials:
    """Parallel columns of a trial list; paths are relative to the wav root, as written in the file."""

    labels: np.ndarray  # int8 (N,), 1 target / 0 non-target
    enroll: list[str]
    test: list[str]

    def __post_init__(self) -> None:
        if not len(self.labels) == len(self.enroll) == len(self.test):
            raise ValueError(
                "labels, enroll and test differ in length: "
                f"{len(self.labels)}, {len(self.enroll)}, {len(self.test)}"
            )

    def files(self) -> list[str]:
        """Sorted unique paths of both columns."""
        return sorted(set(self.enroll) | set(self.test))

    def __len__(self) -> int:
        return len(self.labels)


def _parse(fields: list[str], where: str) -> tuple[int, str, str]:
    if len(fields) != 3:
        raise TrialsError(
            f"{where}: expected 3 fields ('<0|1> <enrol> <test>' or '<enrol> <test> target|nontarget'), "
            f"got {len(fields)}"
        )
    if fields[0] in _NUMERIC:
        return _NUMERIC[fields[0]], fields[1], fields[2]
    if fields[2] in _WORDS:
        return _WORDS[fields[2]], fields[0], fields[1]
    raise TrialsError(f"{where}: no label 0/1 first or target/nontarget last in {' '.join(fields)!r}")


def read_trials(path: str | os.PathLike) -> Trials:
    """Read a trial list; blank lines, CRLF and a missing final newline are tolerated."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TrialsError(f"{path}: trial list not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrialsError(f"{path}: cannot read trial list: {e}") from None
    rows = [
        _parse(line.split(), f"{path}:{number}")
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]
    if not rows:
        raise TrialsError(f"{path}: trial list has no trials")
    labels, enroll, test = zip(*rows)
    return Trials(np.array(labels, dtype=np.int8), list(enroll), list(test))
