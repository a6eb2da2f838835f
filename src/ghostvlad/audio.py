"""Audio loading and validation: any file or array in, 16 kHz mono float32 out.

Files whose extension names a libsndfile format (wav, flac, ogg, aiff, ...) are read with soundfile;
m4a/aac/mp3 and anything else, or files soundfile cannot open, are decoded with PyAV (FFmpeg).
Multi-channel audio is averaged to mono and resampled with soxr (HQ). Every problem with the input
(missing, empty, corrupt, truncated, non-finite, silent or too short audio) raises :class:`AudioError`.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf
import soxr

from .errors import GhostvladError, describe, one_line

__all__ = ["SAMPLE_RATE", "AudioError", "load_audio", "load_audio_bytes", "prepare_waveform", "audio_duration"]

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-8
"""Clips whose peak absolute amplitude is below this are rejected as silent."""
TRUNCATION_RATIO = 0.9
"""A compressed file that decodes to less than this fraction of its declared duration is truncated."""
MIN_SAMPLE_RATE = 4000
"""Lower sample rates are refused: no speech recording has one, and a corrupt header claiming, say, 1 Hz would
make resampling to 16 kHz allocate thousands of times the file's real content."""
MAX_PEAK = 2.0**15
"""Float samples whose peak exceeds this (finite, but far beyond [-1, 1]) are scaled to peak 1 so that the
front-end's power spectrum cannot overflow. The front-end normalises each frame, so the scale barely matters."""

# Headerless telephony files, as Asterisk stores prompts and recordings: the extension names the encoding and rate.
_RAW_FORMATS = {
    ".gsm": ("gsm", 8000), ".ulaw": ("mulaw", 8000), ".ul": ("mulaw", 8000), ".alaw": ("alaw", 8000),
    ".al": ("alaw", 8000), ".g722": ("g722", 16000), ".sln": ("s16le", 8000),
    **{f".sln{k}": ("s16le", rate) for k, rate in ((12, 12000), (16, 16000), (24, 24000), (32, 32000),
                                                   (44, 44100), (48, 48000), (96, 96000), (192, 192000))},
}
# libsndfile's major formats double as extensions; MP3 goes to PyAV with the other compressed formats.
_SOUNDFILE_EXTENSIONS = frozenset(f".{name.lower()}" for name in sf.available_formats()) - {".mp3"}
# libsndfile logs a chunk whose declared size exceeds the file as "data : 32000 (should be 10637)".
_SHORT_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers that cannot seek back leave a placeholder data size at or above this value.
_UNKNOWN_SIZE = 0x7FFF0000
# libsndfile's notes on an Ogg file cut short: its last page is incomplete or lacks the end-of-stream flag.
_OGG_TRUNCATED = ("Last page lacks an end-of-stream bit", "Junk after the last page")
_PYAV_ERRORS = (av.FFmpegError, OSError)


class AudioError(GhostvladError):
    """Bad audio input; ``str(err) == f"{source}: {reason}"`` on one line."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = str(source)
        self.reason = one_line(reason)
        super().__init__(f"{self.source}: {self.reason}")

    def __reduce__(self):
        return type(self), (self.source, self.reason)


def load_audio(
    path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, min_duration: float = 0.5
) -> np.ndarray:
    """Decode ``path`` to a validated float32 mono 1-D waveform at ``sample_rate``.

    ``min_duration`` (seconds, of the decoded audio) rejects shorter clips; 0 disables the check. Any failure
    to read the file (a decoder's error, an unreadable name, memory) is raised as its :class:`AudioError`.
    """
    with _as_audio_error(path) as source:
        frames, rate = _decode(Path(source))
        return _finish(_mono(frames), rate, sample_rate, min_duration, source)


def load_audio_bytes(
    data: bytes, source: str = "<upload>", sample_rate: int = SAMPLE_RATE, min_duration: float = 0.5,
    max_duration: float | None = None,
) -> np.ndarray:
    """As :func:`load_audio`, for an audio file held in memory (an upload); ``source`` names it in errors.

    The format is recognised from the content (soundfile first, then PyAV), never from a name, and nothing
    is read from or written to disk. ``max_duration`` (seconds) rejects longer audio without decoding past it.
    """
    if not data:
        raise AudioError(source, "empty file (0 bytes)")
    try:
        frames, rate = _decode_memory(data, source, max_duration)
        return _finish(_mono(frames), rate, sample_rate, min_duration, source)
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises about these bytes is their problem
        raise AudioError(source, f"cannot read ({describe(exc)})") from exc


def prepare_waveform(
    wave: np.ndarray,
    sample_rate: int,
    *,
    target_rate: int = SAMPLE_RATE,
    min_duration: float = 0.5,
    source: str = "<array>",
) -> np.ndarray:
    """Validate an in-memory waveform and return it as contiguous float32 mono at ``target_rate``.

    ``wave`` is 1-D, or 2-D with the *smaller* axis taken as channels (so ``(2, n)`` and ``(n, 2)``
    are both stereo; a square array is read as channels x samples). Float samples are kept as they
    are; signed integer PCM is divided by ``2**(bits-1)`` and unsigned PCM is centred first
    (uint8 128 -> 0.0), so both land in [-1, 1]. Channels are averaged, then resampled with soxr.
    """
    x = np.asarray(wave)
    if x.dtype.kind not in "fiu":
        raise AudioError(source, f"unsupported sample dtype {x.dtype}; expected float or integer PCM")
    if x.ndim not in (1, 2):
        raise AudioError(source, f"expected a 1-D or 2-D array, got shape {x.shape}")
    x = pcm_to_float(x)
    if x.ndim == 2:
        x = _mono(x.T if x.shape[0] <= x.shape[1] else x)  # the smaller axis is channels
    return _finish(x, sample_rate, target_rate, min_duration, source)


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds read from the file's metadata, without decoding the samples."""
    with _as_audio_error(path) as source:
        return _duration(source)


def _duration(source: str) -> float:
    file = Path(source)
    sf_error = None
    if file.suffix.lower() in _SOUNDFILE_EXTENSIONS:
        try:
            info = sf.info(os.fsencode(source))
        except sf.SoundFileError as exc:
            sf_error = exc
        else:
            _check_rate(source, info.samplerate)
            return info.duration
    try:
        with _open_pyav(source, source) as container:
            stream = _audio_stream(container, source)
            if stream.rate:  # some containers only know it once decoding starts (checked then, in _finish)
                _check_rate(source, stream.rate)
            if stream.duration is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
    except _PYAV_ERRORS as exc:
        raise _decode_error(source, sf_error, exc) from exc
    raise AudioError(source, "duration not found in the file's metadata")


@contextmanager
def _as_audio_error(path: str | os.PathLike) -> Iterator[str]:
    """Check the file (:func:`_check_file`) and yield its name; any error inside becomes that file's AudioError."""
    try:
        source = os.fsdecode(path)
    except TypeError:
        raise AudioError(repr(path), f"not a file path ({type(path).__name__})") from None
    try:
        yield _check_file(source)
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises, it is this file's problem
        reason = "out of memory while decoding" if isinstance(exc, MemoryError) else "cannot read"
        raise AudioError(source, f"{reason} ({describe(exc)})") from exc


def _check_file(source: str) -> str:
    """Return ``source`` after checking that it is a non-empty regular file."""
    file = Path(source)
    if not file.exists():
        raise AudioError(source, "file not found")
    if not file.is_file():
        raise AudioError(source, "not a regular file")
    if file.stat().st_size == 0:
        raise AudioError(source, "empty file (0 bytes)")
    return source


def _decode(file: Path) -> tuple[np.ndarray, float]:
    """Decode to float32 ``(samples, channels)`` and the file's sample rate."""
    source = str(file)
    sf_error = None
    if file.suffix.lower() in _SOUNDFILE_EXTENSIONS:
        try:
            handle = sf.SoundFile(os.fsencode(source))  # bytes: names that are not UTF-8 open too
        except sf.SoundFileError as exc:  # format soundfile cannot open: let FFmpeg try
            sf_error = exc
        else:
            return _read_soundfile(handle, source)
    try:
        return _read_pyav(source, source)
    except _PYAV_ERRORS as exc:
        raise _decode_error(source, sf_error, exc) from exc


def _decode_memory(data: bytes, source: str, max_duration: float | None) -> tuple[np.ndarray, float]:
    """Decode in-memory file bytes: soundfile when libsndfile recognises them (MP3 excepted, as for files)."""
    sf_error = None
    try:
        handle = sf.SoundFile(io.BytesIO(data))
    except sf.SoundFileError as exc:
        sf_error = exc
    else:
        if handle.format != "MP3":
            return _read_soundfile(handle, source, max_duration)
        handle.close()
    try:
        return _read_pyav(io.BytesIO(data), source, max_duration)
    except _PYAV_ERRORS as exc:
        raise _decode_error(source, sf_error, exc) from exc


def _too_long(source: str, max_duration: float, seconds: float | None = None) -> AudioError:
    found = "more than the maximum" if seconds is None else f"{seconds:g} s, maximum is"
    return AudioError(source, f"too long: {found} {max_duration:g} s")


def _read_soundfile(handle: sf.SoundFile, source: str, max_duration: float | None = None) -> tuple[np.ndarray, float]:
    with handle:
        if max_duration is not None and handle.frames > max_duration * handle.samplerate:
            raise _too_long(source, max_duration, handle.frames / handle.samplerate)
        short = _SHORT_DATA_CHUNK.search(handle.extra_info)
        if short:
            declared, present = map(int, short.groups())
            if present < declared < _UNKNOWN_SIZE:
                raise AudioError(
                    source, f"truncated file: header declares {declared} data bytes, only {present} present"
                )
        cut = [note for note in _OGG_TRUNCATED if note in handle.extra_info]
        if cut:
            raise AudioError(source, f"truncated Ogg file: {cut[0].lower()}")
        _check_rate(source, handle.samplerate)
        try:
            frames = handle.read(dtype="float32", always_2d=True)
        except sf.SoundFileError as exc:
            raise _decode_error(source, exc, None) from exc
        return frames, handle.samplerate


def _read_pyav(file: str | BinaryIO, source: str, max_duration: float | None = None) -> tuple[np.ndarray, float]:
    """Decode the first audio stream with PyAV, converted to planar float by its resampler.

    With ``max_duration``, a stream declaring more is refused at once and decoding stops once past it.
    """
    with _open_pyav(file, source) as container:
        stream = _audio_stream(container, source)
        declared = float(stream.duration * stream.time_base) if stream.duration is not None else None
        if max_duration is not None and declared is not None and declared > max_duration:
            raise _too_long(source, max_duration, declared)
        resampler = av.AudioResampler(format="fltp")  # keeps the layout and rate of the first frame
        decoded, samples = [], 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                decoded.append(out)
                samples += out.samples
            if max_duration is not None and decoded and samples > max_duration * decoded[0].sample_rate:
                raise _too_long(source, max_duration)
        decoded += resampler.resample(None)
        rate = decoded[0].sample_rate if decoded else stream.rate
    if not decoded:
        return np.zeros((0, 1), np.float32), rate
    frames = np.concatenate([out.to_ndarray() for out in decoded], axis=1).T
    found = len(frames) / rate
    if declared is not None and found < TRUNCATION_RATIO * declared:
        raise AudioError(source, f"truncated file: decoded {found:.3f} s of the {declared:.3f} s it declares")
    return frames, rate


def _open_pyav(file: str | BinaryIO, source: str) -> av.container.InputContainer:
    """``av.open(file)``; a headerless telephony file (:data:`_RAW_FORMATS`, by ``source``'s extension) opens with
    its encoding and rate named, as nothing in it tells them. Bytes in memory never go by a name."""
    raw = _RAW_FORMATS.get(Path(source).suffix.lower()) if isinstance(file, str) else None
    if raw is None:
        return av.open(file)
    demuxer, rate = raw
    return av.open(file, format=demuxer, options={"sample_rate": str(rate), "ch_layout": "mono"})


def _audio_stream(container: av.container.InputContainer, source: str) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        raise AudioError(source, "no audio stream in file")
    return container.streams.audio[0]


def _decode_error(source: str, sf_error: Exception | None, av_error: Exception | None) -> AudioError:
    """One-line error naming what each decoder said."""
    said = []
    if sf_error is not None:
        said.append(f"soundfile: {str(getattr(sf_error, 'error_string', None) or sf_error).rstrip('.')}")
    if av_error is not None:
        said.append(f"PyAV: {getattr(av_error, 'strerror', None) or av_error}")
    return AudioError(source, f"cannot decode audio (corrupt, truncated or not audio): {'; '.join(said)}")


def _mono(frames: np.ndarray) -> np.ndarray:
    """``(samples, channels)`` -> ``(samples,)``: the channel mean; a single channel is returned without a copy."""
    return frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1)


def pcm_to_float(x: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1]; float input -> float32."""
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    scale = float(2 ** (8 * x.dtype.itemsize - 1))
    offset = scale if x.dtype.kind == "u" else 0.0
    return ((x.astype(np.float64) - offset) / scale).astype(np.float32)


def check_finite(wave: np.ndarray, source: str) -> None:
    """:class:`AudioError` naming ``source`` when ``wave`` holds NaN or infinite samples."""
    bad = wave.size - np.count_nonzero(np.isfinite(wave))
    if bad:
        raise AudioError(source, f"contains {bad} NaN or infinite sample(s)")


def _check_rate(source: str, rate: float) -> None:
    if not isinstance(rate, numbers.Real) or not math.isfinite(rate) or rate < MIN_SAMPLE_RATE:
        raise AudioError(source, f"sample rate {rate!r} Hz is below the {MIN_SAMPLE_RATE} Hz minimum (corrupt header?)")


def _finish(wave: np.ndarray, rate: float, target_rate: float, min_duration: float, source: str) -> np.ndarray:
    """Validate mono float samples at ``rate`` and resample them to ``target_rate`` (peak scaled if huge)."""
    if not isinstance(target_rate, numbers.Real) or not math.isfinite(target_rate) or target_rate <= 0:
        raise AudioError(source, f"invalid target sample rate {target_rate!r}")
    _check_rate(source, rate)
    if wave.size == 0:
        raise AudioError(source, "no audio samples")
    check_finite(wave, source)
    duration = wave.size / rate
    if duration < min_duration:
        raise AudioError(source, f"too short: {duration:g} s, minimum is {min_duration:g} s")
    peak = max(float(wave.max()), -float(wave.min()))  # no |wave| copy: long recordings are large
    if peak < SILENCE_PEAK:
        raise AudioError(source, f"silent: peak amplitude {peak:.3g} is below {SILENCE_PEAK:g}")
    if peak > MAX_PEAK:
        wave = wave * np.float32(1.0 / peak)
    if rate != target_rate:
        try:
            wave = soxr.resample(wave, rate, target_rate, quality="HQ")
        except (ValueError, RuntimeError) as exc:
            raise AudioError(source, f"resampling {rate} Hz -> {target_rate} Hz failed: {exc}") from exc
    return np.ascontiguousarray(wave, dtype=np.float32)
