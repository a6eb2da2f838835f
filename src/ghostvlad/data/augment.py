"""Training-crop augmentation: recording channels simulated without any corpus, and MUSAN / RIR folders when given.

:class:`ChannelAugment` is a chain of stages (another voice source under the same vocal tract, simulated rooms,
coloured noise, babble of other training utterances, music-like tones, equalisation, band limits, telephone channels,
lossy codecs, gain and clipping), each applied
with its own probability, so that a speaker's crops are heard through many channels and the channel stops
telling speakers apart. :class:`Augmenter` mixes MUSAN noise / music / speech or convolves with room impulse
responses read from folders.

Both are deterministic from the generator they are given (the datasets pass one seeded by
``(seed, epoch, utterance)``), so augmented batches, like the crops, do not depend on worker processes and
replay exactly on resume.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.signal as sps
import soundfile as sf
import soxr
from scipy.ndimage import uniform_filter1d
from scipy.signal import fftconvolve

from ..audio import SAMPLE_RATE, AudioError, load_audio
from ..errors import GhostvladError
from ..registry import Registry
from .dsp import biquads, butter_sos, codec_round_trip, colored_noise, fit_length, mix_at_snr

# SNR ranges (dB) per MUSAN category, as used by the VoxCeleb recipes of Kaldi and its successors
SNR_DB = {"noise": (0.0, 15.0), "music": (5.0, 15.0), "speech": (13.0, 20.0)}
AUDIO_SUFFIXES = (".wav", ".flac")


class AugmentError(GhostvladError):
    """A bad augmentation setting or noise / impulse-response folder, as one line."""


def _audio_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)


def _segment(path: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``size``-sample stretch of a file (tiled when the file is shorter), read partially at 16 kHz."""
    info = sf.info(path)
    if info.samplerate == SAMPLE_RATE and info.frames > size:
        start = int(rng.integers(0, info.frames - size))
        wave, _ = sf.read(path, start=start, frames=size, dtype="float32", always_2d=True)
        return wave.mean(axis=1)
    wave = load_audio(path, min_duration=0.0)
    return np.resize(wave, size)


@dataclass
class Augmenter:
    """With probability ``prob`` a crop gets one of: reverberation, or noise/music/babble at a random SNR."""

    musan: dict[str, list[str]] = field(default_factory=dict)  # category -> files
    rirs: list[str] = field(default_factory=list)
    prob: float = 0.6

    @classmethod
    def from_dirs(cls, musan: str | os.PathLike | None, rir: str | os.PathLike | None, prob: float) -> Augmenter | None:
        """``None`` when neither folder is given; a clear error when a given folder holds no audio."""
        if musan is None and rir is None:
            return None
        aug = cls(prob=prob)
        if musan is not None:
            root = Path(musan)
            aug.musan = {c: files for c in SNR_DB if (files := _audio_files(root / c))}
            if not aug.musan:
                raise AugmentError(f"{root}: no audio under noise/, music/ or speech/ (expected the MUSAN layout)")
        if rir is not None:
            aug.rirs = _audio_files(Path(rir))
            if not aug.rirs:
                raise AugmentError(f"{rir}: no .wav/.flac room impulse responses found")
        return aug

    def __call__(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return crop
        kinds = [*self.musan, *(["reverb"] if self.rirs else [])]
        kind = kinds[int(rng.integers(len(kinds)))]
        try:
            if kind == "reverb":
                return self._reverb(crop, rng)
            return self._add(crop, kind, rng)
        except (AudioError, sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"augmentation {kind}", str(exc)) from exc

    def _reverb(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rir = load_audio(self.rirs[int(rng.integers(len(self.rirs)))], min_duration=0.0)
        rir = rir / np.sqrt(np.sum(rir**2) + 1e-12)
        return fftconvolve(crop, rir)[: len(crop)].astype(np.float32)

    def _add(self, crop: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
        files = self.musan[kind]
        noise = _segment(files[int(rng.integers(len(files)))], len(crop), rng)
        snr = rng.uniform(*SNR_DB[kind])
        speech_power = np.mean(crop**2) + 1e-12
        noise_power = np.mean(noise**2) + 1e-12
        return (crop + noise * np.sqrt(speech_power / (noise_power * 10 ** (snr / 10)))).astype(np.float32)


Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass
class Chain:
    """Augmentations applied one after another with the same generator."""

    steps: list[Augment]

    def __call__(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for step in self.steps:
            crop = step(crop, rng)
        return crop


def chain(*augments: Augment | None) -> Augment | None:
    """The given augmentations (``None`` entries skipped) as one; ``None`` when there are none."""
    steps = [a for a in augments if a is not None]
    return None if not steps else steps[0] if len(steps) == 1 else Chain(steps)


# ------------------------------------------------------------------------------------------ channel simulation

Donor = Callable[[np.random.Generator], np.ndarray]  # a crop of another training utterance, for babble


@dataclass
class StageContext:
    """What stages may use besides the crop: simulated rooms and a source of other utterances.

    The rooms' spectra are cached per process as ``reverb`` first needs them (at most ``len(rooms)`` per crop
    length; 12 MB for 64 rooms and 2 s crops), so a convolution costs two FFTs instead of three."""

    rooms: list[np.ndarray] = field(default_factory=list)
    donor: Donor | None = None
    _spectra: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def room_spectrum(self, k: int, size: int) -> np.ndarray:
        """The real FFT of size ``size`` of room ``k`` (complex64 for the float32 rooms), computed once."""
        key = (k, size)
        if key not in self._spectra:
            self._spectra[key] = scipy.fft.rfft(self.rooms[k], size)
        return self._spectra[key]


Stage = Callable[[np.ndarray, np.random.Generator, StageContext], np.ndarray]
STAGES: Registry[Stage] = Registry("augmentation")
ROOM_MAX_ORDER = 40  # image-source reflection order (about 30 ms per room); beyond it the tail is cut short
RIR_SECONDS = 1.0


def shortest_rt60(dim: np.ndarray, speed_of_sound: float) -> float:
    """Sabine's reverberation time (s) of a shoebox room of size ``dim`` (m) whose walls absorb everything."""
    volume = float(np.prod(dim))
    surface = 2.0 * float(dim[0] * dim[1] + dim[0] * dim[2] + dim[1] * dim[2])
    return 24.0 * np.log(10.0) / speed_of_sound * volume / surface


def simulate_rooms(count: int, seed: int) -> list[np.ndarray]:
    """``count`` room impulse responses of shoebox rooms (pyroomacoustics' image-source method).

    Rooms of 3 x 3 x 2.5 to 12 x 10 x 4.5 m with an RT60 of 0.15-1.0 s (raised to 1.05 times the shortest a room's
    size allows, which fully absorbing walls give), source and microphone at random places at least 0.5 m from the
    walls. Each response starts at its direct path and has unit energy.
    """
    import pyroomacoustics as pra

    rng = np.random.default_rng([seed, 7])
    rooms = []
    for _ in range(count):
        dim = rng.uniform([3.0, 3.0, 2.5], [12.0, 10.0, 4.5])
        shortest = shortest_rt60(dim, pra.constants.get("c"))
        absorption, order = pra.inverse_sabine(max(float(rng.uniform(0.15, 1.0)), 1.05 * shortest), dim)
        room = pra.ShoeBox(dim, fs=SAMPLE_RATE, materials=pra.Material(absorption),
                           max_order=min(order, ROOM_MAX_ORDER))
        room.add_source(rng.uniform(0.5, dim - 0.5))
        room.add_microphone(rng.uniform(0.5, dim - 0.5))
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float64)
        rir = rir[int(np.argmax(np.abs(rir))):][: int(RIR_SECONDS * SAMPLE_RATE)]
        rooms.append((rir / np.sqrt(np.sum(rir**2))).astype(np.float32))
    return rooms


SOURCE_FRAME, SOURCE_HOP = 512, 128  # 32 ms Hann frames every 8 ms
SOURCE_SMOOTH = 17  # bins (530 Hz) over which the envelope averages the power: wider than any voice's F0
SOURCE_WINDOW = sps.get_window("hann", SOURCE_FRAME).astype(np.float32)


@STAGES.register("source")
def source(x: np.ndarray, rng: np.random.Generator, ctx: StageContext) -> np.ndarray:
    """Another voice source under the same vocal tract: each short-time spectrum's harmonic fine structure partly
    flattened towards its envelope (the power averaged over 530 Hz; by a power of 0-0.6, the frame's power kept) and
    aspiration noise shaped by that envelope added at 5-25 dB below it, as synthesisers and voices differ in glottal
    pulse and breathiness; the phase kept."""
    n = len(x)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, (SOURCE_FRAME, SOURCE_FRAME)), SOURCE_FRAME)
    spec = scipy.fft.rfft(frames[::SOURCE_HOP] * SOURCE_WINDOW, axis=1)
    magnitude = np.abs(spec) + 1e-7
    bins = magnitude**2
    envelope = np.sqrt(uniform_filter1d(bins, SOURCE_SMOOTH, axis=1, mode="nearest"))  # local mean power
    power = np.sum(bins, axis=1, keepdims=True)
    flatten = float(rng.uniform(0.0, 0.6))
    level = np.float32(10 ** (-rng.uniform(5.0, 25.0) / 20) / np.sqrt(2))
    draws = rng.standard_normal((2, *spec.shape), dtype=np.float32)
    noise = np.empty(spec.shape, np.complex64)
    noise.real, noise.imag = draws
    flattened = magnitude * (envelope / magnitude) ** np.float32(flatten)
    flattened *= np.sqrt(power / np.sum(flattened**2, axis=1, keepdims=True))  # each frame keeps its power
    shaped = spec * (flattened / magnitude)
    shaped += noise * (envelope * level)
    out = scipy.fft.irfft(shaped, SOURCE_FRAME, axis=1) * SOURCE_WINDOW
    hops = SOURCE_FRAME // SOURCE_HOP  # overlap-add: frame k starts at sample k * hop
    total = np.zeros((len(out) + hops) * SOURCE_HOP, np.float32)
    for j in range(hops):  # each quarter of every frame, as one strided add
        total[j * SOURCE_HOP:][: len(out) * SOURCE_HOP] += out[:, j * SOURCE_HOP:(j + 1) * SOURCE_HOP].reshape(-1)
    norm = np.float32(np.sum(SOURCE_WINDOW**2) / SOURCE_HOP)  # Hann squared at a quarter hop sums to a constant
    return total[SOURCE_FRAME:SOURCE_FRAME + n] / norm


@STAGES.register("reverb")
def reverb(x: np.ndarray, rng: np.random.Generator, ctx: StageContext) -> np.ndarray:
    """Convolution with a simulated room, kept aligned with the dry signal."""
    if not ctx.rooms:
        return x
    k = int(rng.integers(len(ctx.rooms)))
    size = scipy.fft.next_fast_len(len(x) + len(ctx.rooms[k]) - 1, real=True)  # linear, not circular, convolution
    return scipy.fft.irfft(scipy.fft.rfft(x, size) * ctx.room_spectrum(k, size), size)[: len(x)]


@STAGES.register("noise")
def noise(x: np.ndarray, rng: np.random.Generator, ctx: StageContext) -> np.ndarray:
    """Coloured noise (white to brown, slowly modulated in level) at 0-20 dB SNR."""
    n = len(x)
    bed = colored_noise(rng, n, float(rng.uniform(0.0, 2.0)), dtype=np.float32)
    bed *= (1 + float(rng.uniform(0, 0.8)) * np.sin(np.float32(2 * np.pi * rng.uniform(0.1, 2.0) / SAMPLE_RATE)
                                                    * np.arange(n, dtype=np.float32)
                                                    + np.float32(rng.uniform(0, 2 * np.pi))))
    return mix_at_snr(x, bed, float(rng.uniform(0.0, 20.0)))


@STAGES.register("babble")
def babble(x: np.ndarray, rng: np.random.Generator, ctx: StageContext) -> np.ndarray:
    """3-6 other training utterances at random levels, mixed at 5-20 dB SNR."""
    if ctx.donor is None:
        return x
    bed = np.zeros(len(x), np.float32)
    for _ in range(int(rng.integers(3, 7))):
        talker = fit_length(np.asarray(ctx.donor(rng), dtype=np.float32), len(x))
        bed += talker * np.float32(10 ** (rng.uniform(-6, 0) / 20) / (np.sqrt(np.mean(talker**2)) + 1e-9))
    return mix_at_snr(x, bed, float(rng.uniform(5.0, 20.0)))


@STAGES.register("music")
def music(x: np.ndarray, rng: np.random.Generator, ctx: StageContext) -> np.ndarray:
    """Music-like tones: 2-4 voices of notes (a sine driven into saturation, rich in harmonics) with decaying
    envelopes, at 5-15 dB SNR."""
    n = len(x)
    bed = np.zeros(n, np.float32)
    t = np.arange(n, dtype=np.float32)
    for _ in range(int(rng.integers(2, 5))):
        notes = int(rng.integers(2, 9))
        onsets = np.sort(rng.integers(0, n, notes))
        onsets[0] = 0
        lengths = np.diff(onsets, append=n)  # in samples; a note sounds until the next one starts
        step = 2 * np.pi * 440 * 2 ** ((rng.integers(36, 84, notes) - 69) / 12) / SAMPLE_RATE  # radians a sample
        start = np.mod(np.cumsum(step * lengths) - step * lengths, 2 * np.pi)  # phase runs on across notes
        decay = rng.uniform(0.5, 6.0, notes) / SAMPLE_RATE  # per sample
        since = t - np.repeat(onsets.astype(np.float32), lengths)  # samples since the note's onset
        phase = np.repeat(start.astype(np.float32), lengths) + np.repeat(step.astype(np.float32), lengths) * since
        envelope = np.exp(-since * np.repeat(decay.astype(np.float32), lengths))
        bed += envelope * np.tanh(np.float32(rng.uniform(0.5, 5.0)) * np.sin(phase))
    return mix_at_snr(x, bed, float(rng.uniform(5.0, 15.0)))


@STAGES.register("eq")
def eq(x: np.ndarray, rng: np.random.Generator, ctx: StageContext) -> np.ndarray:
    """Random equalisation: 2-5 peaking filters of +-10 dB and two shelves (a microphone's and a room's colour)."""
    count = int(rng.integers(2, 6))
    freqs = np.exp(rng.uniform(np.log(100), np.log(6000), count))
    bands = [("peak", float(f), float(g), float(q))
             for f, g, q in zip(freqs, rng.uniform(-10, 10, count), rng.uniform(0.5, 4, count))]
    bands += [("lowshelf", float(rng.uniform(80, 400)), float(rng.uniform(-10, 8)), 0.707),
              ("highshelf", float(rng.uniform(2000, 6000)), float(rng.uniform(-12, 8)), 0.707)]
    return sps.sosfilt(biquads(bands), x)


@STAGES.register("bandlimit")
def bandlimit(x: np.ndarray, rng: np.random.Generator, ctx: StageContext) -> np.ndarray:
    """A high-pass at 50-400 Hz and a low-pass at 2.5-7.5 kHz of random orders."""
    sos = np.vstack([
        butter_sos(int(rng.integers(1, 5)), float(np.exp(rng.uniform(np.log(50), np.log(400)))), "highpass"),
        butter_sos(int(rng.integers(2, 11)), float(rng.uniform(2500, 7500)), "lowpass"),
    ])
    return sps.sosfilt(sos, x)


def _g711(x: np.ndarray, law: str) -> np.ndarray:
    """8-bit mu-law or A-law companding and expansion (G.711's quantisation) of a signal in [-1, 1]."""
    y = np.clip(x, -1.0, 1.0)
    mag = np.abs(y)
    if law == "mu":
        mu = 255.0
        code = np.round(np.sign(y) * np.log1p(mu * mag) / np.log1p(mu) * 127) / 127
        return np.sign(code) * np.expm1(np.abs(code) * np.log1p(mu)) / mu
    a = 87.6
    small = mag < 1 / a
    compressed = np.where(small, a * mag, 1 + np.log(np.maximum(a * mag, 1.0))) / (1 + np.log(a))
    code = np.round(compressed * 127) / 127
    expanded = np.where(code < 1 / (1 + np.log(a)), code * (1 + np.log(a)) / a,
                        np.exp(code * (1 + np.log(a)) - 1) / a)
    return np.sign(y) * expanded


TELEPHONE_BAND = sps.butter(4, [300, 3400], "bandpass", fs=8000, output="sos")


@STAGES.register("telephone")
def telephone(x: np.ndarray, rng: np.random.Generator, ctx: StageContext) -> np.ndarray:
    """A narrow-band telephone line: 300-3400 Hz at 8 kHz, G.711 mu-law or A-law at a random line level."""
    n = len(x)
    narrow = soxr.resample(x, SAMPLE_RATE, 8000)
    narrow = sps.sosfilt(TELEPHONE_BAND, narrow)
    level = 10 ** (rng.uniform(-30, -10) / 20) / (np.sqrt(np.mean(narrow**2)) + 1e-9)
    coded = _g711(narrow * level, "mu" if rng.random() < 0.5 else "a") / level
    return fit_length(soxr.resample(coded, 8000, SAMPLE_RATE), n)


CODECS = {  # name -> (PyAV encoder, container, sample rate, bit rates in bit/s)
    "mp3": ("libmp3lame", "mp3", 16000, (8000, 16000, 24000, 32000)),
    "aac": ("aac", "adts", 16000, (12000, 16000, 24000, 32000)),
    "opus": ("libopus", "ogg", 16000, (6000, 8000, 12000, 16000)),
}


@STAGES.register("codec")
def codec(x: np.ndarray, rng: np.random.Generator, ctx: StageContext) -> np.ndarray:
    """A lossy codec round trip at a low bit rate: MP3 8-32 kbit/s, AAC 12-32 kbit/s or Opus 6-16 kbit/s."""
    encoder, container, rate, bit_rates = CODECS[list(CODECS)[int(rng.integers(len(CODECS)))]]
    peak = np.max(np.abs(x)) + 1e-9
    scale = 0.5 / peak if peak > 0.5 else 1.0  # encoders clip at full scale
    bit_rate = int(bit_rates[int(rng.integers(len(bit_rates)))])
    return codec_round_trip(x * scale, encoder, container, rate, bit_rate) / scale


@STAGES.register("gain")
def gain(x: np.ndarray, rng: np.random.Generator, ctx: StageContext) -> np.ndarray:
    """A level change of -20 to +20 dB, clipped at full scale (a clipping recorder when driven too hard)."""
    return np.clip(x * 10 ** (rng.uniform(-20, 20) / 20), -1.0, 1.0)


# as in a recording: the voice, the room, other sounds, the microphone, the line and codec, the recorder
STAGE_ORDER = ("source", "reverb", "noise", "babble", "music", "eq", "bandlimit", "telephone", "codec", "gain")


class ChannelAugment:
    """A chain of :data:`STAGES`, each applied with its probability, in :data:`STAGE_ORDER`.

    ``probs`` maps stage names to probabilities (stages not named are off). Rooms for ``reverb`` are simulated
    once here (``rooms`` of them, from ``seed``), so worker processes share them. ``donor`` gives crops of other
    training utterances for ``babble``.
    """

    def __init__(self, probs: Mapping[str, float], seed: int = 0, rooms: int = 128, donor: Donor | None = None) -> None:
        unknown = sorted(set(probs) - set(STAGE_ORDER))
        if unknown:
            raise AugmentError(f"unknown augmentation stage(s) {', '.join(unknown)}; choose from {', '.join(STAGE_ORDER)}")
        bad = {k: v for k, v in probs.items() if not isinstance(v, (int, float)) or not 0 <= v <= 1}
        if bad:
            raise AugmentError(f"augmentation probabilities must be numbers in [0, 1]: {bad}")
        self.probs = {name: float(probs[name]) for name in STAGE_ORDER if probs.get(name, 0) > 0}
        self.context = StageContext(simulate_rooms(rooms, seed) if "reverb" in self.probs else [], donor)

    def __call__(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = crop.astype(np.float32)
        for name, prob in self.probs.items():
            if rng.random() < prob:
                x = STAGES.get(name)(x, rng, self.context).astype(np.float32, copy=False)
        peak = np.max(np.abs(x))
        if not np.isfinite(peak):
            raise AudioError("augmentation", "a stage produced a non-finite signal")
        return (x / peak if peak > 1 else x).astype(np.float32)
