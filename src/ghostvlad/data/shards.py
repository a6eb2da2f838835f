"""WebDataset tar shards of a manifest, for streaming training data from local disk or object storage.

``<out>/shard-000000.tar, ...`` hold the utterances in a shuffled order, each as ``<key>.flac`` (16-bit FLAC of the
decoded 16 kHz signal; with ``keep_original`` WAV/FLAC files are stored byte for byte as ``<key>.wav``/``.flac``) and
``<key>.json`` ``{"index", "speaker", "duration", "path"}`` (``index``: the utterance's row in the manifest, which
seeds its crops). ``<out>/index.json`` lists the shards (name, utterances, bytes) and the sorted speaker ids; it is
written last, every shard is written to a temporary file and renamed, and shards left over from an earlier, larger
run are removed, so a re-run into the same directory is safe.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio import SAMPLE_RATE, AudioError, load_audio
from ..errors import GhostvladError
from ..fileio import atomic_write_text, current_umask
from ..progress import Counter, OnProgress
from .manifest import Manifest

INDEX_NAME = "index.json"
FORMAT = "ghostvlad-shards/1"
AUDIO_EXTENSIONS = ("flac", "wav")
_SHARD_NAME = re.compile(r"^shard-\d{6}\.tar$")
_CHUNK = 16  # utterances per task sent to a worker process


@dataclass(frozen=True)
class ShardInfo:
    name: str
    count: int  # utterances
    bytes: int


@dataclass(frozen=True)
class ShardIndex:
    """The contents of ``index.json``; ``base`` is the directory (or URL prefix) the shard names are relative to."""

    base: str
    shards: list[ShardInfo]
    speakers: list[str]
    utterances: int

    def url(self, k: int) -> str:
        return f"{self.base.rstrip('/')}/{self.shards[k].name}"


@dataclass(frozen=True)
class ShardSample:
    index: int  # row in the manifest the shards were made from
    speaker: str
    duration: float
    audio: bytes  # FLAC or WAV file contents
    source: str  # for error messages: original path and shard


class DataShardError(GhostvladError):
    """An unreadable shard index or shard sample; the message names it."""


# ---------------------------------------------------------------------------------------------------------- write


def _encode(items: list[tuple[int, str, bool]]) -> list[tuple[int, str, bytes]]:
    """``(index, path, keep_original)`` -> ``(index, extension, file bytes)``."""
    encoded = []
    for index, path, keep in items:
        suffix = Path(path).suffix.lower().lstrip(".")
        if keep and suffix in AUDIO_EXTENSIONS:
            try:
                encoded.append((index, suffix, Path(path).read_bytes()))
            except OSError as exc:
                raise AudioError(path, f"cannot read file ({exc.strerror or exc})") from None
            continue
        pcm = np.clip(np.round(load_audio(path, min_duration=0.0) * 32768.0), -32768, 32767).astype(np.int16)
        buffer = io.BytesIO()
        sf.write(buffer, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        encoded.append((index, "flac", buffer.getvalue()))
    return encoded


class _Writer:
    """Fills ``shard-NNNNNN.tar`` files in turn, each written to a temporary file and renamed when complete."""

    def __init__(self, out_dir: Path, max_count: int, max_bytes: int) -> None:
        from webdataset import TarWriter  # imported here: it takes seconds and worker processes never need it

        self._tar_writer = TarWriter
        self.out_dir, self.max_count, self.max_bytes = out_dir, max_count, max_bytes
        self.shards: list[ShardInfo] = []
        self._tmp: str | None = None
        self._file = self._tar = None
        self._count = self._bytes = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        size = sum(len(v) for v in members.values())
        if self._tar is not None and (self._count >= self.max_count or self._bytes + size > self.max_bytes):
            self.close()
        if self._tar is None:
            fd, self._tmp = tempfile.mkstemp(prefix=".shard-", suffix=".tmp", dir=self.out_dir)
            os.fchmod(fd, 0o666 & ~current_umask())  # as an ordinary open would, not mkstemp's private 0600
            self._file = os.fdopen(fd, "wb")
            self._tar = self._tar_writer(self._file, encoder=False, mtime=0)
        self._tar.write({"__key__": key, **members})
        self._count += 1
        self._bytes += size

    def close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._file.close()
        name = f"shard-{len(self.shards):06d}.tar"
        os.replace(self._tmp, self.out_dir / name)
        self.shards.append(ShardInfo(name, self._count, (self.out_dir / name).stat().st_size))
        self._tar = self._file = self._tmp = None
        self._count = self._bytes = 0

    def abort(self) -> None:
        if self._tar is not None:
            self._file.close()
            Path(self._tmp).unlink(missing_ok=True)
            self._tar = self._file = self._tmp = None


def _ordered(pool: Executor | None, fn: Callable, tasks: Iterable, window: int) -> Iterator:
    """``map(fn, tasks)`` in order, at most ``window`` tasks in flight (bounded memory), in-process if no pool."""
    if pool is None:
        yield from map(fn, tasks)
        return
    pending: deque[Future] = deque()
    for task in tasks:
        pending.append(pool.submit(fn, task))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def write_shards(
    manifest: Manifest,
    out_dir: str | os.PathLike,
    max_count: int = 1000,
    max_mb: float = 1000.0,
    seed: int = 0,
    keep_original: bool = False,
    workers: int | None = None,
    on_progress: OnProgress | None = None,
) -> ShardIndex:
    """Pack ``manifest`` into shards of at most ``max_count`` utterances and ``max_mb`` MB of audio (see module doc).

    Utterances are shuffled with ``seed``. Encoding runs in ``workers`` processes (default: all CPUs);
    ``on_progress(utterances packed, len(manifest))`` reports it (see :mod:`ghostvlad.progress`). A file that cannot be decoded raises :class:`AudioError`.
    """
    if max_count < 1 or max_mb <= 0:
        raise DataShardError(f"max_count ({max_count}) must be >= 1 and max_mb ({max_mb}) > 0")
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(manifest))
    tasks = [[(int(i), manifest.paths[i], keep_original) for i in order[k : k + _CHUNK]]
             for k in range(0, len(order), _CHUNK)]  # fmt: skip
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    writer = _Writer(out, max_count, int(max_mb * 1e6))
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
    try:
        counter = Counter(on_progress, len(manifest))
        for chunk in _ordered(pool, _encode, tasks, 4 * workers):
            for index, ext, data in chunk:
                meta = {"index": index, "speaker": manifest.speakers[index],
                        "duration": float(manifest.durations[index]), "path": manifest.paths[index]}  # fmt: skip
                writer.add(f"{index:09d}", {ext: data, "json": json.dumps(meta).encode()})
            counter.advance(len(chunk))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    index = ShardIndex(str(out), writer.shards, manifest.speaker_ids(), len(manifest))
    record = {"format": FORMAT, "sample_rate": SAMPLE_RATE, "seed": seed, "utterances": index.utterances,
              "speakers": index.speakers, "shards": [asdict(s) for s in index.shards]}  # fmt: skip
    atomic_write_text(out / INDEX_NAME, json.dumps(record, indent=1) + "\n")
    keep = {s.name for s in index.shards}
    for stale in out.iterdir():
        if _SHARD_NAME.match(stale.name) and stale.name not in keep:
            stale.unlink()
    return index


# ----------------------------------------------------------------------------------------------------------- read


def _is_url(location: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", location) is not None


def read_index(location: str | os.PathLike) -> ShardIndex:
    """Read ``index.json`` from a shard directory, its path, or a URL webdataset can open (http(s), gs, hf, ...)."""
    location = os.fspath(location)
    if not _is_url(location) and Path(location).is_dir():
        location = str(Path(location) / INDEX_NAME)
    try:
        if _is_url(location):
            from webdataset import gopen

            with gopen(location) as stream:
                text = stream.read().decode("utf-8")
        else:
            text = Path(location).read_text(encoding="utf-8")
        record = json.loads(text)
    except FileNotFoundError:
        raise DataShardError(f"{location}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataShardError(f"{location}: cannot read shard index ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataShardError(f"{location}: not a ghostvlad shard index (expected format {FORMAT!r})")
    try:
        shards = [ShardInfo(str(s["name"]), int(s["count"]), int(s["bytes"])) for s in record["shards"]]
        speakers = [str(s) for s in record["speakers"]]
        utterances = int(record["utterances"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataShardError(f"{location}: malformed shard index ({type(exc).__name__}: {exc})") from None
    base = location.rsplit("/", 1)[0] if _is_url(location) else str(Path(location).parent)
    return ShardIndex(base, shards, speakers, utterances)


def _shuffled(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """A shuffle buffer of ``size`` entries (pass-through when ``size <= 1``)."""
    if size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = int(rng.integers(size))
        yield buffer[k]
        buffer[k] = item
    for k in rng.permutation(len(buffer)):
        yield buffer[k]


def _sample(raw: dict, url: str) -> ShardSample:
    key = raw.get("__key__", "?")
    where = f"{url}:{key}"
    try:
        meta = json.loads(raw["json"])
        ext = next(e for e in AUDIO_EXTENSIONS if e in raw)
        return ShardSample(int(meta["index"]), str(meta["speaker"]), float(meta["duration"]), raw[ext],
                           f"{meta.get('path', key)} (in {where})")
    except (KeyError, StopIteration, TypeError, ValueError) as exc:
        raise DataShardError(f"{where}: malformed shard sample ({type(exc).__name__}: {exc})") from None


def iter_shard_samples(index: ShardIndex, shards: Sequence[int], shuffle_buffer: int = 0,
                       rng: np.random.Generator | None = None) -> Iterator[ShardSample]:
    """The samples of ``shards`` (indices into ``index.shards``) in turn, through an optional shuffle buffer."""
    from webdataset.tariterators import tarfile_samples

    urls = [index.url(k) for k in shards]

    def samples() -> Iterator[ShardSample]:
        for raw in tarfile_samples({"url": u} for u in urls):
            yield _sample(raw, raw.get("__url__", "?"))

    yield from _shuffled(samples(), shuffle_buffer, rng if rng is not None else np.random.default_rng(0))
