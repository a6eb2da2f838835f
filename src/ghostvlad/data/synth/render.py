"""Sessions to wav files: each utterance's speech through its session's room, noise, filters and level, rendered in
rounds of fresh worker processes (espeak-ng is process-global), reporting progress through a callback."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import scipy.signal as sps
import soundfile as sf

from ...fileio import atomic_write
from ..dsp import SAMPLE_RATE, colored_noise, mix_at_snr
from .errors import SynthError
from .channels import NOISE_EXPONENT, channel_filter, field_effects, room_response
from .plan import Session
from .seeds import SESSION_SIGNAL, UTTERANCE_SIGNAL, keyed_rng
from .speakers import draw_voice, speak
from .words import speech_text

OnProgress = Callable[[int, int], None]  # (utterances written so far, utterances to write)


def _babble(session: Session, rng: np.random.Generator) -> np.ndarray:
    """3-6 random other talkers mixed into a bed as long as the session's longest utterance."""
    n = int(round(max(session.durations) * SAMPLE_RATE))
    bed = np.zeros(n)
    for _ in range(int(rng.integers(3, 7))):
        voice = draw_voice(rng)
        talker = speak(voice, speech_text(rng, n / SAMPLE_RATE + 1, voice.rate), int(rng.integers(2**31)))
        talker = np.roll(np.resize(talker, n), int(rng.integers(n)))  # repeated if short, random onset
        bed += talker * 10 ** (rng.uniform(-6, 0) / 20) / (np.sqrt(np.mean(talker**2)) + 1e-9)
    return bed


def _fade(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    ramp = np.sin(np.linspace(0, np.pi / 2, min(int(seconds * SAMPLE_RATE), len(x) // 2))) ** 2
    x[: len(ramp)] *= ramp
    x[len(x) - len(ramp) :] *= ramp[::-1]
    return x


def _utterance(session: Session, u: int, rir: np.ndarray, sos: np.ndarray, babble: np.ndarray | None) -> np.ndarray:
    """One utterance as int16: speech cut to its duration, room, noise at the SNR, channel filter, level."""
    rng = keyed_rng(session.seed, UTTERANCE_SIGNAL, session.speaker_index, session.session_index, u)
    n = int(round(session.durations[u] * SAMPLE_RATE))
    voice = session.voice
    speech = np.zeros(0, np.float32)
    while len(speech) < n:
        text = speech_text(rng, (n - len(speech)) / SAMPLE_RATE, voice.rate)
        speech = np.concatenate([speech, voice.speak(text, int(rng.integers(2**31)))])
    x = sps.fftconvolve(_fade(speech[:n].astype(np.float64)), rir)[:n]
    if babble is None:
        noise = colored_noise(rng, n, NOISE_EXPONENT[session.channel.noise])
    else:
        start = int(rng.integers(len(babble) - n + 1))
        noise = babble[start : start + n]
    x = mix_at_snr(x, noise, session.channel.snr_db)
    x = field_effects(sps.sosfilt(sos, x), session.channel)
    x *= 10 ** ((session.channel.level_db + rng.normal(0, 1.0)) / 20) / np.sqrt(np.mean(x**2))
    x *= min(1.0, 0.99 / np.max(np.abs(x)))  # keep the peak in range rather than clip
    return np.round(x * 32767).astype(np.int16)


def _render_session(session: Session, root: str) -> None:
    """Synthesise and write all utterances of a session."""
    rng = keyed_rng(session.seed, SESSION_SIGNAL, session.speaker_index, session.session_index)
    rir = room_response(session.channel, rng) if session.channel.rt60 > 0 else np.ones(1)
    babble = _babble(session, rng) if session.channel.noise == "babble" else None
    sos = channel_filter(session.channel)
    directory = Path(root) / session.directory
    directory.mkdir(parents=True, exist_ok=True)
    for u, rel in enumerate(session.files()):
        audio = _utterance(session, u, rir, sos, babble)
        atomic_write(Path(root) / rel, lambda p: sf.write(p, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV"))


def render_sessions(sessions: Sequence[Session], out: Path, workers: int | None = None,
                    on_progress: OnProgress | None = None) -> int:
    """Render the sessions whose wav files are not all in ``out`` yet (in worker processes; ``workers`` defaults
    to the usable cores); returns the number of utterances synthesised. ``on_progress(done, total)`` is called
    once before the first session and again as each session's utterances are written."""
    if workers is not None and workers < 1:
        raise SynthError(f"workers={workers} must be >= 1")
    todo = [s for s in sessions if not all((out / f).exists() for f in s.files())]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    total = sum(len(s.durations) for s in todo)
    if todo:
        _run(todo, out, max(1, min(workers or cores, len(todo))), total, on_progress or (lambda done, total: None))
    return total


def _init_worker(parent: int) -> None:
    """Leave Ctrl-C to the parent (which finishes the running sessions) and exit if the parent is killed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


_SESSIONS_PER_WORKER = 200  # fresh worker processes after this many sessions: every espeak load/unload leaks a few kB


def _run(todo: list[Session], out: Path, workers: int, total: int, on_progress: OnProgress) -> None:
    """Render ``todo`` in rounds of fresh worker processes (``max_tasks_per_child`` deadlocks CPython 3.11's pool
    when workers retire while tasks are queued)."""
    context = multiprocessing.get_context("spawn")  # espeak-ng is process-global: keep it out of the caller
    per_round = _SESSIONS_PER_WORKER * workers
    done = 0
    on_progress(done, total)
    for first in range(0, len(todo), per_round):
        with ProcessPoolExecutor(workers, context, _init_worker, (os.getpid(),)) as pool:
            futures = {pool.submit(_render_session, s, str(out)): s for s in todo[first : first + per_round]}
            try:
                for future in as_completed(futures):
                    future.result()
                    done += len(futures[future].durations)
                    on_progress(done, total)
            except BaseException:  # e.g. Ctrl-C: drop the queued sessions, let the running ones finish
                pool.shutdown(wait=True, cancel_futures=True)
                raise
