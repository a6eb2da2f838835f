"""What a corpus holds before any audio is made: its :class:`SynthConfig`, and every speaker's sessions (speech
source, channel, utterance durations), all drawn from the seed."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .channels import CHANNEL_FAMILIES, Channel, draw_channel
from .errors import SynthError
from .seeds import SESSION, SPEAKER, UTTERANCE, keyed_rng
from .speakers import VOICE_POOLS, draw_voice, drift_voice
from .trials import trial_capacity

_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


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
    drift: float = 1.0  # scale of a session's pitch and rate drift from its speaker's voice (see drift_voice)

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
            (0 <= self.drift <= 4, f"drift={self.drift} must be in [0, 4]"),
        )
        for ok, message in checks:
            if not ok:
                raise SynthError(f"SynthConfig: {message}")
        if self.trials == 0:
            return
        if self.sessions < 2 or self.test_speakers < 2:
            raise SynthError(
                "SynthConfig: trials need sessions >= 2 (targets cross sessions) and test_speakers >= 2 (non-targets)"
            )
        n_target, n_nontarget = trial_capacity(self.test_speakers, self.sessions, self.utterances)
        if self.trials // 2 > n_target or self.trials - self.trials // 2 > n_nontarget:
            raise SynthError(
                f"SynthConfig: trials={self.trials} needs {self.trials // 2} distinct target pairs but the test set "
                f"has only {n_target} (and {n_nontarget} non-target pairs); lower trials or add test speakers/sessions"
            )


class SpeechSource(Protocol):
    """What a session speaks with: espeak-ng's :class:`Voice` or any other engine's voice."""

    @property
    def rate(self) -> float:
        """Words per minute; sizes the text asked for an utterance (a low estimate costs another call, no more)."""

    def speak(self, text: str, seed: int) -> np.ndarray:
        """Clean float32 speech at SAMPLE_RATE for ``text``, the same for the same (text, seed)."""


@dataclass(frozen=True)
class Session:
    """One recording session of a speaker: its speech source, channel and utterance durations (see
    :func:`plan_speaker`); rendered by :func:`render_sessions`."""

    speaker_index: int
    session_index: int
    speaker: str
    split: str
    name: str
    speaker_voice: SpeechSource
    voice: SpeechSource  # the speaker's voice with this session's drift
    channel: Channel
    durations: tuple[float, ...]
    seed: int

    @property
    def directory(self) -> str:
        return f"{self.split}/{self.speaker}/{self.name}"

    def files(self) -> list[str]:
        return [f"{self.directory}/{u + 1:05d}.wav" for u in range(len(self.durations))]


def _session_id(rng: np.random.Generator) -> str:
    first = rng.choice(_ID_CHARS[:62])  # no leading '-' or '_'
    return str(first) + "".join(rng.choice(_ID_CHARS, 10))


def plan_speaker(seed: int, index: int, speaker: str, split: str, voice: SpeechSource, sessions: int,
                 utterances: int, durations: tuple[float, float], channels: str,
                 drift: Callable[[SpeechSource, np.random.Generator], SpeechSource]) -> list[Session]:
    """Sessions of one speaker (``index`` keys its random draws): each gets a name, ``drift(voice, rng)`` (the
    session's variation of the voice), a channel of family ``channels`` and utterance durations in ``durations``."""
    out = []
    for s in range(sessions):
        rng = keyed_rng(seed, SESSION, index, s)
        name = _session_id(rng)
        session_voice = drift(voice, rng)
        lengths = tuple(round(float(keyed_rng(seed, UTTERANCE, index, s, u).uniform(*durations)), 3)
                        for u in range(utterances))
        out.append(Session(index, s, speaker, split, name, voice, session_voice, draw_channel(rng, channels),
                           lengths, seed))
    return out


def plan_corpus(config: SynthConfig) -> list[Session]:
    """Every session of a corpus: speakers ``id00001...`` (the last ``test_speakers`` of them held out for test),
    each with an espeak-ng voice of ``config.voices`` and sessions planned by :func:`plan_speaker`."""
    n_dev = config.speakers - config.test_speakers
    return [session for k in range(config.speakers)
            for session in plan_speaker(config.seed, k, f"id{k + 1:05d}", "dev" if k < n_dev else "test",
                                        draw_voice(keyed_rng(config.seed, SPEAKER, k), config.voices), config.sessions,
                                        config.utterances, (config.min_duration, config.max_duration),
                                        config.channels, functools.partial(drift_voice, scale=config.drift))]


def trial_files(sessions: Sequence[Session]) -> np.ndarray:
    """Paths relative to test/ of the test sessions' utterances, shaped (speakers, sessions, utterances); every
    speaker must have as many sessions and every session as many utterances."""
    test = [s for s in sessions if s.split == "test"]
    speakers = list(dict.fromkeys(s.speaker for s in test))
    files = [f.removeprefix("test/") for s in test for f in s.files()]
    return np.array(files).reshape(len(speakers), -1, len(test[0].durations))
