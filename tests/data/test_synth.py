import json
import re
import shutil
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from ghostvlad.data.synth import SAMPLE_RATE, SynthConfig, Voice, speak, synthesize_corpus

CONFIG = SynthConfig(
    speakers=4, test_speakers=2, sessions=2, utterances=2, min_duration=1.0, max_duration=2.0, trials=8, seed=3
)
TEXT = "The old farmer carried the green table across the river to a famous museum."


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The same small corpus made with one and with two worker processes."""
    one, two = tmp_path_factory.mktemp("w1") / "corpus", tmp_path_factory.mktemp("w2") / "corpus"
    summary = synthesize_corpus(one, CONFIG, workers=1)
    synthesize_corpus(two, CONFIG, workers=2)
    return one, two, summary


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _f0(x: np.ndarray) -> float:
    """Median F0 (Hz) of the voiced frames, by librosa's pYIN."""
    f0, voiced, _ = librosa.pyin(x, fmin=50, fmax=450, sr=SAMPLE_RATE, frame_length=1024)
    return float(np.median(f0[voiced]))


def _centroid(x: np.ndarray) -> float:
    return float(librosa.feature.spectral_centroid(y=x, sr=SAMPLE_RATE).mean())


def test_layout_and_format(corpora):
    root, _, summary = corpora
    wavs = sorted(root.rglob("*.wav"))
    assert len(wavs) == summary["utterances"] == 16 == summary["synthesized"]
    assert {p.name for p in root.iterdir()} == {"dev", "test", "trials.txt", "speakers.json", "synth.json"}
    total = 0.0
    for path in wavs:
        split, speaker, session, name = path.relative_to(root).parts
        assert split in ("dev", "test") and re.fullmatch(r"id\d{5}", speaker)
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{10}", session) and re.fullmatch(r"0000[12]\.wav", name)
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert CONFIG.min_duration <= info.duration <= CONFIG.max_duration
        total += info.duration
        audio, _ = sf.read(path, dtype="float32")
        assert 0.003 < np.sqrt(np.mean(audio**2)) and np.abs(audio).max() < 1.0
    assert summary["audio_seconds"] == pytest.approx(total, abs=1e-3)
    assert not list(root.rglob("*.tmp"))
    assert json.loads((root / "synth.json").read_text())["config"] == {
        "speakers": 4, "test_speakers": 2, "sessions": 2, "utterances": 2,
        "min_duration": 1.0, "max_duration": 2.0, "trials": 8, "seed": 3, "voices": "all", "channels": "studio",
    }


def test_same_seed_same_bytes_whatever_the_workers(corpora):
    one, two, _ = corpora
    assert _tree(one) == _tree(two)


def test_other_seed_other_corpus(corpora, tmp_path):
    summary = synthesize_corpus(tmp_path, SynthConfig(**{**CONFIG.__dict__, "seed": 4, "trials": 0}), workers=2)
    assert summary["trials"] == 0 and (tmp_path / "trials.txt").read_text() == ""
    ours, theirs = _tree(corpora[0]), _tree(tmp_path)
    assert len(theirs) == len(ours) and not set(ours.values()) & set(theirs.values())


def test_speakers_split_and_metadata(corpora):
    root, _, summary = corpora
    dev = {p.name for p in (root / "dev").iterdir()}
    test = {p.name for p in (root / "test").iterdir()}
    assert len(dev) == 2 and len(test) == 2 and not dev & test
    assert (summary["dev_speakers"], summary["test_speakers"], summary["sessions"]) == (2, 2, 8)
    speakers = json.loads((root / "speakers.json").read_text())
    assert set(speakers) == dev | test
    for name, entry in speakers.items():
        assert entry["split"] == ("dev" if name in dev else "test")
        assert set(entry["sessions"]) == {p.name for p in (root / entry["split"] / name).iterdir()}
        assert set(entry["voice"]) == {"language", "variant", "pitch", "pitch_range", "rate", "warp"}
        assert 0.85 <= entry["voice"]["warp"] <= 1.15
    voices = [tuple(entry["voice"].values()) for entry in speakers.values()]
    assert len(set(voices)) == len(voices)


def test_trials(corpora):
    root, _, summary = corpora
    lines = (root / "trials.txt").read_text().splitlines()
    assert len(lines) == summary["trials"] == 8 and summary["target_trials"] == 4
    pairs = set()
    for line in lines:
        label, enrol, test = line.split(" ")
        assert label in ("0", "1")
        (s1, sess1, _), (s2, sess2, _) = enrol.split("/"), test.split("/")
        assert (root / "test" / enrol).is_file() and (root / "test" / test).is_file()
        assert (label == "1") == (s1 == s2)
        if label == "1":
            assert sess1 != sess2
        pairs.add(frozenset((enrol, test)))
    assert len(pairs) == 8
    assert sum(line.startswith("1 ") for line in lines) == 4


def test_warp_moves_formants_but_keeps_pitch():
    low, high = (speak(Voice("en", "m3", 50, 50, 170, warp), TEXT, seed=1) for warp in (0.87, 1.13))
    assert len(low) / len(high) == pytest.approx(1.0, abs=0.03)  # tempo compensated through the espeak rate
    assert _f0(high) / _f0(low) == pytest.approx(1.0, abs=0.06)  # pitch compensated through espeak pitch/range
    assert _centroid(high) / _centroid(low) > 1.06  # formants scaled up


def test_voice_parameters_change_pitch():
    low = _f0(speak(Voice("en", "m3", 30, 50, 170, 1.0), TEXT))
    high = _f0(speak(Voice("en", "m3", 70, 50, 170, 1.0), TEXT))
    female = _f0(speak(Voice("de", "f2", 70, 50, 170, 1.0), TEXT))
    assert 80 < low < 95 and high / low > 1.3 and female / low > 2.2


def test_speak_is_deterministic_and_checks_the_voice():
    breathy = Voice("en-us", "caleb", 40, 60, 180, 0.9)  # klatt source with breath noise
    first = speak(breathy, "hello there", seed=7)
    other = speak(Voice("de", "f2", 60, 40, 150, 1.1), "a different sentence", seed=8)
    assert np.array_equal(speak(breathy, "hello there", seed=7), first)
    assert not np.array_equal(speak(breathy, "hello there", seed=9), first)
    assert len(other) > 0.5 * SAMPLE_RATE
    with pytest.raises(RuntimeError, match="no voice 'xx-none\\+m3'"):
        speak(Voice("xx-none", "m3", 50, 50, 170, 1.0), "hello")
    with pytest.raises(ValueError, match="^Voice: .*warp in"):
        Voice("en", "m3", 50, 50, 170, 0.0)


def test_sessions_have_their_own_channel(corpora):
    """Long-term spectra of one session's utterances agree better than those of different sessions."""
    root, _, _ = corpora

    def ltas(path: Path) -> np.ndarray:
        mel = librosa.power_to_db(librosa.feature.melspectrogram(y=sf.read(path, dtype="float32")[0], sr=SAMPLE_RATE))
        return mel.mean(axis=1) - mel.mean()

    for speaker in sorted(root.glob("*/id*")):
        (a1, a2), (b1, b2) = ([ltas(p) for p in sorted(s.glob("*.wav"))] for s in sorted(speaker.iterdir()))
        within = np.linalg.norm(a1 - a2) + np.linalg.norm(b1 - b2)
        across = np.linalg.norm(a1 - b1) + np.linalg.norm(a2 - b2)
        assert across > 1.2 * within, speaker.name


def test_resume_keeps_complete_sessions_and_redoes_the_rest(corpora, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(corpora[0], root)
    before = _tree(root)
    assert synthesize_corpus(root, CONFIG)["synthesized"] == 0
    victim = sorted(root.rglob("*.wav"))[5]
    victim.unlink()
    stale = victim.with_name(f".{victim.name}.x1y2z3.tmp")
    stale.write_bytes(b"partial")  # as left by a run killed mid-write
    assert synthesize_corpus(root, CONFIG, workers=1)["synthesized"] == CONFIG.utterances
    stale.unlink()
    assert _tree(root) == before


def test_refuses_a_foreign_directory(corpora, tmp_path):
    other = SynthConfig(**{**CONFIG.__dict__, "seed": 4})
    with pytest.raises(ValueError, match=r"synth\.json: corpus was made with other settings"):
        synthesize_corpus(corpora[0], other)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and has no synth.json"):
        synthesize_corpus(tmp_path, CONFIG)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trials": 20}, "needs 10 distinct target pairs but the test set has only 8"),
        ({"sessions": 1}, "trials need sessions >= 2"),
        ({"test_speakers": 4}, r"test_speakers=4 must be in \[1, speakers-1=3\]"),
        ({"min_duration": 3.0}, "min_duration"),
        ({"seed": -1}, "seed=-1"),
        ({"voices": "robots"}, "voices='robots': choose all, formant, klatt"),
        ({"channels": "space"}, "channels='space': choose studio, field"),
        ({"drift": -1.0}, r"drift=-1.0 must be in \[0, 4\]"),
    ],
)
def test_bad_config(tmp_path, change, message):
    with pytest.raises(ValueError, match=f"^SynthConfig: .*{message}"):
        synthesize_corpus(tmp_path / "x", SynthConfig(**{**CONFIG.__dict__, **change}))
    assert not (tmp_path / "x").exists()


def test_bad_workers(tmp_path):
    with pytest.raises(ValueError, match="^synthesize_corpus: workers=0 must be >= 1"):
        synthesize_corpus(tmp_path, CONFIG, workers=0)


def test_voice_pools_and_field_channels(tmp_path):
    """A klatt/field corpus: Klatt voices only, every session's channel drawn from the field family, rendered."""
    config = SynthConfig(speakers=3, test_speakers=2, sessions=4, utterances=1, min_duration=1.0, max_duration=1.5,
                         trials=4, seed=5, voices="klatt", channels="field")
    synthesize_corpus(tmp_path, config, workers=1)
    speakers = json.loads((tmp_path / "speakers.json").read_text())
    assert all(entry["voice"]["variant"].startswith("klatt") for entry in speakers.values())
    channels = [s["channel"] for entry in speakers.values() for s in entry["sessions"].values()]
    assert any(c["codec"] for c in channels) and any(c["narrowband"] for c in channels)
    for entry_name, entry in speakers.items():
        for session, info in entry["sessions"].items():
            path = tmp_path / entry["split"] / entry_name / session / "00001.wav"
            wave, rate = sf.read(path, dtype="float32")
            assert rate == SAMPLE_RATE and len(wave) == round(info["durations"][0] * SAMPLE_RATE)
            if info["channel"]["narrowband"]:  # a telephone line leaves nothing above 4 kHz
                spectrum = np.abs(np.fft.rfft(wave)) ** 2
                assert spectrum[len(spectrum) // 2 + 200 :].sum() < 1e-3 * spectrum.sum()


@pytest.mark.slow
def test_rounds_of_fresh_workers_give_the_same_corpus(corpora, tmp_path, monkeypatch):
    """Sessions rendered over several rounds of worker processes (as long corpora are) are byte-identical."""
    from ghostvlad.data.synth import render

    monkeypatch.setattr(render, "_SESSIONS_PER_WORKER", 1)
    synthesize_corpus(tmp_path / "corpus", CONFIG, workers=2)
    assert _tree(tmp_path / "corpus") == _tree(corpora[0])


def test_progress_goes_to_the_callback_and_nothing_is_printed(corpora, tmp_path, capfd):
    """The library reports progress through ``on_progress(done, total)`` (the CLI draws the bar) and prints nothing;
    a resumed corpus counts only what it makes."""
    root, _, _ = corpora
    copy = tmp_path / "corpus"
    shutil.copytree(root, copy)
    for wav in (copy / "dev" / "id00001").rglob("*.wav"):  # 2 sessions of 2 utterances to redo
        wav.unlink()
    calls = []
    summary = synthesize_corpus(copy, CONFIG, workers=1, on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 4), (2, 4), (4, 4)] and summary["synthesized"] == 4
    assert capfd.readouterr() == ("", "")
    assert _tree(copy) == _tree(root)


def test_without_espeak_synthesis_is_one_clear_line_and_the_rest_imports(tmp_path, monkeypatch):
    """espeak-ng is the optional ``synth`` extra: without it ghostvlad (CLI included) imports and works, and synthesis
    fails before writing anything, saying what to install."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from ghostvlad.cli import app
    from ghostvlad.data.espeak import EspeakUnavailable

    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import espeakng_loader now raises ImportError
    with pytest.raises(EspeakUnavailable, match=r"espeak-ng is not installed: pip install 'ghostvlad\[synth\]'"):
        synthesize_corpus(tmp_path / "corpus", CONFIG, workers=1)
    assert not (tmp_path / "corpus").exists()
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "cli"), "--speakers", "4", "--test-speakers", "2",
                                   "--trials", "0"])
    assert res.exit_code == 1 and "espeak-ng is not installed" in res.output and "Traceback" not in res.output
    script = ("import sys; sys.modules['espeakng_loader'] = None\n"
              "import ghostvlad, ghostvlad.cli, ghostvlad.recipes, ghostvlad.data.synth, ghostvlad.data.engine_set\n"
              "from ghostvlad.cli import app\n"
              "from typer.testing import CliRunner\n"
              "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_drift_scales_the_same_draws():
    """``drift`` multiplies each session's pitch and rate change from the speaker's voice; the channels stay."""
    from ghostvlad.data.synth.plan import plan_corpus

    plans = {k: plan_corpus(SynthConfig(**{**CONFIG.__dict__, "drift": k})) for k in (0.0, 1.0, 2.0)}
    for still, once, twice in zip(plans[0.0], plans[1.0], plans[2.0]):
        assert still.channel == once.channel == twice.channel and still.name == once.name
        assert (still.voice.pitch, still.voice.rate) == (still.speaker_voice.pitch, still.speaker_voice.rate)
        base = once.speaker_voice
        assert twice.voice.pitch - base.pitch == pytest.approx(2 * (once.voice.pitch - base.pitch), abs=0.11)
        assert twice.voice.rate - base.rate == pytest.approx(2 * (once.voice.rate - base.rate), abs=0.11)
    assert any(once.voice.pitch != once.speaker_voice.pitch for once in plans[1.0])


def test_default_drift_keeps_older_corpora_resumable(tmp_path):
    """The record of a corpus at the default drift is the one written before the setting existed."""
    config = SynthConfig(**{**CONFIG.__dict__, "trials": 0, "speakers": 2, "test_speakers": 1, "sessions": 1,
                            "utterances": 1, "min_duration": 0.5, "max_duration": 0.6})
    synthesize_corpus(tmp_path / "a", config, workers=1)
    assert "drift" not in json.loads((tmp_path / "a" / "synth.json").read_text())["config"]
    synthesize_corpus(tmp_path / "b", SynthConfig(**{**config.__dict__, "drift": 0.0}), workers=1)
    assert json.loads((tmp_path / "b" / "synth.json").read_text())["config"]["drift"] == 0.0
    with pytest.raises(ValueError, match="other settings"):
        synthesize_corpus(tmp_path / "b", config, workers=1)
