"""A synthetic corpus on disk: the output folder's record (resume or refuse), the rendering, ``speakers.json`` and
``trials.txt`` (written last, so their presence marks a finished corpus)."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...fileio import atomic_write_text
from .. import espeak
from ..dsp import SAMPLE_RATE
from .errors import SynthError
from .plan import Session, SynthConfig, plan_corpus, trial_files
from .render import OnProgress, render_sessions
from .trials import trial_lines


def prepare_output(out: Path, record: dict[str, Any], meta: str = "synth.json") -> None:
    """Refuse a directory holding something else; write ``record`` to ``out/meta`` (first, so a killed run can
    resume), or check that it matches the record already there."""
    path = out / meta
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SynthError(f"{path}: unreadable ({err}); remove it or use a new directory") from None
        if previous != record:
            raise SynthError(
                f"{path}: corpus was made with other settings ({previous.get('config')}); use a new directory"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise SynthError(f"{out}: exists, is not empty and has no {meta}; use a new directory")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def _speakers_json(sessions: list[Session]) -> dict[str, Any]:
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
    out: str | Path, config: SynthConfig, workers: int | None = None, on_progress: OnProgress | None = None
) -> dict[str, Any]:
    """Write a synthetic corpus to ``out`` (see :mod:`ghostvlad.data.synth`); returns counts, audio seconds and wall
    time. ``on_progress(done, total)``: utterances synthesised so far of those this call makes (a resumed corpus
    makes only its missing sessions'). Without espeak-ng raises :class:`~ghostvlad.data.espeak.EspeakUnavailable`
    before writing anything."""
    start = time.perf_counter()
    config.validate()
    if workers is not None and workers < 1:
        raise SynthError(f"synthesize_corpus: workers={workers} must be >= 1")
    out = Path(out)
    settings = asdict(config)
    if settings["drift"] == 1.0:  # as corpora made before the setting existed recorded it: they stay resumable
        del settings["drift"]
    record = {"config": settings, "sample_rate": SAMPLE_RATE, "espeakng_loader": espeak.library_version()}
    prepare_output(out, record)
    sessions = plan_corpus(config)
    synthesized = render_sessions(sessions, out, workers, on_progress)
    atomic_write_text(out / "speakers.json", json.dumps(_speakers_json(sessions), indent=1) + "\n")
    trials = trial_lines(trial_files(sessions), config.trials, config.seed) if config.trials else []
    atomic_write_text(out / "trials.txt", "".join(line + "\n" for line in trials))
    return {
        "speakers": config.speakers,
        "dev_speakers": config.speakers - config.test_speakers,
        "test_speakers": config.test_speakers,
        "sessions": len(sessions),
        "utterances": len(sessions) * config.utterances,
        "synthesized": synthesized,
        "trials": len(trials),
        "target_trials": sum(line.startswith("1 ") for line in trials),
        "audio_seconds": round(sum(round(d * SAMPLE_RATE) for s in sessions for d in s.durations) / SAMPLE_RATE, 3),
        "wall_seconds": round(time.perf_counter() - start, 3),
    }
