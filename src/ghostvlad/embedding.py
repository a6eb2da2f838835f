"""The embedding contract: what the PyTorch model (:mod:`.inference`) and the ONNX model (:mod:`.export`) share.

:class:`Embedder` turns audio (paths or arrays) into unit-norm embeddings: it loads and validates audio, buckets
clips of similar length into padded batches (:func:`length_batches`, :func:`pad_batch`), decodes files in
background threads (:func:`prefetch`) and reports each bad item as an :class:`EmbedResult` with its
:class:`~ghostvlad.audio.AudioError`. Subclasses supply the forward pass (:meth:`Embedder.embed_waveforms`),
their config and their weights' hash. :mod:`.windows`, :mod:`.diarize`, :mod:`.evaluate`, the gallery and the
service depend on this contract only.
"""
from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import numpy as np

from .audio import SAMPLE_RATE, AudioError, audio_duration, load_audio, prepare_waveform
from .errors import describe
from .features import FrontEndConfig
from .models import EncoderConfig

AudioInput = str | os.PathLike | np.ndarray
NON_FINITE = "the model produced a non-finite embedding (NaN or inf)"
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class EmbedResult:
    """One item of :meth:`Embedder.iter_embeddings`: an embedding or the reason it failed."""

    index: int
    source: str
    embedding: np.ndarray | None = None
    error: AudioError | None = None


def pad_batch(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded ``(N, longest)`` float32 batch and the int64 lengths of ``waves``."""
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    batch = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return batch, lengths


def length_batches(sizes: Sequence[int], frontend: FrontEndConfig, batch_frames: int) -> list[list[int]]:
    """Indices of clips of ``sizes`` samples grouped by similar length, each batch under ``batch_frames`` padded
    frames (a clip longer than that is a batch of its own)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i]):
        if current and frontend.num_frames(sizes[i]) * (len(current) + 1) > batch_frames:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def prefetch(fn: Callable[[T], R], items: Iterable[T], *, workers: int, ahead: int) -> Iterator[R]:
    """``fn(item)`` for every item, in order, computed by ``workers`` background threads at most ``ahead`` items
    in front of the consumer (so memory stays bounded). ``fn`` should return its errors rather than raise them:
    an exception is raised again where its item is reached."""
    items = iter(items)
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            pending.extend(pool.submit(fn, item) for item in islice(items, max(1, ahead)))
            while pending:
                result = pending.popleft().result()
                pending.extend(pool.submit(fn, item) for item in islice(items, 1))
                yield result
        finally:  # the consumer stopped early: drop the work not yet started
            for future in pending:
                future.cancel()


def source_name(item: AudioInput) -> str:
    """How an item is named in messages: its path, or ``<array>``."""
    return "<array>" if isinstance(item, np.ndarray) else str(item)


def item_error(item: AudioInput, exc: Exception, failed: str = "cannot read") -> AudioError:
    """Any failure to read or prepare one item, as that item's :class:`AudioError`."""
    return exc if isinstance(exc, AudioError) else AudioError(source_name(item), f"{failed} ({describe(exc)})")


class Embedder(ABC):
    """Audio in, unit-norm embeddings out: what :class:`~ghostvlad.inference.SpeakerModel` and
    :class:`~ghostvlad.export.OnnxSpeakerModel` share.

    Subclasses set the attributes below and implement :meth:`embed_waveforms`, :meth:`to_config` and
    :meth:`_hash_weights`; this class loads and validates audio, buckets batches by length and decodes files in
    background threads.
    """

    config: EncoderConfig
    """The network's architecture."""
    frontend_config: FrontEndConfig
    """The spectrogram front-end."""
    threshold: float | None
    """Same-speaker decision threshold on the cosine score, if the model file stores one."""
    calibration: dict | None
    """Score-to-LLR map and operating points (see :mod:`ghostvlad.scoring.calibration`), if stored."""
    info: dict
    """Free-form notes stored with the model."""
    precision: str
    """``fp32``, ``bf16`` or ``fp16``: the arithmetic the forward pass runs in."""
    min_duration: float
    """Shortest audio accepted, in seconds."""
    batch_frames: int
    """Padded spectrogram frames per batch at most (a longer clip is a batch of its own)."""

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @abstractmethod
    def embed_waveforms(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Embed validated 16 kHz mono waveforms as one padded batch: ``(N, embed_dim)`` float32."""

    @abstractmethod
    def to_config(self) -> dict:
        """What a model file stores besides the weights: ``encoder``, ``frontend``, ``threshold``, ``info`` and
        ``calibration``."""

    @abstractmethod
    def _hash_weights(self, digest: hashlib._Hash) -> None:
        """Feed the weights into ``digest`` (for :meth:`cache_key`)."""

    def cache_key(self) -> str:
        """sha256 of everything that fixes an embedding: encoder and front-end config, precision and weights.

        The decision threshold, calibration and free-form info are left out, so storing them keeps caches valid.
        """
        digest = hashlib.sha256()
        config = {"encoder": self.config.flat(), "frontend": self.frontend_config.to_dict(),
                  "precision": self.precision}
        digest.update(json.dumps(config, sort_keys=True).encode())
        self._hash_weights(digest)
        return digest.hexdigest()

    def identity(self) -> tuple[str, dict]:
        """``(cache_key(), config with precision)``: what a gallery records to refuse embeddings of another model."""
        return self.cache_key(), {**self.to_config(), "precision": self.precision}

    def load_item(self, item: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """One item as a validated 16 kHz mono float32 waveform: a file decoded, or an array (at ``sample_rate``,
        default 16 kHz) resampled and checked. Raises :class:`AudioError` (too short: under ``min_duration``, or
        under the front-end's minimum whatever ``min_duration`` is)."""
        if isinstance(item, np.ndarray):
            wave, source = prepare_waveform(item, sample_rate or SAMPLE_RATE, min_duration=self.min_duration), "<array>"
        else:
            wave, source = load_audio(item, min_duration=self.min_duration), os.fspath(item)
        return self.check_length(wave, source)

    def check_length(self, wave: np.ndarray, source: str) -> np.ndarray:
        """``wave`` unchanged, or :class:`AudioError` when it is shorter than the front-end can take (whatever
        ``min_duration`` allows)."""
        if len(wave) < self.frontend_config.min_samples:
            raise AudioError(source, f"too short for the front-end: {len(wave)} samples, needs at least "
                                     f"{self.frontend_config.min_samples}")
        return wave

    def iter_embeddings(
        self, items: Sequence[AudioInput], sample_rate: int | None = None, *, workers: int = 2
    ) -> Iterator[EmbedResult]:
        """Embed many items, yielding one :class:`EmbedResult` per item (in batch order, not input order).

        Bad items are yielded with their :class:`AudioError` and the others still succeed. Files are
        bucketed by their duration from metadata (read in parallel threads) and decoded in ``workers`` background
        threads, up to two batches ahead of the model.
        """
        def size(item: AudioInput) -> int | AudioError:
            try:
                if isinstance(item, np.ndarray):
                    return len(item) if item.ndim == 1 else max(item.shape)
                return int(audio_duration(item) * SAMPLE_RATE)
            except Exception as exc:  # noqa: BLE001 - one bad item never costs the others
                return item_error(item, exc)

        sizes: list[int] = []
        with ThreadPoolExecutor(max_workers=max(workers, 4)) as pool:  # metadata reads wait on the filesystem
            for i, found in enumerate(pool.map(size, items)):
                sizes.append(-1 if isinstance(found, AudioError) else found)
                if isinstance(found, AudioError):
                    yield EmbedResult(i, source_name(items[i]), error=found)
        good = [i for i, s in enumerate(sizes) if s >= 0]
        batches = [[good[j] for j in b]
                   for b in length_batches([sizes[i] for i in good], self.frontend_config, self.batch_frames)]

        def load(index: int) -> np.ndarray | AudioError:
            try:
                return self.load_item(items[index], sample_rate)
            except Exception as exc:  # noqa: BLE001
                return item_error(items[index], exc)

        ahead = 2 * max((len(b) for b in batches), default=1)
        with closing(prefetch(load, (i for b in batches for i in b), workers=workers, ahead=ahead)) as loaded:
            for batch in batches:
                waves = list(islice(loaded, len(batch)))
                ok = [(i, w) for i, w in zip(batch, waves) if isinstance(w, np.ndarray)]
                for i, w in zip(batch, waves):
                    if isinstance(w, AudioError):
                        yield EmbedResult(i, source_name(items[i]), error=w)
                if ok:
                    emb = self.embed_waveforms([w for _, w in ok])
                    for (i, _), e in zip(ok, emb):
                        source = source_name(items[i])
                        if np.isfinite(e).all():
                            yield EmbedResult(i, source, embedding=e)
                        else:
                            yield EmbedResult(i, source, error=AudioError(source, NON_FINITE))

    def embed(self, item: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """One embedding ``(embed_dim,)``, float32, unit norm. Raises :class:`AudioError` on bad input."""
        try:
            wave = self.load_item(item, sample_rate)
        except Exception as exc:  # noqa: BLE001 - reported as this item's error
            raise item_error(item, exc) from exc
        emb = self.embed_waveforms([wave])[0]
        if not np.isfinite(emb).all():
            raise AudioError(source_name(item), NON_FINITE)
        return emb

    def embed_batch(self, items: Iterable[AudioInput], sample_rate: int | None = None) -> np.ndarray:
        """Embeddings ``(N, embed_dim)`` in input order; the first bad item raises its :class:`AudioError`."""
        items = list(items)
        out = np.zeros((len(items), self.embed_dim), dtype=np.float32)
        for r in self.iter_embeddings(items, sample_rate):
            if r.error is not None:
                raise r.error
            out[r.index] = r.embedding
        return out

    def score(self, a: AudioInput, b: AudioInput, sample_rate: int | None = None) -> float:
        """Cosine similarity of the embeddings of two recordings (paths or waveforms)."""
        ea, eb = self.embed_batch([a, b], sample_rate)
        return float(np.dot(ea, eb))
