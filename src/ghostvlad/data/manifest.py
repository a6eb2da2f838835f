"""Training manifests: a CSV ``path,speaker,duration`` of every decodable utterance of a corpus.

A manifest is built from a VoxCeleb-layout tree (``<speaker>/<video>/<nnnnn>.{wav,m4a,flac}``) or from the
original system's list file (``idXXXXX/<video>/<nnnnn>.wav <label>`` relative to a root). Every file is decoded
once with :func:`ghostvlad.audio.load_audio`, in parallel processes; files it rejects (missing, empty, corrupt,
truncated, silent, shorter than 0.5 s, ...) are reported (``<manifest stem>.bad.txt``, one ``path: reason`` per line)
and left out. Durations are those of the decoded 16 kHz signal, written to the precision of one sample.
"""
from __future__ import annotations

import csv
import io
import multiprocessing
import os
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, load_audio
from ..errors import GhostvladError
from ..fileio import atomic_write_text
from ..progress import Counter, OnProgress

AUDIO_SUFFIXES = (".wav", ".flac", ".m4a", ".mp3", ".ogg", ".opus")  # what scan_voxceleb collects
HEADER = ("path", "speaker", "duration")
_CHUNK = 32  # files per task sent to a worker process


class ManifestError(GhostvladError):
    """A manifest or list file that cannot be read; the message names the file (and line)."""


@dataclass(frozen=True, eq=False)
class Manifest:
    """Utterances of a training set: parallel lists of absolute paths, speaker ids and durations (seconds)."""

    paths: list[str]
    speakers: list[str]
    durations: np.ndarray  # float32

    def __post_init__(self) -> None:
        if not len(self.paths) == len(self.speakers) == len(self.durations):
            raise ValueError(
                f"Manifest: {len(self.paths)} paths, {len(self.speakers)} speakers, {len(self.durations)} durations"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @cached_property
    def _index(self) -> tuple[list[str], np.ndarray]:
        ids, labels = np.unique(np.array(self.speakers, dtype=str), return_inverse=True)
        return ids.tolist(), labels.astype(np.int64)

    def speaker_ids(self) -> list[str]:
        """Sorted unique speaker ids (label ``k`` is ``speaker_ids()[k]``, as in the original's lists)."""
        return list(self._index[0])

    def labels(self) -> np.ndarray:
        """int64 label of every utterance: the index of its speaker in :meth:`speaker_ids`."""
        return self._index[1].copy()


@dataclass
class PrepareReport:
    """Outcome of :func:`build_manifest`."""

    manifest: Path
    n_ok: int
    bad: list[tuple[str, str]]  # (path, reason) of every file left out
    bad_report: Path  # where ``bad`` is listed (absent when nothing was bad)


def scan_voxceleb(root: str | os.PathLike) -> list[Path]:
    """Sorted absolute paths of ``<root>/<speaker>/<video>/<file>`` with a suffix of :data:`AUDIO_SUFFIXES`
    (exactly that depth)."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    files = []
    for speaker in _subdirs(root):
        for video in _subdirs(speaker):
            with os.scandir(video) as entries:
                files += [Path(e.path) for e in entries
                          if e.is_file() and os.path.splitext(e.name)[1].lower() in AUDIO_SUFFIXES]  # fmt: skip
    return sorted(files)


def _subdirs(path: Path) -> list[Path]:
    with os.scandir(path) as entries:
        return [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]


def speaker_name(name: str) -> str:
    """A speaker name in Unicode normal form C: names that differ only by normalisation (NFC "José" and NFD
    "José", as macOS file systems write folder names) are one speaker, in manifests and in galleries."""
    return unicodedata.normalize("NFC", name)


def speaker_of(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """The speaker id of a VoxCeleb-layout file: its first path component below ``root`` (NFC)."""
    return speaker_name(Path(path).absolute().relative_to(Path(root).absolute()).parts[0])


def read_original_list(path: str | os.PathLike, root: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """The original's list format (``idXXXXX/<video>/<nnnnn>.wav <int label>``, paths relative to ``root``).

    Returns absolute paths and speaker ids (the first path component). The integer label is checked but not
    used: labels are re-derived from the sorted speaker ids, which is how the original numbered them.
    """
    path = Path(path)
    root = Path(root).absolute()
    files, speakers = [], []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) > 2:
            raise ManifestError(f"{where}: expected '<relative path> <label>', got {len(fields)} fields")
        if len(fields) == 2 and not _is_int(fields[1]):
            raise ManifestError(f"{where}: label {fields[1]!r} is not an integer")
        rel = Path(fields[0])
        if rel.is_absolute() or len(rel.parts) < 2:
            raise ManifestError(f"{where}: {fields[0]!r} is not a relative '<speaker>/.../<file>' path")
        files.append(root / rel)
        speakers.append(speaker_name(rel.parts[0]))
    if not files:
        raise ManifestError(f"{path}: no entries")
    return files, speakers


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")  # file names that are not UTF-8 kept
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read ({exc})") from None


# ---------------------------------------------------------------------------------------------------------- build


def _check_files(paths: list[str]) -> list[tuple[int | None, str | None]]:
    """Decode each file: ``(number of 16 kHz samples, None)`` or ``(None, reason)``."""
    results: list[tuple[int | None, str | None]] = []
    for path in paths:
        try:
            results.append((len(load_audio(path)), None))
        except Exception as exc:  # noqa: BLE001 - any decoder failure makes the file bad, not the whole run
            results.append((None, getattr(exc, "reason", None) or str(exc) or type(exc).__name__))
    return results


def check_files(
    paths: Sequence[str], workers: int | None = None, on_progress: OnProgress | None = None
) -> list[tuple[int | None, str | None]]:
    """:func:`_check_files` over ``paths`` in ``workers`` processes (default: all CPUs), results in input order;
    ``on_progress(files checked, len(paths))`` after each chunk."""
    workers = max(1, min(workers or os.cpu_count() or 1, -(-len(paths) // _CHUNK)))
    chunks = [list(paths[i : i + _CHUNK]) for i in range(0, len(paths), _CHUNK)]
    results: list[list[tuple[int | None, str | None]]] = [[] for _ in chunks]
    counter = Counter(on_progress, len(paths))
    if workers == 1:
        for k, chunk in enumerate(chunks):
            results[k] = _check_files(chunk)
            counter.advance(len(chunk))
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_check_files, chunk): k for k, chunk in enumerate(chunks)}
            for future in as_completed(futures):
                k = futures[future]
                results[k] = future.result()
                counter.advance(len(chunks[k]))
    return [r for chunk in results for r in chunk]


def bad_report_path(out_csv: str | os.PathLike) -> Path:
    """``data/vox2_dev.csv`` -> ``data/vox2_dev.bad.txt``."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.stem + ".bad.txt")


def build_manifest(
    files: Sequence[str | os.PathLike],
    speakers: Sequence[str],
    out_csv: str | os.PathLike,
    workers: int | None = None,
    on_progress: OnProgress | None = None,
) -> PrepareReport:
    """Decode every file (in parallel), then write the manifest of the good ones and the report of the bad ones.

    ``on_progress(files decoded, len(files))`` reports the decoding (see :mod:`ghostvlad.progress`).

    Both files are written atomically, so re-running into the same output is safe; a stale report is removed
    when no file is bad any more.
    """
    if len(files) != len(speakers):
        raise ValueError(f"{len(files)} files but {len(speakers)} speakers")
    paths = [str(Path(f).absolute()) for f in files]
    results = check_files(paths, workers, on_progress)
    ok = [(p, s, n) for p, s, (n, _) in zip(paths, speakers, results) if n is not None]
    bad = [(p, reason) for p, (n, reason) in zip(paths, results) if n is None]
    write_manifest(out_csv, [p for p, _, _ in ok], [s for _, s, _ in ok], [n / SAMPLE_RATE for _, _, n in ok])
    report = bad_report_path(out_csv)
    if bad:
        atomic_write_text(report, "".join(f"{p}: {reason}\n" for p, reason in bad))
    else:
        report.unlink(missing_ok=True)
    return PrepareReport(Path(out_csv), len(ok), bad, report)


def write_manifest(
    out_csv: str | os.PathLike, paths: Sequence[str], speakers: Sequence[str], durations: Sequence[float]
) -> Path:
    """Write ``path,speaker,duration`` rows atomically (durations with the precision of a 16 kHz sample)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows((p, s, f"{float(d):.7f}".rstrip("0").rstrip(".")) for p, s, d in zip(paths, speakers, durations))
    return atomic_write_text(out_csv, buffer.getvalue())


# ----------------------------------------------------------------------------------------------------------- read


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest CSV; relative paths in it are taken relative to the manifest's directory."""
    path = Path(path)
    rows = csv.reader(io.StringIO(_read_text(path), newline=""))
    header = next(rows, None)
    if header is None or tuple(h.strip() for h in header) != HEADER:
        got = ",".join(header or [])
        raise ManifestError(f"{path}: expected the header 'path,speaker,duration', got {got[:60]!r}"
                            f"{'...' if len(got) > 60 else ''}")
    base = path.absolute().parent
    paths, speakers, durations = [], [], []
    for row in rows:
        if not row:
            continue
        where = f"{path}:{rows.line_num}"
        if len(row) != 3:
            raise ManifestError(f"{where}: expected 3 fields (path,speaker,duration), got {len(row)}")
        file, speaker, duration = (field.strip() for field in row)
        if not file or not speaker:
            raise ManifestError(f"{where}: empty {'path' if not file else 'speaker'}")
        try:
            seconds = float(duration)
        except ValueError:
            raise ManifestError(f"{where}: duration {duration!r} is not a number") from None
        if not np.isfinite(seconds) or seconds <= 0:
            raise ManifestError(f"{where}: duration {duration!r} must be a positive number of seconds")
        paths.append(str(base / file))
        speakers.append(speaker_name(speaker))
        durations.append(seconds)
    if not paths:
        raise ManifestError(f"{path}: no utterances")
    return Manifest(paths, speakers, np.asarray(durations, dtype=np.float32))
