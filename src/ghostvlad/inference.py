"""High-level use of a trained model: audio files or arrays in, unit-norm embeddings and scores out."""
from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .allocator import keep_freed_memory
from .audio import SAMPLE_RATE, AudioError, audio_duration, load_audio, prepare_waveform
from .chunked import embed_chunked, steps_per_chunk
from .devices import resolve_device
from .errors import describe
from .features import FrontEndConfig, Spectrogram
from .modelfile import ModelFileError, read_model, write_model
from .models import EncoderConfig, SpeakerEncoder
from .precision import get_precision
from .schema import checked, convert
from .streaming import EmbeddingStream

AudioInput = str | os.PathLike | np.ndarray


@dataclass
class EmbedResult:
    """One item of :meth:`SpeakerModel.iter_embeddings`: an embedding or the reason it failed."""

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


def _source_name(item: AudioInput) -> str:
    return "<array>" if isinstance(item, np.ndarray) else str(item)


def _item_error(item: AudioInput, exc: Exception, failed: str = "cannot read") -> AudioError:
    """Any failure to read or prepare one item, as that item's :class:`AudioError`."""
    return exc if isinstance(exc, AudioError) else AudioError(_source_name(item), f"{failed} ({describe(exc)})")


NON_FINITE = "the model produced a non-finite embedding (NaN or inf)"


class Embedder(ABC):
    """Audio in, unit-norm embeddings out: what :class:`SpeakerModel` and the ONNX model share.

    Subclasses provide the attributes below and :meth:`embed_waveforms`; this class loads and validates
    audio, buckets batches by length and decodes files in background threads.
    """

    config: EncoderConfig
    frontend_config: FrontEndConfig
    threshold: float | None
    min_duration: float
    batch_frames: int

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @abstractmethod
    def embed_waveforms(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Embed validated 16 kHz mono waveforms as one padded batch: ``(N, embed_dim)`` float32."""

    @abstractmethod
    def _hash_weights(self, digest: "hashlib._Hash") -> None:
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

    def _load(self, item: AudioInput, sample_rate: int | None) -> np.ndarray:
        if isinstance(item, np.ndarray):
            return prepare_waveform(item, sample_rate or SAMPLE_RATE, min_duration=self.min_duration)
        return load_audio(item, min_duration=self.min_duration)

    def iter_embeddings(
        self, items: Sequence[AudioInput], sample_rate: int | None = None, *, workers: int = 2
    ) -> Iterator[EmbedResult]:
        """Embed many items, yielding one :class:`EmbedResult` per item (in batch order, not input order).

        Bad items are yielded with their :class:`AudioError` and the others still succeed. Files are
        bucketed by their duration from metadata (read in parallel threads) and decoded in ``workers`` background
        threads while the model runs.
        """
        def size(item: AudioInput) -> int | AudioError:
            try:
                if isinstance(item, np.ndarray):
                    return len(item) if item.ndim == 1 else max(item.shape)
                return int(audio_duration(item) * SAMPLE_RATE)
            except Exception as exc:  # noqa: BLE001 - one bad item never costs the others
                return _item_error(item, exc)

        sizes: list[int] = []
        with ThreadPoolExecutor(max_workers=max(workers, 4)) as pool:  # metadata reads wait on the filesystem
            for i, found in enumerate(pool.map(size, items)):
                sizes.append(-1 if isinstance(found, AudioError) else found)
                if isinstance(found, AudioError):
                    yield EmbedResult(i, _source_name(items[i]), error=found)
        good = [i for i, s in enumerate(sizes) if s >= 0]
        batches = [[good[j] for j in b]
                   for b in length_batches([sizes[i] for i in good], self.frontend_config, self.batch_frames)]

        def load(index: int) -> np.ndarray | AudioError:
            try:
                return self._load(items[index], sample_rate)
            except Exception as exc:  # noqa: BLE001
                return _item_error(items[index], exc)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = [pool.map(load, b) for b in batches[:2]]
            for k, batch in enumerate(batches):
                loaded = list(pending[k])
                if k + 2 < len(batches):
                    pending.append(pool.map(load, batches[k + 2]))
                ok = [(i, w) for i, w in zip(batch, loaded) if isinstance(w, np.ndarray)]
                for i, w in zip(batch, loaded):
                    if isinstance(w, AudioError):
                        yield EmbedResult(i, _source_name(items[i]), error=w)
                if ok:
                    emb = self.embed_waveforms([w for _, w in ok])
                    for (i, _), e in zip(ok, emb):
                        if np.isfinite(e).all():
                            yield EmbedResult(i, _source_name(items[i]), embedding=e)
                        else:
                            yield EmbedResult(i, _source_name(items[i]), error=AudioError(_source_name(items[i]),
                                                                                           NON_FINITE))

    def embed(self, item: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """One embedding ``(embed_dim,)``, float32, unit norm. Raises :class:`AudioError` on bad input."""
        try:
            wave = self._load(item, sample_rate)
        except Exception as exc:  # noqa: BLE001 - reported as this item's error
            raise _item_error(item, exc) from exc
        emb = self.embed_waveforms([wave])[0]
        if not np.isfinite(emb).all():
            raise AudioError(_source_name(item), NON_FINITE)
        return emb

    def embed_windows(
        self, item: AudioInput, window: float = 2.0, hop: float = 0.5, sample_rate: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, embeddings)``: one embedding per ``window``-s window every ``hop`` s (:mod:`.windows`)."""
        from .windows import embed_windows

        w = embed_windows(self, self._load(item, sample_rate), window, hop)
        return w.starts, w.ends, w.embeddings

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


class SpeakerModel(Embedder):
    """A speaker encoder with its front-end, ready to embed audio.

    ``embed`` / ``embed_batch`` accept file paths or mono float waveforms (``sample_rate`` resamples arrays
    that are not 16 kHz). Batches are bucketed by length and padded; masking keeps each embedding equal to
    the one computed alone. Clips longer than ``chunk_frames`` spectrogram frames are embedded chunk by chunk
    (:mod:`ghostvlad.chunked`: same result, memory bounded by the chunk); :meth:`stream` embeds live audio.
    """

    def __init__(
        self,
        encoder: SpeakerEncoder,
        frontend: FrontEndConfig = FrontEndConfig(),
        *,
        threshold: float | None = None,
        info: dict | None = None,
        calibration: dict | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        min_duration: float = 0.5,
        batch_frames: int = 3200,
        chunk_frames: int = 3200,
        channels_last: bool = True,
    ) -> None:
        self._precision = get_precision(precision)  # ConfigError naming the choices for an unknown name
        steps_per_chunk(encoder, chunk_frames)  # ValueError if too small for the backbone
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            keep_freed_memory()  # what the CLI used to re-exec under glibc tunables for (see .allocator)
        self.encoder = encoder.eval()  # the weights as saved
        self.network = encoder.fused().to(self.device)  # what runs: BatchNorm folded into the convs
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.frontend = Spectrogram(frontend).to(self.device)
        self.threshold = threshold
        self.info = dict(info or {})
        self.calibration = calibration  # score -> LLR map and operating points, see scoring.calibration
        self.precision = precision
        self.min_duration = min_duration
        self.batch_frames = batch_frames
        self.chunk_frames = chunk_frames

    # -- configuration -------------------------------------------------------------------------------
    @property
    def config(self) -> EncoderConfig:
        return self.encoder.config

    @property
    def frontend_config(self) -> FrontEndConfig:
        return self.frontend.config

    def _hash_weights(self, digest: "hashlib._Hash") -> None:
        for name, tensor in sorted(self.encoder.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy())

    def to_config(self) -> dict:
        return {
            "encoder": self.config.to_dict(),
            "frontend": self.frontend.config.to_dict(),
            "threshold": self.threshold,
            "info": self.info,
            "calibration": self.calibration,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (directory, or one ``.safetensors`` file)."""
        return write_model(path, self.to_config(), self.encoder.state_dict())

    # -- embedding -----------------------------------------------------------------------------------
    def _autocast(self):
        return self._precision.autocast(self.device.type)

    @torch.inference_mode()
    def embed_waveforms(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Embed validated 16 kHz mono waveforms: ``(N, embed_dim)`` float32. Clips of at most ``chunk_frames``
        frames run as one padded batch, longer ones chunk by chunk."""
        long = [self.frontend_config.num_frames(len(w)) > self.chunk_frames for w in waves]
        out = np.empty((len(waves), self.embed_dim), dtype=np.float32)
        short = [i for i, is_long in enumerate(long) if not is_long]
        if short:
            batch, lengths = (torch.from_numpy(a).to(self.device) for a in pad_batch([waves[i] for i in short]))
            feats, frames = self.frontend(batch, lengths)
            if bool((frames == frames[0]).all()):
                frames = None  # equal lengths: no masking needed
            with self._autocast():
                emb = self.network.embed(feats, frames)
            out[short] = torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()
        for i in (i for i, is_long in enumerate(long) if is_long):
            wave = torch.from_numpy(np.ascontiguousarray(waves[i], dtype=np.float32))  # no copy of a valid clip
            emb = embed_chunked(self.frontend, self.network, wave, self.chunk_frames, autocast=self._autocast())
            out[i] = torch.nn.functional.normalize(emb.float(), dim=-1)[0].cpu().numpy()
        return out

    def stream(self) -> EmbeddingStream:
        """A streaming embedder of live 16 kHz mono audio: ``push(samples)``, ``embedding()``, ``reset()``.

        ``embedding()`` equals the offline embedding of all audio pushed so far with the mirror extension off
        (streaming is causal); see :class:`~ghostvlad.streaming.EmbeddingStream`.
        """
        return EmbeddingStream(self)


def load_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    min_duration: float = 0.5,
    mirror: bool | None = None,
) -> Embedder:
    """Load a saved model (directory or ``.safetensors`` file). ``mirror`` overrides the stored front-end.

    A ``.onnx`` file (see :mod:`ghostvlad.export`) gives an ``OnnxSpeakerModel`` that runs in onnxruntime.
    """
    if Path(path).suffix == ".onnx":
        from .export import load_onnx_model

        return load_onnx_model(path, device=device, precision=precision, min_duration=min_duration, mirror=mirror)
    config, state = read_model(path)
    try:
        encoder = SpeakerEncoder(EncoderConfig.from_dict(config["encoder"]))
        frontend = FrontEndConfig(**checked(FrontEndConfig, config.get("frontend", {}), "frontend"))
        threshold = config.get("threshold")
        if threshold is not None and not convert(threshold, float)[0]:
            raise ValueError(f"threshold: expected a finite number or null, got {threshold!r}")
        for key in ("info", "calibration"):
            if not isinstance(config.get(key) or {}, dict):
                raise ValueError(f"{key}: expected an object, got {config[key]!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: bad model config ({describe(exc)})") from None
    expected = encoder.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k} has shape {tuple(v.shape)}, config needs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelFileError(f"{path}: weights do not match the config: {'; '.join(problems[:3])}{more}")
    encoder.load_state_dict(state)
    if mirror is not None:
        frontend = FrontEndConfig(**{**frontend.to_dict(), "mirror": mirror})
    return SpeakerModel(
        encoder,
        frontend,
        threshold=threshold,
        info=config.get("info"),
        calibration=config.get("calibration"),
        device=device,
        precision=precision,
        min_duration=min_duration,
    )
