"""The cross-engine held-out set: which voices it holds, its layout and trials, resume, and scoring with recipes."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support.models import calibrated_tiny_model

from ghostvlad.data import engine_set, voices
from ghostvlad.data.engine_set import EngineSetConfig, build_engine_set, roster
from ghostvlad.recipes import score_corpus

# cheapest engines first: the tiny set uses the first two voices installed here
CHEAP = ("mbrola-us1", "mbrola-us2", "pico-en-GB", "pico-de-DE", "rhvoice-natan", "rhvoice-magda", "piper-joe",
         "kokoro-jm_kumo", "kokoro-jf_alpha")
TINY = EngineSetConfig(sessions=2, utterances=2, min_duration=1.0, max_duration=1.5, trials=8, min_speakers=2)


def _installed() -> tuple[str, ...]:
    try:
        held, _ = roster(TINY)
    except voices.EngineUnavailable as err:
        pytest.skip(str(err))
    names = {v.name for _, v in held}
    chosen = tuple(n for n in CHEAP if n in names)[:2]
    if len(chosen) < 2:
        pytest.skip(f"fewer than two of {CHEAP} installed (have {sorted(names)}): see README, More voices")
    return chosen


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict, EngineSetConfig]:
    config = EngineSetConfig(**{**TINY.__dict__, "voices": _installed()})
    out = tmp_path_factory.mktemp("engines") / "set"
    return out, build_engine_set(out, config, workers=2), config


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_roster_skips_missing_engines_with_reasons_and_fills_with_variants(monkeypatch):
    monkeypatch.setattr(voices, "mbrola_voices", lambda: ("mb-us1",))
    monkeypatch.setattr(voices, "rhvoice_voices", lambda: ())
    monkeypatch.setattr(engine_set.shutil, "which", lambda name: None)
    monkeypatch.setattr(engine_set, "_module", lambda *names: names == ("parselmouth",))
    held, skipped = roster(EngineSetConfig(min_speakers=5))
    names = [v.name for _, v in held]
    assert names[0] == "mbrola-us1" and len(names) == 5 == len(set(names))
    assert [(v.formant_ratio, v.f0_ratio) for _, v in held[1:]] == list(engine_set.VARIANTS)
    assert all(v.spec == held[0][1].spec for _, v in held) and len({i for i, _ in held}) == 5
    assert "pico2wave not installed (apt-get install libttspico-utils)" == skipped["pico-en-US"]
    assert "mbrola-us2" in skipped and "rhvoice-natan" in skipped and "piper-joe" in skipped
    assert "Kokoro not installed" in skipped["kokoro-jm_kumo"] and "mbrola-us1" not in skipped
    # no variants without parselmouth: the set says so, and one voice is not enough
    monkeypatch.setattr(engine_set, "_module", lambda *names: False)
    with pytest.raises(voices.EngineUnavailable, match=r"1 voice\(s\) available, need 2.*praat-parselmouth"):
        roster(EngineSetConfig())


@pytest.mark.parametrize("change, message", [
    ({"voices": ("rhvoice-slt",)}, "unknown voices"), ({"sessions": 1}, "sessions=1"),
    ({"channels": "radio"}, "channels='radio'"), ({"min_duration": 3.0, "max_duration": 2.0}, "durations"),
])
def test_bad_configurations_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        EngineSetConfig(**{**TINY.__dict__, **change}).validate()


def test_layout_voices_and_trials(tiny):
    out, summary, config = tiny
    assert summary["voices"] == list(config.voices) and summary["skipped"] == {}
    assert [summary[k] for k in ("speakers", "sessions", "utterances", "synthesized")] == [2, 4, 8, 8]
    assert {p.name for p in out.iterdir()} == {"test", "trials.txt", "speakers.json", "engines.json"}
    record = json.loads((out / "engines.json").read_text())
    assert [v["name"] for v in record["voices"].values()] == list(config.voices)
    speakers = json.loads((out / "speakers.json").read_text())
    assert set(speakers) == set(record["voices"]) == {p.name for p in (out / "test").iterdir()}
    channels = []
    for speaker, entry in speakers.items():
        assert entry["split"] == "test" and entry["name"] == record["voices"][speaker]["name"]
        assert set(entry["sessions"]) == {p.name for p in (out / "test" / speaker).iterdir()}
        for session in entry["sessions"].values():
            assert set(session["channel"]) >= {"codec", "narrowband", "drive", "rt60"}
            channels.append(json.dumps(session["channel"]))
    assert len(set(channels)) == len(channels) == 4  # one channel per session
    wavs = sorted(out.rglob("*.wav"))
    assert len(wavs) == 8
    for path in wavs:
        _, speaker, session, name = path.relative_to(out).parts
        assert re.fullmatch(r"id\d{5}", speaker) and re.fullmatch(r"0000[12]\.wav", name)
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert config.min_duration <= info.duration <= config.max_duration
        audio, _ = sf.read(path, dtype="float32")
        assert 0.003 < np.sqrt(np.mean(audio**2)) and np.abs(audio).max() < 1.0
    lines = (out / "trials.txt").read_text().splitlines()
    assert len(lines) == summary["trials"] == 8 and summary["target_trials"] == 4
    for line in lines:
        label, enrol, test = line.split(" ")
        (s1, v1, _), (s2, v2, _) = enrol.split("/"), test.split("/")
        assert (out / "test" / enrol).is_file() and (out / "test" / test).is_file()
        assert (label == "1") == (s1 == s2) and (label == "0" or v1 != v2)
    assert len({frozenset(line.split(" ")[1:]) for line in lines}) == 8


def test_resume_regenerates_only_what_is_missing_and_the_same_bytes(tiny):
    out, _, config = tiny
    before = _tree(out)
    victim = sorted(out.rglob("*.wav"))[-1]
    victim.unlink()
    summary = build_engine_set(out, config, workers=1)
    assert summary["synthesized"] == 2  # the session that lost a file, again
    assert _tree(out) == before
    with pytest.raises(ValueError, match="other settings"):
        build_engine_set(out, EngineSetConfig(**{**config.__dict__, "seed": 1}))


def test_score_corpus_runs_on_the_set(tiny, tmp_path):
    out, _, _ = tiny
    clips = [sf.read(p, dtype="float32")[0][:16000] for p in sorted(out.rglob("*.wav"))]
    scores, result = score_corpus(calibrated_tiny_model(clips), out, tmp_path / "cache")
    assert scores.trials == 8 and 0.0 <= scores.eer <= 1.0
    assert all(np.isfinite([scores.cos_same_session, scores.cos_cross_session, scores.cos_nontarget]))


# ------------------------------------------------------------------------------------ the recorded (real) family


def _talkers(root: Path, words: dict[str, int]) -> Path:
    """Fake talker folders: each word a harmonic tone (the talker's own F0) between stretches of silence."""
    for t, (name, count) in enumerate(words.items()):
        (root / name).mkdir(parents=True)
        for w in range(count):
            time = np.arange(int(0.3 * 22050)) / 22050
            tone = sum(np.sin(2 * np.pi * (110 + 40 * t) * h * time) / h for h in range(1, 6)) * (0.2 + 0.01 * w)
            silence = np.zeros(int(0.2 * 22050))
            sf.write(root / name / f"w{w:03d}.wav", np.concatenate([silence, tone, silence]), 22050)
    return root


def _recorded(root: Path, **change) -> EngineSetConfig:
    return EngineSetConfig(**{**TINY.__dict__, "family": "recorded", "recorded_dir": str(root), **change})


def test_recorded_set_holds_talkers_with_enough_words(tmp_path):
    root = _talkers(tmp_path / "sounds", {"aa": 40, "bb": 41, "cc": 5, "fr": 40})
    config = _recorded(root)
    held, skipped = roster(config)
    assert [v.name for _, v in held] == ["recorded-aa", "recorded-bb"]
    assert [v.name for _, v in roster(_recorded(root, min_speakers=12))[0]] == ["recorded-aa", "recorded-bb"]
    assert skipped == {"recorded-cc": f"5 recorded words in {root / 'cc'}, need 40",
                       "recorded-fr": "its words come from several talkers"}
    summary = build_engine_set(tmp_path / "set", config, workers=1)
    assert [summary[k] for k in ("speakers", "sessions", "utterances", "trials")] == [2, 4, 8, 8]
    record = json.loads((tmp_path / "set" / "engines.json").read_text())
    assert {v["engine"] for v in record["voices"].values()} == {"recorded"}
    for path in (tmp_path / "set").rglob("*.wav"):
        audio, rate = sf.read(path, dtype="float32")
        assert rate == 16000 and config.min_duration <= len(audio) / rate <= config.max_duration
        assert np.sqrt(np.mean(audio**2)) > 0.003


def test_recorded_set_without_recordings_names_the_package(tmp_path):
    with pytest.raises(voices.EngineUnavailable, match=r"recorded set: 0 voice.*apt-get install ktuberling-data"):
        roster(_recorded(tmp_path / "missing"))
    with pytest.raises(ValueError, match="family='radio'"):
        _recorded(tmp_path, family="radio").validate()


def test_speak_recorded_strings_trimmed_words_one_per_text_word(tmp_path):
    root = _talkers(tmp_path, {"aa": 40})
    voice = voices.RecordedVoice(str(root / "aa"))
    a, b = voices.speak_recorded("one two three", voice, 7), voices.speak_recorded("four five six", voice, 7)
    assert np.array_equal(a, b)  # the words come from the seed; the text gives only their number
    assert not np.array_equal(a, voices.speak_recorded("one two three", voice, 8))
    # three words of 0.3 s, their 0.2 s silences cut, each followed by a 60-200 ms pause
    assert 3 * 0.36 <= len(a) / 16000 <= 3 * 0.5 and np.abs(a[:160]).max() > 0.05
    with pytest.raises(voices.EngineUnavailable, match="ktuberling-data"):
        voices.speak_recorded("one", voices.RecordedVoice(str(tmp_path / "none")))


def test_tuxpaint_descriptions_become_one_talker_folder_a_language(tmp_path):
    stamps = tmp_path / "stamps"
    for language, folder, count in (("be", "animals/birds", 40), ("", "animals/mammals", 41), ("xx", "food", 5),
                                    ("fr", "food", 40), ("be", "symbols/alphabets", 3), ("be", "symbols/numbers", 3)):
        (stamps / folder).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            tone = 0.2 * np.sin(2 * np.pi * (120 + 30 * len(language)) * np.arange(8000) / 16000)
            sf.write(stamps / folder / f"s{k:02d}_desc{'_' * bool(language)}{language}.ogg", tone, 16000)
    (stamps / "food" / "cake.ogg").write_bytes(b"")  # a stamp's sound effect, not a description
    (stamps / "food" / "s04_desc_xx.ogg").rename(stamps / "food" / "s04_desc_xx.ogg.ogg")  # as one in Debian's
    talkers = engine_set.tuxpaint_talkers(tmp_path / "talkers", stamps)
    assert {p.name: len(list(p.iterdir())) for p in talkers.iterdir()} == {
        "tuxpaint-be": 40, "tuxpaint-en": 41, "tuxpaint-xx": 5, "tuxpaint-fr": 40}
    link = talkers / "tuxpaint-be" / "animals-birds-s07_desc_be.ogg"
    assert link.resolve() == (stamps / "animals" / "birds" / "s07_desc_be.ogg").resolve()
    assert engine_set.tuxpaint_talkers(talkers, stamps) == talkers  # again: nothing to add, no error
    held, skipped = roster(_recorded(talkers))
    assert [v.name for _, v in held] == ["recorded-tuxpaint-be", "recorded-tuxpaint-en"]
    assert skipped == {"recorded-tuxpaint-fr": "its words come from several talkers",
                       "recorded-tuxpaint-xx": f"5 recorded words in {talkers / 'tuxpaint-xx'}, need 40"}
    with pytest.raises(voices.EngineUnavailable, match="apt-get install tuxpaint-stamps-default"):
        engine_set.tuxpaint_talkers(tmp_path / "none", tmp_path / "missing")


def test_an_engines_set_records_no_recorded_family_fields():
    settings = engine_set._settings(TINY)
    assert "family" not in settings and "recorded_dir" not in settings and settings["trials"] == 8
    assert engine_set._settings(_recorded(Path("x")))["family"] == "recorded"
