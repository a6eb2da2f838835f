"""Synthetic multi-speaker corpus in VoxCeleb layout: espeak-ng voices heard through random per-session channels.

A speaker is an espeak-ng language/accent and voice variant plus its own pitch, pitch range, speaking rate and a
vocal-tract warp: the 22.05 kHz synthesis is resampled as if recorded at ``22050 * warp`` Hz, which scales formants
by ``warp``; F0 is kept (within a few per cent) through espeak's pitch and range parameters and tempo through its
rate. A session ("video") adds a small drift of the speaker's pitch and rate and its own channel: reverberation,
additive noise (white, pink, brown or babble of other voices) at a random SNR, equalisation, a band limit and a
level, shared by all of its utterances.

Everything is drawn from ``numpy.random.SeedSequence(seed, spawn_key=...)`` keyed by speaker, session and utterance,
and espeak-ng is loaded afresh for every synthesis (its C library keeps state between calls), so a seed gives
byte-identical files whatever the number of worker processes.

Re-running into the same directory with the same settings resumes: a session whose wav files all exist is kept (each
file is written to a temporary file and renamed, so a file that exists is complete); the others are regenerated.
``trials.txt`` and ``speakers.json`` are written last, so their presence marks a finished corpus.
"""

from __future__ import annotations

import _ctypes
import ctypes
import json
import math
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import espeakng_loader
import numpy as np
import scipy.signal as sps
import soundfile as sf
import soxr
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..fileio import atomic_write, atomic_write_text
from .dsp import biquads, codec_round_trip, colored_noise, fit_length, mix_at_snr

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050  # espeak-ng's fixed output rate

LANGUAGES = (
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
    "de", "nl", "af", "sv", "da", "nb", "fr", "fr-be", "es", "es-419", "it", "pt", "pt-br", "ro", "ca",
    "pl", "cs", "sk", "hr", "sl", "fi", "et", "hu", "id", "ms", "sw", "tr", "eo", "cy", "ga", "is", "lv", "lt",
)
MALE_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "Alex", "Andy", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario",
    "Michael", "Mike", "Nguyen", "Reed", "Storm", "adam", "announcer", "antonio", "benjamin", "boris", "caleb",
    "david", "ed", "edward", "edward2", "grandpa", "gustave", "ian", "iven", "iven2", "iven3", "iven4", "john",
    "kaukovalta", "marcelo", "max", "michel", "miguel", "mike2", "norbert", "pablo", "paul", "pedro", "quincy", "rob",
    "robert", "sandro", "travis", "victor",
)
FEMALE_VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda", "grandma", "linda",
    "shelby", "steph", "steph2", "steph3",
)
KLATT_VARIANTS = ("klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6")
# speaker pools: (female variants, male variants). espeak-ng's klatt variants use another synthesiser (Klatt's
# cascade/parallel formant synthesiser) than the others, so "formant" and "klatt" make two families of voices.
VOICE_POOLS = {
    "all": (FEMALE_VARIANTS, MALE_VARIANTS),
    "formant": (FEMALE_VARIANTS, tuple(v for v in MALE_VARIANTS if v not in KLATT_VARIANTS)),
    "klatt": (KLATT_VARIANTS, KLATT_VARIANTS),
}
# session channels: "studio" (rooms, noise, EQ, band limits) or "field" (adds telephone lines, speech codecs that
# the training augmentation never uses, loudspeaker distortion and larger rooms), for cross-domain checks
CHANNEL_FAMILIES = ("studio", "field")
FIELD_CODECS = {  # name -> (PyAV encoder, container, sample rate, bit rates in bit/s)
    "amr_nb": ("libopencore_amrnb", "amr", 8000, (4750, 5900, 7400, 10200, 12200)),
    "g726": ("g726", "wav", 8000, (16000, 24000, 32000)),
    "real_144": ("real_144", "rm", 8000, (0,)),
    "g722": ("g722", "wav", 16000, (64000,)),
    "nellymoser": ("nellymoser", "flv", 16000, (0,)),
}
NOISES = ("white", "pink", "brown", "babble")
_NOISE_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}

_WORDS = {
    "det": "the a this that every one some my your our their another".split(),
    "adj": (
        "old young happy quiet bright dark green small large heavy quick gentle strange early late warm cold "
        "silver wooden busy lonely famous careful simple hidden golden narrow"
    ).split(),
    "noun": (
        "farmer teacher river garden window city doctor letter market mountain village student island horse "
        "kitchen story engine painter bridge forest captain station morning picture sailor engineer table "
        "museum orchestra neighbour harbour ticket"
    ).split(),
    "verb": (
        "found carried painted opened watched remembered built followed visited described moved cleaned "
        "borrowed discovered answered repaired measured ordered noticed delivered"
    ).split(),
    "prep": "near behind across under beside beyond inside around before after".split(),
    "adv": "quickly slowly quietly suddenly carefully yesterday again finally often never".split(),
    "intro": "well so today meanwhile however honestly later perhaps".split(),
}
_TEMPLATES = (
    "det adj noun verb det noun prep det noun",
    "det noun adv verb det adj noun",
    "intro , det noun verb det noun prep det adj noun",
    "det adj noun prep det noun verb adv",
    "det noun verb det adj adj noun , intro",
    "did det noun verb det noun prep det noun ?",
)
_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))

# seed-sequence domains: (domain, speaker[, session[, utterance]])
_SPEAKER, _SESSION, _SESSION_SIGNAL, _UTTERANCE, _UTTERANCE_SIGNAL, _TRIALS = range(6)


@dataclass(frozen=True)
class SynthConfig:
    """Size and seed of a synthetic corpus."""

    speakers: int = 40  # total speakers
    test_speakers: int = 10  # of which held out for test
    sessions: int = 4  # sessions (videos) per speaker
    utterances: int = 5  # utterances per session
    min_duration: float = 2.0
    max_duration: float = 6.0
    trials: int = 2000  # number of trial pairs (half target)
    seed: int = 0
    voices: str = "all"  # speaker pool: all | formant | klatt (see VOICE_POOLS)
    channels: str = "studio"  # session channels: studio | field (see CHANNEL_FAMILIES)

    def validate(self) -> None:
        """Raise ValueError (one line) on an impossible configuration."""
        checks = (
            (self.speakers >= 2, f"speakers={self.speakers} must be at least 2"),
            (1 <= self.test_speakers < self.speakers,
             f"test_speakers={self.test_speakers} must be in [1, speakers-1={self.speakers - 1}]"),
            (self.sessions >= 1, f"sessions={self.sessions} must be at least 1"),
            (self.utterances >= 1, f"utterances={self.utterances} must be at least 1"),
            (0.5 <= self.min_duration <= self.max_duration,
             f"durations must satisfy 0.5 <= min_duration ({self.min_duration}) <= max_duration ({self.max_duration})"),
            (self.trials >= 0, f"trials={self.trials} must be >= 0"),
            (self.seed >= 0, f"seed={self.seed} must be >= 0"),
            (self.voices in VOICE_POOLS, f"voices={self.voices!r}: choose {', '.join(VOICE_POOLS)}"),
            (self.channels in CHANNEL_FAMILIES, f"channels={self.channels!r}: choose {', '.join(CHANNEL_FAMILIES)}"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SynthConfig: {message}")
        if self.trials == 0:
            return
        if self.sessions < 2 or self.test_speakers < 2:
            raise ValueError(
                "SynthConfig: trials need sessions >= 2 (targets cross sessions) and test_speakers >= 2 (non-targets)"
            )
        n_target, n_nontarget = _trial_capacity(self)
        if self.trials // 2 > n_target or self.trials - self.trials // 2 > n_nontarget:
            raise ValueError(
                f"SynthConfig: trials={self.trials} needs {self.trials // 2} distinct target pairs but the test set "
                f"has only {n_target} (and {n_nontarget} non-target pairs); lower trials or add test speakers/sessions"
            )


@dataclass(frozen=True)
class Voice:
    """A speaker's voice: espeak-ng ``language+variant`` and perceptual targets (after the warp)."""

    language: str
    variant: str
    pitch: float  # espeak pitch scale 0-100 (F0 factor 2**((pitch-50)/50) of the variant's base)
    pitch_range: float  # espeak range 0-100
    rate: float  # words per minute
    warp: float  # formant scale factor

    def __post_init__(self) -> None:
        if not (0 <= self.pitch <= 100 and 0 <= self.pitch_range <= 100 and self.rate > 0 and 0.5 <= self.warp <= 2):
            raise ValueError(f"Voice: pitch and pitch_range must be in [0, 100], rate > 0, warp in [0.5, 2]: {self}")

    @property
    def gender(self) -> str:
        return "f" if self.variant in FEMALE_VARIANTS else "m"

    @property
    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}"

    def espeak_parameters(self) -> dict[str, int]:
        """espeak pitch/range/rate that give the target pitch and tempo once the warp has scaled both by ``warp``."""
        return {
            "pitch": int(np.clip(round(self.pitch - 50 * math.log2(self.warp)), 0, 100)),
            "range": int(np.clip(round(self.pitch_range / self.warp), 0, 100)),
            "rate": int(round(self.rate / self.warp)),
        }


@dataclass(frozen=True)
class Channel:
    """A session's recording channel."""

    rt60: float  # seconds, 0 = no reverberation
    drr_db: float  # direct-to-reverberant ratio
    noise: str  # one of NOISES
    snr_db: float
    eq: tuple[tuple[str, float, float, float], ...]  # (peak|lowshelf|highshelf, Hz, gain dB, Q)
    highpass: float  # Hz
    lowpass: float  # Hz
    lowpass_order: int
    level_db: float  # RMS in dBFS
    drive: float = 0.0  # loudspeaker/recorder saturation: tanh drive, 0 = none
    narrowband: bool = False  # a 300-3400 Hz telephone line at 8 kHz
    codec: str = ""  # "name@bit_rate" of FIELD_CODECS, "" = none


@dataclass(frozen=True)
class _Session:
    speaker_index: int
    session_index: int
    speaker: str
    split: str
    name: str
    speaker_voice: Voice
    voice: Voice  # the speaker's voice with this session's pitch and rate drift
    channel: Channel
    durations: tuple[float, ...]
    seed: int

    @property
    def directory(self) -> str:
        return f"{self.split}/{self.speaker}/{self.name}"

    def files(self) -> list[str]:
        return [f"{self.directory}/{u + 1:05d}.wav" for u in range(len(self.durations))]


# ---------------------------------------------------------------------------------------------------------- espeak


_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_chunks: list[np.ndarray] = []
_LIBC = ctypes.CDLL(None)
_LIBC.srand.argtypes = [ctypes.c_uint]


@_CALLBACK_TYPE
def _collect(wav: Any, n: int, _events: Any) -> int:
    if n > 0:
        _chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
    return 0


def _espeak(text: str, voice: Voice, seed: int) -> np.ndarray:
    """int16 samples at ESPEAK_RATE. The library is loaded, used and unloaded so that every call starts afresh."""
    path = espeakng_loader.get_library_path()
    lib = ctypes.CDLL(path)
    try:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        rate = lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)  # AUDIO_OUTPUT_SYNCHRONOUS
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"{path}: espeak_Initialize returned {rate}, expected {ESPEAK_RATE} Hz")
        try:
            lib.espeak_SetSynthCallback(_collect)
            if lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice {voice.espeak_name!r}")
            params = voice.espeak_parameters()
            for key, value in ((3, params["pitch"]), (4, params["range"]), (1, params["rate"])):  # PITCH RANGE RATE
                lib.espeak_SetParameter(key, value, 0)
            lib.espeak_ng_SetRandSeed(seed)
            _LIBC.srand(seed)  # klatt voices draw their noise from libc's rand(), outside espeak's own state
            data = text.encode() + b"\0"
            status = lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None)  # POS_CHARACTER, espeakCHARS_UTF8
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status} for voice {voice.espeak_name!r}")
            return np.concatenate(_chunks) if _chunks else np.zeros(0, np.int16)
        finally:
            lib.espeak_Terminate()
    finally:
        _chunks.clear()
        _ctypes.dlclose(lib._handle)


def speak(voice: Voice, text: str, seed: int = 0) -> np.ndarray:
    """Clean float32 speech at SAMPLE_RATE: espeak-ng synthesis, then the vocal-tract warp.

    Deterministic for a given seed as long as nothing else in the process holds libespeak-ng open; not thread-safe.
    """
    samples = _espeak(text, voice, seed).astype(np.float32) / 32768.0
    return soxr.resample(samples, ESPEAK_RATE * voice.warp, SAMPLE_RATE).astype(np.float32)


# --------------------------------------------------------------------------------------------------------- drawing


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _draw_voice(rng: np.random.Generator, pool: str = "all") -> Voice:
    female, male = VOICE_POOLS[pool]
    return Voice(
        language=str(rng.choice(LANGUAGES)),
        variant=str(rng.choice(female if rng.random() < 0.5 else male)),
        pitch=round(float(rng.uniform(22, 78)), 1),
        pitch_range=round(float(rng.uniform(15, 90)), 1),
        rate=round(float(rng.uniform(130, 215)), 1),
        warp=round(float(rng.uniform(0.85, 1.15)), 4),
    )


def _draw_channel(rng: np.random.Generator, family: str = "studio") -> Channel:
    studio = _draw_studio_channel(rng)
    if family == "studio":
        return studio
    codec = list(FIELD_CODECS)[int(rng.integers(len(FIELD_CODECS)))] if rng.random() < 0.7 else ""
    if codec:
        rates = FIELD_CODECS[codec][3]
        codec = f"{codec}@{int(rates[int(rng.integers(len(rates)))])}"
    return replace(
        studio,
        rt60=round(float(rng.uniform(0.3, 1.2)), 3) if rng.random() < 0.7 else 0.0,
        drive=round(float(rng.uniform(1.0, 6.0)), 2) if rng.random() < 0.5 else 0.0,
        narrowband=bool(rng.random() < 0.5),
        codec=codec,
    )


def _draw_studio_channel(rng: np.random.Generator) -> Channel:
    n_peaks = int(rng.integers(2, 5))
    freqs = np.exp(rng.uniform(np.log(150), np.log(5000), n_peaks))
    peaks = [("peak", float(f), float(g), float(q))
             for f, g, q in zip(freqs, rng.uniform(-9, 9, n_peaks), rng.uniform(0.7, 3, n_peaks))]
    shelves = [("lowshelf", float(rng.uniform(100, 400)), float(rng.uniform(-6, 6)), 0.707),
               ("highshelf", float(rng.uniform(2500, 6000)), float(rng.uniform(-8, 6)), 0.707)]
    reverberant = rng.random() < 0.8
    return Channel(
        rt60=round(float(rng.uniform(0.15, 0.9)), 3) if reverberant else 0.0,
        drr_db=round(float(rng.uniform(-3, 12)), 2),
        noise=str(rng.choice(NOISES)),
        snr_db=round(float(rng.uniform(5, 30)), 2),
        eq=tuple((kind, round(f, 1), round(g, 2), round(q, 3)) for kind, f, g, q in peaks + shelves),
        highpass=round(float(np.exp(rng.uniform(np.log(50), np.log(300)))), 1),
        lowpass=round(float(rng.uniform(3000, 7500)), 1),
        lowpass_order=int(rng.integers(4, 9)),
        level_db=round(float(rng.uniform(-32, -16)), 2),
    )


def _sentence(rng: np.random.Generator) -> str:
    words = [str(rng.choice(_WORDS[tok])) if tok in _WORDS else tok for tok in rng.choice(_TEMPLATES).split()]
    text = " ".join(words).replace(" ,", ",").replace(" ?", "?")
    return text[0].upper() + text[1:] + ("" if text.endswith("?") else ".")


def _text(rng: np.random.Generator, seconds: float, rate: float) -> str:
    """Sentences with comfortably more words than ``seconds`` of speech at ``rate`` words per minute."""
    sentences: list[str] = []
    while sum(len(s.split()) for s in sentences) < 1.4 * seconds * rate / 60 + 3:
        sentences.append(_sentence(rng))
    return " ".join(sentences)


def _session_id(rng: np.random.Generator) -> str:
    first = rng.choice(_ID_CHARS[:62])  # no leading '-' or '_'
    return str(first) + "".join(rng.choice(_ID_CHARS, 10))


def _plan(config: SynthConfig) -> list[_Session]:
    n_dev = config.speakers - config.test_speakers
    sessions = []
    for k in range(config.speakers):
        voice = _draw_voice(_rng(config.seed, _SPEAKER, k), config.voices)
        for s in range(config.sessions):
            rng = _rng(config.seed, _SESSION, k, s)
            name = _session_id(rng)
            drift = replace(
                voice,
                pitch=round(float(np.clip(voice.pitch + rng.normal(0, 2.5), 0, 100)), 1),
                rate=round(voice.rate * float(rng.uniform(0.93, 1.07)), 1),
            )
            durations = tuple(
                round(float(_rng(config.seed, _UTTERANCE, k, s, u).uniform(config.min_duration, config.max_duration)),
                      3)
                for u in range(config.utterances)
            )
            sessions.append(_Session(k, s, f"id{k + 1:05d}", "dev" if k < n_dev else "test", name, voice, drift,
                                     _draw_channel(rng, config.channels), durations, config.seed))
    return sessions


# --------------------------------------------------------------------------------------------------------- signals


def _channel_filter(channel: Channel) -> np.ndarray:
    band = np.vstack([
        sps.butter(2, channel.highpass, "highpass", fs=SAMPLE_RATE, output="sos"),
        sps.butter(channel.lowpass_order, channel.lowpass, "lowpass", fs=SAMPLE_RATE, output="sos"),
    ])
    return np.vstack([biquads(channel.eq), band])


def _rir(channel: Channel, rng: np.random.Generator) -> np.ndarray:
    """Direct path plus an exponentially decaying noise tail (60 dB down after rt60), scaled to the DRR."""
    n = max(int(channel.rt60 * SAMPLE_RATE), 1)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-3 * np.log(10) * t / channel.rt60)
    tail = sps.sosfilt(sps.butter(1, rng.uniform(2000, 6000), fs=SAMPLE_RATE, output="sos"), tail)  # air absorption
    tail[: int(0.002 * SAMPLE_RATE)] = 0  # first reflections arrive after the direct path
    tail *= 10 ** (-channel.drr_db / 20) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    return tail


def _babble(session: _Session, rng: np.random.Generator) -> np.ndarray:
    """3-6 random other talkers mixed into a bed as long as the session's longest utterance."""
    n = int(round(max(session.durations) * SAMPLE_RATE))
    bed = np.zeros(n)
    for _ in range(int(rng.integers(3, 7))):
        voice = _draw_voice(rng)
        talker = speak(voice, _text(rng, n / SAMPLE_RATE + 1, voice.rate), int(rng.integers(2**31)))
        talker = np.roll(np.resize(talker, n), int(rng.integers(n)))  # repeated if short, random onset
        bed += talker * 10 ** (rng.uniform(-6, 0) / 20) / (np.sqrt(np.mean(talker**2)) + 1e-9)
    return bed


def _fade(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    ramp = np.sin(np.linspace(0, np.pi / 2, min(int(seconds * SAMPLE_RATE), len(x) // 2))) ** 2
    x[: len(ramp)] *= ramp
    x[len(x) - len(ramp) :] *= ramp[::-1]
    return x


def _utterance(session: _Session, u: int, rir: np.ndarray, sos: np.ndarray, babble: np.ndarray | None) -> np.ndarray:
    """One utterance as int16: speech cut to its duration, room, noise at the SNR, channel filter, level."""
    rng = _rng(session.seed, _UTTERANCE_SIGNAL, session.speaker_index, session.session_index, u)
    n = int(round(session.durations[u] * SAMPLE_RATE))
    voice = session.voice
    speech = np.zeros(0, np.float32)
    while len(speech) < n:
        text = _text(rng, (n - len(speech)) / SAMPLE_RATE, voice.rate)
        speech = np.concatenate([speech, speak(voice, text, int(rng.integers(2**31)))])
    x = sps.fftconvolve(_fade(speech[:n].astype(np.float64)), rir)[:n]
    if babble is None:
        noise = colored_noise(rng, n, _NOISE_EXPONENT[session.channel.noise])
    else:
        start = int(rng.integers(len(babble) - n + 1))
        noise = babble[start : start + n]
    x = mix_at_snr(x, noise, session.channel.snr_db)
    x = _field(sps.sosfilt(sos, x), session.channel)
    x *= 10 ** ((session.channel.level_db + rng.normal(0, 1.0)) / 20) / np.sqrt(np.mean(x**2))
    x *= min(1.0, 0.99 / np.max(np.abs(x)))  # keep the peak in range rather than clip
    return np.round(x * 32767).astype(np.int16)


def _field(x: np.ndarray, channel: Channel) -> np.ndarray:
    """The field channel's saturation, telephone line and codec (nothing for a studio channel)."""
    if channel.drive > 0:
        x = np.tanh(channel.drive * x / (np.max(np.abs(x)) + 1e-12))
    if channel.narrowband:
        line = sps.sosfilt(sps.butter(4, [300, 3400], "bandpass", fs=8000, output="sos"),
                           soxr.resample(x, SAMPLE_RATE, 8000))
        x = fit_length(soxr.resample(line, 8000, SAMPLE_RATE), len(x))
    if channel.codec:
        name, _, bit_rate = channel.codec.partition("@")
        encoder, container, rate, _ = FIELD_CODECS[name]
        x = codec_round_trip(0.5 * x / (np.max(np.abs(x)) + 1e-12), encoder, container, rate, int(bit_rate) or None)
    return x


def _render_session(session: _Session, root: str) -> None:
    """Synthesise and write all utterances of a session."""
    rng = _rng(session.seed, _SESSION_SIGNAL, session.speaker_index, session.session_index)
    rir = _rir(session.channel, rng) if session.channel.rt60 > 0 else np.ones(1)
    babble = _babble(session, rng) if session.channel.noise == "babble" else None
    sos = _channel_filter(session.channel)
    directory = Path(root) / session.directory
    directory.mkdir(parents=True, exist_ok=True)
    for u, rel in enumerate(session.files()):
        audio = _utterance(session, u, rir, sos, babble)
        atomic_write(Path(root) / rel, lambda p: sf.write(p, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV"))


# ---------------------------------------------------------------------------------------------------------- trials


def _trial_capacity(config: SynthConfig) -> tuple[int, int]:
    """Numbers of distinct cross-session target pairs and of non-target pairs among test utterances."""
    per_speaker = config.sessions * config.utterances
    n_target = config.test_speakers * math.comb(config.sessions, 2) * config.utterances**2
    return n_target, math.comb(config.test_speakers, 2) * per_speaker**2


def _trials(config: SynthConfig, sessions: list[_Session]) -> list[str]:
    """Balanced VoxCeleb1 trial lines (paths relative to test/) drawn without repetition; targets cross sessions."""
    test = [s for s in sessions if s.split == "test"]
    files = np.array([f.removeprefix("test/") for s in test for f in s.files()]).reshape(
        config.test_speakers, config.sessions, config.utterances
    )
    rng = _rng(config.seed, _TRIALS)
    n_target, n_nontarget = _trial_capacity(config)
    n_utt, per_speaker = config.utterances, config.sessions * config.utterances
    # target index -> (speaker, session pair, utterance in first session, utterance in second session)
    index = rng.choice(n_target, config.trials // 2, replace=False)
    speaker, rest = np.divmod(index, n_target // config.test_speakers)
    pair, rest = np.divmod(rest, n_utt**2)
    first, second = np.triu_indices(config.sessions, 1)
    u1, u2 = np.divmod(rest, n_utt)
    target = np.stack([files[speaker, first[pair], u1], files[speaker, second[pair], u2]], axis=1)
    # non-target index -> (speaker pair, utterance of the first speaker, utterance of the second speaker)
    index = rng.choice(n_nontarget, config.trials - config.trials // 2, replace=False)
    pair, rest = np.divmod(index, per_speaker**2)
    first, second = np.triu_indices(config.test_speakers, 1)
    u1, u2 = np.divmod(rest, per_speaker)
    flat = files.reshape(config.test_speakers, per_speaker)
    nontarget = np.stack([flat[first[pair], u1], flat[second[pair], u2]], axis=1)
    labels = np.repeat([1, 0], [len(target), len(nontarget)])
    pairs = np.concatenate([target, nontarget])
    swap = rng.random(len(pairs)) < 0.5
    pairs[swap] = pairs[swap, ::-1]
    order = rng.permutation(len(pairs))
    return [f"{labels[i]} {pairs[i, 0]} {pairs[i, 1]}" for i in order]


# ------------------------------------------------------------------------------------------------------------ main


def _prepare(out: Path, config: SynthConfig) -> None:
    """Refuse a directory holding something else; record the arguments (first, so a killed run can resume)."""
    record = {"config": asdict(config), "sample_rate": SAMPLE_RATE, "espeakng_loader": version("espeakng-loader")}
    meta = out / "synth.json"
    if meta.exists():
        try:
            previous = json.loads(meta.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{meta}: unreadable ({err}); remove it or use a new directory") from None
        if previous != record:
            raise ValueError(
                f"{meta}: corpus was made with other settings ({previous.get('config')}); use a new directory"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: exists, is not empty and has no synth.json; use a new directory")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta, json.dumps(record, indent=2) + "\n")


def _speakers_json(sessions: list[_Session]) -> dict[str, Any]:
    speakers: dict[str, Any] = {}
    for s in sessions:
        entry = speakers.setdefault(s.speaker, {
            "split": s.split, "gender": s.voice.gender, "voice": asdict(s.speaker_voice), "sessions": {}
        })
        entry["sessions"][s.name] = {
            "pitch": s.voice.pitch,
            "rate": s.voice.rate,
            "espeak": s.voice.espeak_parameters(),
            "channel": asdict(s.channel),
            "durations": list(s.durations),
        }
    return speakers


def synthesize_corpus(
    out: str | Path, config: SynthConfig, workers: int | None = None, progress: bool = False
) -> dict[str, Any]:
    """Write a synthetic corpus to ``out`` (see module docstring); returns counts, audio seconds and wall time."""
    start = time.perf_counter()
    config.validate()
    if workers is not None and workers < 1:
        raise ValueError(f"synthesize_corpus: workers={workers} must be >= 1")
    out = Path(out)
    _prepare(out, config)
    sessions = _plan(config)
    todo = [s for s in sessions if not all((out / f).exists() for f in s.files())]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(todo)))
    if todo:
        _run(todo, out, workers, progress)
    atomic_write_text(out / "speakers.json", json.dumps(_speakers_json(sessions), indent=1) + "\n")
    trials = _trials(config, sessions) if config.trials else []
    atomic_write_text(out / "trials.txt", "".join(line + "\n" for line in trials))
    return {
        "speakers": config.speakers,
        "dev_speakers": config.speakers - config.test_speakers,
        "test_speakers": config.test_speakers,
        "sessions": len(sessions),
        "utterances": len(sessions) * config.utterances,
        "synthesized": len(todo) * config.utterances,
        "trials": len(trials),
        "target_trials": sum(line.startswith("1 ") for line in trials),
        "audio_seconds": round(sum(round(d * SAMPLE_RATE) for s in sessions for d in s.durations) / SAMPLE_RATE, 3),
        "wall_seconds": round(time.perf_counter() - start, 3),
    }


def _init_worker(parent: int) -> None:
    """Leave Ctrl-C to the parent (which finishes the running sessions) and exit if the parent is killed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


_SESSIONS_PER_WORKER = 200  # fresh worker processes after this many sessions: every espeak load/unload leaks a few kB


def _run(todo: list[_Session], out: Path, workers: int, progress: bool) -> None:
    """Render ``todo`` in rounds of fresh worker processes (``max_tasks_per_child`` deadlocks CPython 3.11's pool
    when workers retire while tasks are queued)."""
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TextColumn("utterances"), TimeRemainingColumn())
    context = multiprocessing.get_context("spawn")  # espeak-ng is process-global: keep it out of the caller
    per_round = _SESSIONS_PER_WORKER * workers
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("synth", total=sum(len(s.durations) for s in todo))
        for first in range(0, len(todo), per_round):
            with ProcessPoolExecutor(workers, context, _init_worker, (os.getpid(),)) as pool:
                futures = {pool.submit(_render_session, s, str(out)): s for s in todo[first : first + per_round]}
                try:
                    for future in as_completed(futures):
                        future.result()
                        bar.advance(task, len(futures[future].durations))
                except BaseException:  # e.g. Ctrl-C: drop the queued sessions, let the running ones finish
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
