"""Training crops: the original's random 2.5 s crop, read from files (or shards) touching only the samples it needs.

The crop is :func:`ghostvlad.features.train_crop` — the clip doubled (``concat(y, y)``), reversed with
probability 0.3, a random window of ``(frames - 1) * 160`` samples cut at a frame boundary, short clips zero-padded.
For WAV and FLAC at 16 kHz, :func:`read_crop` works out which samples of the original clip the window covers (at most
two segments: the window may straddle the join, and reversal mirrors positions) and reads only those; the result is
bit-identical to ``train_crop(load_audio(path), rng)`` for the same generator. AAC in MP4 (``.m4a``, VoxCeleb2's
format) at 16 kHz is decoded from a seek point two frames before each segment (the frames before it only prime the
decoder's overlap), which gives the same samples as a whole-file decode; that needs the manifest's duration and a
container whose declared duration agrees with it, and falls back to a whole-file decode otherwise. Other formats and
sample rates are decoded whole. Randomness comes only from ``np.random.default_rng([seed, epoch, index])``, so a
crop does not depend on the worker process, the number of workers or the rank, and an epoch can be replayed exactly
on resume.
"""
from __future__ import annotations

import collections
import io
import math
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf
import soxr
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..audio import SAMPLE_RATE, AudioError, check_finite, load_audio, prepare_waveform
from ..errors import GhostvladError
from ..features import train_crop
from .augment import Augment
from .manifest import Manifest
from .shards import ShardIndex, iter_shard_samples, read_index

HOP_LENGTH = 160
REVERSE_PROB = 0.3
PARTIAL_READ_SUFFIXES = frozenset({".wav", ".flac"})  # libsndfile seeks these sample-exactly and cheaply
SEEK_DECODE_SUFFIXES = frozenset({".m4a", ".mp4"})  # AAC in MP4: an index of frames, each 1024 samples
_PREROLL_FRAMES = 2  # AAC frames decoded and dropped before a segment: the MDCT overlap spans one
_DURATION_TOLERANCE = 16  # samples (1 ms) between the manifest's duration and the file's


class DatasetError(GhostvladError):
    """A training data set that cannot be built as asked (speakers, speeds, shards, ranks), as one line."""


def crop_samples(frames: int = 250, hop_length: int = HOP_LENGTH) -> int:
    """Length of a training crop in samples: ``(frames - 1) * hop_length`` (39,840 for 250 frames)."""
    return (frames - 1) * hop_length


def crop_plan(num_samples: int, rng: np.random.Generator, frames: int = 250, hop_length: int = HOP_LENGTH,
              reverse_prob: float = REVERSE_PROB) -> tuple[bool, int, int]:
    """The random draws of :func:`train_crop` for a clip of ``num_samples`` samples, in the same order.

    Returns ``(reversed, start, length)``: the crop is ``length`` samples of the doubled (and possibly reversed)
    clip from ``start``, followed by zeros up to :func:`crop_samples`.
    """
    reverse = bool(rng.random() < reverse_prob)
    size = crop_samples(frames, hop_length)
    doubled = 2 * num_samples
    total_frames = 1 + doubled // hop_length
    if total_frames > frames:
        return reverse, int(rng.integers(0, total_frames - frames)) * hop_length, size
    return reverse, 0, min(size, doubled)


def _crop_ranges(num_samples: int, reverse: bool, start: int, length: int) -> list[tuple[int, int]]:
    """``(first, stop)`` ranges of the original clip that make up the crop, in forward order.

    Reversing the doubled clip maps its position ``k`` to ``2n - 1 - k``, so a reversed crop is the reversal of the
    forward window ``[2n - start - length, 2n - start)``.
    """
    n = num_samples
    begin = 2 * n - start - length if reverse else start
    end = begin + length
    if length >= n:  # the window holds the whole clip (possibly partly twice): a single read of everything
        return [(0, n)]
    ranges = []
    if begin < n:
        ranges.append((begin, min(end, n)))
    if end > n:
        ranges.append((max(begin, n) - n, end - n))
    return ranges


def read_crop(path: str | os.PathLike, rng: np.random.Generator, duration: float | None = None,
              frames: int = 250) -> np.ndarray:
    """``train_crop(load_audio(path), rng, frames)``, reading only the crop's samples where the format allows.

    ``duration`` (seconds, from the manifest) is checked against the file: a file that changed since the manifest
    was made raises :class:`AudioError`, as does any file that can no longer be read, and a crop holding NaN or
    infinite samples (a float file the manifest did not check).
    """
    source = os.fsdecode(path)
    suffix = Path(source).suffix.lower()
    if suffix in PARTIAL_READ_SUFFIXES | SEEK_DECODE_SUFFIXES and not os.path.isfile(source):
        raise AudioError(source, "file not found")
    crop = None
    if suffix in PARTIAL_READ_SUFFIXES:
        crop = crop_soundfile(source, rng, duration, frames, source)
    elif suffix in SEEK_DECODE_SUFFIXES and duration is not None:
        crop = _crop_seek_decode(source, rng, duration, frames)
    if crop is None:
        crop = train_crop(_load_whole(source, duration), rng, frames)
    check_finite(crop, source)
    return crop


def _load_whole(source: str, duration: float | None) -> np.ndarray:
    """The whole clip decoded, checked against the manifest's ``duration``."""
    wave = load_audio(source, min_duration=0.0)
    _check_duration(len(wave), duration, source)
    return wave


def _crop_seek_decode(source: str, rng: np.random.Generator, duration: float, frames: int) -> np.ndarray | None:
    """:func:`read_crop` for AAC in MP4 by seeking; None (``rng`` untouched) where the container does not allow it.

    Where decoding fails after the draws (a damaged file, frames not where their timestamps say), the same cut is
    taken from a whole-file decode, which reports a damaged file as :func:`load_audio` does.
    """
    n = round(duration * SAMPLE_RATE)
    try:
        container = av.open(source, format="mp4")  # naming the demuxer skips format probing
    except (av.FFmpegError, OSError):
        return None
    with container:
        stream = _exact_aac_stream(container, n)
        if stream is None:
            return None
        reverse, start, length = crop_plan(n, rng, frames)
        ranges = _crop_ranges(n, reverse, start, length)
        pieces = _decode_ranges(container, stream, ranges)
    if pieces is None:
        wave = _load_whole(source, duration)
        pieces = [wave[first:stop] for first, stop in ranges]
    return _assemble(pieces, n, reverse, start, length, crop_samples(frames))


def _decode_ranges(container: av.container.InputContainer, stream: av.audio.stream.AudioStream,
                   ranges: list[tuple[int, int]]) -> list[np.ndarray] | None:
    """The ranges' samples, decoded in file order (a crop over the join: the clip's start, then a seek forward
    to its end; a decoder sought back to the start after reaching the end gave a different first frame)."""
    decoded = {}
    try:
        for first, stop in sorted(ranges):
            piece = _decode_range(container, stream, first, stop)
            if piece is None:
                return None
            decoded[first, stop] = piece
    except av.FFmpegError:
        return None
    return [decoded[r] for r in ranges]


def _exact_aac_stream(container: av.container.InputContainer, n: int) -> av.audio.stream.AudioStream | None:
    """The AAC stream when its timestamps count 16 kHz samples and its declared duration fits the manifest's ``n``.

    A whole-file decode gives whole frames: the declared samples plus at most one frame of the encoder's padding.
    """
    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    frame_size = stream.codec_context.frame_size or 1024
    exact = (stream.codec_context.name == "aac" and stream.rate == SAMPLE_RATE
             and stream.time_base == Fraction(1, SAMPLE_RATE) and stream.duration is not None
             and 0 <= n - stream.duration < frame_size)
    return stream if exact else None


def _decode_range(container: av.container.InputContainer, stream: av.audio.stream.AudioStream, first: int,
                  stop: int) -> np.ndarray | None:
    """Samples ``[first, stop)`` of the whole-file decode (channels averaged), or None if the frames leave a gap."""
    origin = stream.start_time or 0
    target = first - _PREROLL_FRAMES * (stream.codec_context.frame_size or 1024)
    if target > 0:
        container.seek(origin + target, stream=stream, backward=True)
    out, filled = np.empty(stop - first, dtype=np.float32), 0
    for frame in container.decode(stream):
        if frame.pts is None:
            return None
        position = frame.pts - origin
        if position + frame.samples <= first:
            continue
        if frame.format.name != "fltp" or (position != first + filled and not (filled == 0 and position < first)):
            return None  # not what load_audio decodes to (AAC decodes to planar float), or a gap
        planes = [np.frombuffer(plane, np.float32, frame.samples) for plane in frame.planes]
        data = planes[0] if len(planes) == 1 else np.stack(planes).mean(axis=0)
        piece = data[first + filled - position : stop - position]
        out[filled : filled + len(piece)] = piece
        filled += len(piece)
        if filled == len(out):
            return out
    return None


def crop_soundfile(file: str | BinaryIO, rng: np.random.Generator, duration: float | None, frames: int,
                   source: str) -> np.ndarray:
    """:func:`read_crop` for anything libsndfile opens (a path or a seekable file object)."""
    try:
        with sf.SoundFile(file) as handle:
            if handle.samplerate != SAMPLE_RATE or handle.frames <= 0:
                wave = prepare_waveform(_read(handle, 0, None, source), handle.samplerate, min_duration=0.0,
                                        source=source)
                _check_duration(len(wave), duration, source)
                return train_crop(wave, rng, frames)
            n = handle.frames
            _check_duration(n, duration, source)
            reverse, start, length = crop_plan(n, rng, frames)
            ranges = _crop_ranges(n, reverse, start, length)
            pieces = [_read(handle, first, stop - first, source) for first, stop in ranges]
    except sf.SoundFileError as exc:
        raise AudioError(source, f"cannot read audio: {getattr(exc, 'error_string', None) or exc}") from None
    except (OSError, RuntimeError) as exc:
        raise AudioError(source, f"cannot read audio: {exc}") from None
    return _assemble(pieces, n, reverse, start, length, crop_samples(frames))


def _read(handle: sf.SoundFile, first: int, count: int | None, source: str) -> np.ndarray:
    """Samples ``[first, first + count)`` (all when ``count`` is None), channels averaged as load_audio does."""
    handle.seek(first)
    data = handle.read(-1 if count is None else count, dtype="float32", always_2d=True)
    if count is not None and len(data) < count:
        raise AudioError(source, f"truncated file: {first + len(data)} samples readable, header says {handle.frames}")
    return data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)


def _assemble(pieces: list[np.ndarray], n: int, reverse: bool, start: int, length: int, size: int) -> np.ndarray:
    """The crop from the ranges read by :func:`_crop_ranges`."""
    if length >= n:  # whole clip read: cut the window from the doubled clip
        window = np.concatenate([pieces[0], pieces[0]])
        window = window[::-1][start : start + length] if reverse else window[start : start + length]
    else:
        window = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        window = window[::-1] if reverse else window
    out = np.zeros(size, dtype=np.float32)
    out[:length] = window
    return out


def log_bad_file(log: str, error: AudioError) -> None:
    """Append ``error`` (one line, ``path: reason``) to the run's bad-file log.

    Lines are short single ``write`` calls on a file opened for appending, so concurrent writers (DataLoader workers,
    ranks) do not interleave within a line.
    """
    os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"{error.source}\t{error}\n")


def read_bad_files(log: str | os.PathLike) -> dict[str, str]:
    """``path -> message`` of the files a bad-file log names (each once; a missing log names none)."""
    try:
        lines = Path(log).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def _check_duration(num_samples: int, duration: float | None, source: str) -> None:
    if duration is not None and abs(num_samples - float(duration) * SAMPLE_RATE) > _DURATION_TOLERANCE:
        raise AudioError(source, f"has {num_samples / SAMPLE_RATE:.4f} s of audio but the manifest says "
                                 f"{float(duration):.4f} s; the file changed since the manifest was made")


class _SharedEpoch:
    """An epoch counter in shared memory, so ``set_epoch`` reaches persistent DataLoader workers too."""

    def __init__(self) -> None:
        self.value = torch.zeros((), dtype=torch.int64).share_memory_()

    def get(self) -> int:
        return int(self.value)

    def set(self, epoch: int) -> None:
        if epoch < 0:
            raise DatasetError(f"epoch must be >= 0, got {epoch}")
        self.value.fill_(epoch)


def _label_map(speaker_ids: list[str]) -> dict[str, int]:
    if len(set(speaker_ids)) != len(speaker_ids):
        raise DatasetError("speaker_ids contains duplicates")
    return {s: k for k, s in enumerate(speaker_ids)}


def check_speeds(speeds: Sequence[float]) -> tuple[float, ...]:
    """The speed-perturbation factors, checked: a non-empty list of distinct numbers in [0.5, 2]."""
    speeds = tuple(float(v) for v in speeds)
    if not speeds or len(set(speeds)) != len(speeds) or not all(0.5 <= v <= 2 for v in speeds):
        raise DatasetError(f"speeds {list(speeds)}: give distinct factors in [0.5, 2], e.g. [0.9, 1.0, 1.1]")
    return speeds


def speed_draw(speeds: tuple[float, ...], seed: int, epoch: int, speaker: int) -> int:
    """Which of ``speeds`` the utterances of ``speaker`` play at in ``epoch`` (uniform, from ``(seed, epoch,
    speaker)``: one speed a speaker and epoch, so that utterances grouped by speaker share their class)."""
    return 0 if len(speeds) == 1 else int(np.random.default_rng([seed, epoch, speaker, 2]).integers(len(speeds)))


def speed_frames(frames: int, speed: float) -> int:
    """Frames of source audio that make a ``frames``-frame crop once played at ``speed``."""
    return frames if speed == 1 else math.ceil((frames - 1) * speed) + 2


def play_at(crop: np.ndarray, speed: float, frames: int) -> np.ndarray:
    """``crop`` played ``speed`` times faster (pitch and tempo together, as Kaldi's speed perturbation), cut to
    the ``frames``-frame crop length."""
    if speed == 1:
        return crop
    out = soxr.resample(crop, SAMPLE_RATE * speed, SAMPLE_RATE)
    size = crop_samples(frames)
    return (out[:size] if len(out) >= size else np.pad(out, (0, size - len(out)))).astype(np.float32)


class CropDataset(Dataset):
    """Map-style: item ``i`` -> ``(crop float32 (39840,), label int)`` for utterance ``i`` of a manifest.

    The crop's randomness comes only from ``np.random.default_rng([seed, epoch, i])``. ``speaker_ids`` fixes the
    label numbering (default: the manifest's sorted speaker ids). Paths are kept in a numpy byte array, so
    forked workers do not copy them page by page through reference counting.

    With several ``speeds`` (speed perturbation), a speaker's utterances play at one of them per epoch, drawn from
    ``(seed, epoch, speaker)``, and every speed of a speaker is a class of its own: label
    ``speaker * len(speeds) + k``.
    """

    def __init__(self, manifest: Manifest, seed: int = 0, frames: int = 250,
                 speaker_ids: list[str] | None = None, speeds: Sequence[float] = (1.0,)) -> None:
        self.speaker_ids = list(speaker_ids) if speaker_ids is not None else manifest.speaker_ids()
        index = _label_map(self.speaker_ids)
        unknown = sorted(set(manifest.speakers) - index.keys())
        if unknown:
            raise DatasetError(f"{len(unknown)} manifest speaker(s) not in speaker_ids, e.g. {unknown[0]!r}")
        self.labels = np.array([index[s] for s in manifest.speakers], dtype=np.int64)
        self.paths = np.array([os.fsencode(p) for p in manifest.paths], dtype=np.bytes_)
        self.durations = np.asarray(manifest.durations, dtype=np.float32)
        self.seed, self.frames, self.speeds = seed, frames, check_speeds(speeds)
        self.augment: Augment | None = None  # e.g. data.augment.ChannelAugment; its rng is seeded like the crop's
        self.bad_log: str | None = None  # where files that fail to decode are logged (see __getitem__); None: raise
        self._epoch = _SharedEpoch()
        self._bad: set[int] = set()  # utterances this process found undecodable

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> int:
        return len(self.speaker_ids) * len(self.speeds)

    def sessions(self) -> np.ndarray:
        """A recording-session id per utterance: its folder (VoxCeleb layout ``speaker/session/utterance``)."""
        folders = [os.path.dirname(os.fsdecode(p)) for p in self.paths]
        return np.unique(folders, return_inverse=True)[1]

    def donor(self, rng: np.random.Generator) -> np.ndarray:
        """A crop of a random utterance, at normal speed and unaugmented (babble for the augmentation); silence
        when that file fails to decode (logged, as in :meth:`__getitem__`)."""
        j = int(rng.integers(len(self.paths)))
        try:
            return read_crop(os.fsdecode(self.paths[j]), rng, float(self.durations[j]), self.frames)
        except AudioError as exc:
            self._note_bad(j, exc)
            return np.zeros(crop_samples(self.frames), np.float32)

    def _note_bad(self, j: int, exc: AudioError) -> None:
        """Log utterance ``j``'s decoding failure once in :attr:`bad_log`; without a log, raise it."""
        if self.bad_log is None:
            raise exc
        if j not in self._bad:
            self._bad.add(j)
            log_bad_file(self.bad_log, exc)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        """Utterance ``i``'s crop. With a :attr:`bad_log` (training sets one), a file that fails to decode is logged
        there and replaced by the crop of the first decodable utterance in a fixed order of the same speaker's others
        (``(seed, i)``), so the replacement does not depend on the worker, the rank or a restart; :class:`AudioError`
        when none of the speaker's utterances decodes, or at once without a log."""
        i = int(i)
        first_error = None
        for j in self._candidates(i):
            try:
                crop, k = self._crop(j)
            except AudioError as exc:
                self._note_bad(j, exc)
                first_error = first_error or exc
                continue
            return crop, int(self.labels[i]) * len(self.speeds) + k
        raise AudioError(first_error.source, f"{first_error.reason}; no other utterance of speaker "
                         f"{self.speaker_ids[self.labels[i]]!r} decodes either")

    def _candidates(self, i: int) -> Iterator[int]:
        """``i``, then the same speaker's other utterances in an order fixed by ``(seed, i)``."""
        yield i
        others = np.flatnonzero(self.labels == self.labels[i])
        others = others[others != i]
        yield from np.random.default_rng([self.seed, i, 2]).permutation(others).tolist()

    def _crop(self, i: int) -> tuple[np.ndarray, int]:
        """Utterance ``i``'s crop and the index of its speed."""
        rng = np.random.default_rng([self.seed, self.epoch, i])
        k = speed_draw(self.speeds, self.seed, self.epoch, int(self.labels[i]))
        speed = self.speeds[k]
        crop = read_crop(os.fsdecode(self.paths[i]), rng, float(self.durations[i]), speed_frames(self.frames, speed))
        crop = play_at(crop, speed, self.frames)
        if self.augment is not None:
            crop = self.augment(crop, np.random.default_rng([self.seed, self.epoch, i, 1]))
        return crop, k


class ShardCropDataset(IterableDataset):
    """Streams the crops of WebDataset shards written by :func:`ghostvlad.data.shards.write_shards`.

    Each epoch the shards are permuted by ``(seed, epoch)``; rank ``r`` of ``world`` takes every ``world``-th of
    them and DataLoader worker ``w`` of ``W`` every ``W``-th of those, so each utterance is seen once per epoch
    across all ranks and workers. Samples pass through a shuffle buffer (``shuffle_buffer`` entries, seeded by
    seed, epoch, rank and worker). An utterance's crop is drawn from ``default_rng([seed, epoch, index])`` with its
    manifest index, so it equals :class:`CropDataset`'s crop of the same utterance (speed perturbation included).
    ``rank``/``world`` default to the torch.distributed process group, if any. Babble donors are the worker's
    most recent crops.
    """

    def __init__(self, index: str | os.PathLike | ShardIndex, seed: int = 0, frames: int = 250,
                 speaker_ids: list[str] | None = None, shuffle_buffer: int = 500, rank: int | None = None,
                 world: int | None = None, speeds: Sequence[float] = (1.0,)) -> None:
        self.index = index if isinstance(index, ShardIndex) else read_index(index)
        self.speaker_ids = list(speaker_ids) if speaker_ids is not None else list(self.index.speakers)
        self._labels = _label_map(self.speaker_ids)
        unknown = sorted(set(self.index.speakers) - self._labels.keys())
        if unknown:
            raise DatasetError(f"{len(unknown)} shard speaker(s) not in speaker_ids, e.g. {unknown[0]!r}")
        self.seed, self.frames, self.shuffle_buffer = seed, frames, shuffle_buffer
        self.speeds = check_speeds(speeds)
        self.augment: Augment | None = None
        self._recent: collections.deque[np.ndarray] = collections.deque(maxlen=32)
        self.bad_log: str | None = None  # samples that fail to decode are logged there and skipped; None: raise
        self.rank, self.world = _rank_world(rank, world)
        if len(self.index.shards) < self.world:
            raise DatasetError(f"{len(self.index.shards)} shard(s) cannot feed {self.world} ranks; write smaller shards")
        self._epoch = _SharedEpoch()

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    @property
    def classes(self) -> int:
        return len(self.speaker_ids) * len(self.speeds)

    def donor(self, rng: np.random.Generator) -> np.ndarray:
        """One of this worker's recent crops (silence before the first), for babble."""
        if not self._recent:
            return np.zeros(crop_samples(self.frames), np.float32)
        return self._recent[int(rng.integers(len(self._recent)))]

    def rank_shards(self, epoch: int | None = None) -> list[int]:
        """Indices of the shards this rank reads in ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.index.shards))
        return order[self.rank :: self.world].tolist()

    def __len__(self) -> int:
        """Utterances this rank yields in the current epoch (ranks may differ by up to one shard)."""
        return sum(self.index.shards[k].count for k in self.rank_shards())

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        epoch = self.epoch
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.rank_shards(epoch)[worker::workers]
        shuffle = np.random.default_rng([self.seed, epoch, self.rank, worker, 1])
        for sample in iter_shard_samples(self.index, shards, self.shuffle_buffer, shuffle):
            rng = np.random.default_rng([self.seed, epoch, sample.index])
            k = speed_draw(self.speeds, self.seed, epoch, self._labels[sample.speaker])
            try:
                crop = crop_soundfile(io.BytesIO(sample.audio), rng, sample.duration,
                                      speed_frames(self.frames, self.speeds[k]), sample.source)
            except AudioError as exc:  # a stream has no random access to a replacement: skip it
                if self.bad_log is None:
                    raise
                log_bad_file(self.bad_log, exc)
                continue
            crop = play_at(crop, self.speeds[k], self.frames)
            self._recent.append(crop)
            if self.augment is not None:
                crop = self.augment(crop, np.random.default_rng([self.seed, epoch, sample.index, 1]))
            yield crop, self._labels[sample.speaker] * len(self.speeds) + k


def _rank_world(rank: int | None, world: int | None) -> tuple[int, int]:
    if rank is None or world is None:
        dist = torch.distributed
        default = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        rank = default[0] if rank is None else rank
        world = default[1] if world is None else world
    if not 0 <= rank < world:
        raise DatasetError(f"rank {rank} is not in [0, world={world})")
    return rank, world

