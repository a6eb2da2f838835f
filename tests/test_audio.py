"""Tests for ghostvlad.audio: decoding, mixing, resampling and validation of bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from ghostvlad import audio
from ghostvlad.audio import SAMPLE_RATE, AudioError, audio_duration, load_audio, prepare_waveform

needs_aac = pytest.mark.skipif("aac" not in av.codecs_available, reason="FFmpeg build has no AAC encoder")
needs_mp3 = pytest.mark.skipif("libmp3lame" not in av.codecs_available, reason="FFmpeg build has no LAME encoder")


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def encode_pyav(path: Path, x: np.ndarray, rate: int, codec: str, **open_kwargs) -> Path:
    """Write mono float ``x`` with an FFmpeg encoder (container chosen from the extension)."""
    with av.open(str(path), "w", **open_kwargs) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def expect_error(path: Path, word: str, **kwargs) -> AudioError:
    with pytest.raises(AudioError) as info:
        load_audio(path, **kwargs)
    err = info.value
    message = str(err)
    assert message.startswith(f"{path}: ")
    assert word in message
    assert "\n" not in message
    assert err.source == str(path) and message == f"{err.source}: {err.reason}"
    return err


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "subtype"), [("a.wav", "PCM_16"), ("a.flac", "PCM_16"), ("a.wav", "PCM_24")])
def test_lossless_int_files_scaled_exactly(tmp_path, name, subtype):
    rng = np.random.default_rng(0)
    bits = 16 if subtype == "PCM_16" else 24
    ints = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), SAMPLE_RATE, dtype=np.int32)
    path = tmp_path / name
    sf.write(path, ints << (32 - bits), SAMPLE_RATE, subtype=subtype)  # int32 container, top bits used
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    np.testing.assert_array_equal(y, (ints / 2 ** (bits - 1)).astype(np.float32))


def test_int16_file_full_scale(tmp_path):
    ints = np.array([-32768, -16384, 0, 16384, 32767] * 2000, dtype=np.int16)
    sf.write(tmp_path / "i.wav", ints, SAMPLE_RATE, subtype="PCM_16")
    y = load_audio(tmp_path / "i.wav")
    np.testing.assert_array_equal(y[:5], np.float32([-1.0, -0.5, 0.0, 0.5, 32767 / 32768]))


def test_float_wav_round_trip_is_exact(tmp_path):
    x = np.random.default_rng(1).uniform(-1, 1, SAMPLE_RATE).astype(np.float32)
    sf.write(tmp_path / "f.wav", x, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "f.wav"), x)


def test_ogg_vorbis_round_trip(tmp_path):
    x = sine(440, SAMPLE_RATE, 1.0)
    sf.write(tmp_path / "v.ogg", x, SAMPLE_RATE)
    y = load_audio(tmp_path / "v.ogg")
    assert len(y) == len(x)
    assert np.corrcoef(x, y)[0, 1] > 0.999
    assert abs(peak_hz(y, SAMPLE_RATE) - 440) <= 1


def test_stereo_is_mean_of_channels(tmp_path):
    left, right = sine(300, SAMPLE_RATE, 1.0), sine(700, SAMPLE_RATE, 1.0, amp=0.25)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), (left + right) / 2, rtol=0, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_resampled_to_16k_keeps_length_and_frequency(tmp_path, rate):
    x = sine(1000, rate, 1.25)
    sf.write(tmp_path / "r.wav", x, rate, subtype="FLOAT")
    y = load_audio(tmp_path / "r.wav")
    assert len(y) == round(1.25 * SAMPLE_RATE)
    assert abs(peak_hz(y, SAMPLE_RATE) - 1000) <= 1
    core = y[2000:-2000]  # away from the filter's edge transients
    np.testing.assert_allclose(np.sqrt(np.mean(core**2)), 0.5 / np.sqrt(2), rtol=2e-3)


def test_custom_output_rate(tmp_path):
    sf.write(tmp_path / "r.wav", sine(500, SAMPLE_RATE, 1.0), SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(tmp_path / "r.wav", sample_rate=8000)
    assert len(y) == 8000 and abs(peak_hz(y, 8000) - 500) <= 1


@needs_aac
@pytest.mark.parametrize("rate", [16000, 44100])
def test_m4a_aac_decodes_with_right_duration(tmp_path, rate):
    path = encode_pyav(tmp_path / "a.m4a", sine(440, rate, 1.5), rate, "aac")
    y = load_audio(path)
    # AAC adds up to two 1024-sample frames of encoder priming/padding at the source rate.
    assert 1.5 * SAMPLE_RATE <= len(y) <= (1.5 + 2048 / rate) * SAMPLE_RATE
    assert abs(peak_hz(y, SAMPLE_RATE) - 440) <= 1
    assert 0.3 < np.sqrt(np.mean(y**2)) < 0.4  # sine rms 0.354


@needs_mp3
def test_mp3_decodes_and_resamples(tmp_path):
    path = encode_pyav(tmp_path / "a.mp3", sine(440, 22050, 1.0), 22050, "libmp3lame")
    y = load_audio(path)
    assert abs(len(y) - SAMPLE_RATE) <= 1200  # LAME gapless info trims most padding
    assert abs(peak_hz(y, SAMPLE_RATE) - 440) <= 1


@needs_aac
def test_m4a_content_with_wav_extension_falls_back_to_pyav(tmp_path):
    path = encode_pyav(tmp_path / "really_aac.wav", sine(440, SAMPLE_RATE, 1.0), SAMPLE_RATE, "aac", format="mp4")
    y = load_audio(path)
    assert abs(peak_hz(y, SAMPLE_RATE) - 440) <= 1


@pytest.mark.parametrize(("name", "codec", "muxer", "rate"), [
    ("p.ulaw", "pcm_mulaw", "mulaw", 8000), ("p.al", "pcm_alaw", "alaw", 8000), ("p.g722", "g722", "g722", 16000),
])
def test_headerless_telephony_files_decode_at_their_rate(tmp_path, name, codec, muxer, rate):
    path = encode_pyav(tmp_path / name, sine(500, rate, 1.5), rate, codec, format=muxer)
    y = load_audio(path)
    assert abs(len(y) - 1.5 * SAMPLE_RATE) <= 160
    assert audio_duration(path) == pytest.approx(len(y) / SAMPLE_RATE, abs=0.02)
    assert abs(peak_hz(y, SAMPLE_RATE) - 500) <= 1
    assert 0.3 < np.sqrt(np.mean(y**2)) < 0.4  # sine rms 0.354


def test_uploads_never_decode_by_their_name(tmp_path):
    path = encode_pyav(tmp_path / "p.ulaw", sine(500, 8000, 1.0), 8000, "pcm_mulaw", format="mulaw")
    with pytest.raises(AudioError, match="cannot decode"):
        audio.load_audio_bytes(path.read_bytes(), source="p.ulaw")


@pytest.mark.parametrize(("name", "rate"), [("p.sln", 8000), ("p.sln16", 16000), ("p.sln48", 48000)])
def test_asterisk_signed_linear_files(tmp_path, name, rate):
    (tmp_path / name).write_bytes(np.round(sine(500, rate, 1.0) * 32767).astype("<i2").tobytes())
    y = load_audio(tmp_path / name)
    assert len(y) == SAMPLE_RATE and audio_duration(tmp_path / name) == pytest.approx(1.0)
    assert abs(peak_hz(y, SAMPLE_RATE) - 500) <= 1 and abs(np.max(np.abs(y)) - 0.5) < 0.01


def test_raw_gsm_file(tmp_path):
    (tmp_path / "p.gsm").write_bytes(bytes([0xD3] + [0x55] * 32) * 50)  # 50 GSM 06.10 frames of 20 ms
    y = load_audio(tmp_path / "p.gsm")
    assert len(y) == SAMPLE_RATE and audio_duration(tmp_path / "p.gsm") == pytest.approx(1.0)
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) > 0.01


def test_accepts_pathlike_and_str(tmp_path):
    sf.write(tmp_path / "p.wav", sine(440, SAMPLE_RATE, 1.0), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(str(tmp_path / "p.wav")), load_audio(tmp_path / "p.wav"))


# --- prepare_waveform -----------------------------------------------------------------------


def test_prepare_int16_array():
    ints = (sine(440, SAMPLE_RATE, 1.0) * 32767).astype(np.int16)
    y = prepare_waveform(ints, SAMPLE_RATE)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, ints.astype(np.float32) / 32768)


def test_prepare_int32_and_uint8_arrays():
    ints = np.tile(np.array([-(2**31), 0, 2**30], dtype=np.int32), 6000)
    np.testing.assert_array_equal(prepare_waveform(ints, SAMPLE_RATE)[:3], [-1.0, 0.0, 0.5])
    u8 = np.tile(np.array([0, 128, 192], dtype=np.uint8), 6000)
    np.testing.assert_array_equal(prepare_waveform(u8, SAMPLE_RATE)[:3], [-1.0, 0.0, 0.5])


def test_prepare_2d_both_orientations():
    left, right = sine(300, SAMPLE_RATE, 1.0), sine(500, SAMPLE_RATE, 1.0, amp=0.2)
    expected = (left + right) / 2
    channels_first = np.stack([left, right])
    np.testing.assert_allclose(prepare_waveform(channels_first, SAMPLE_RATE), expected, atol=1e-7)
    y = prepare_waveform(channels_first.T, SAMPLE_RATE)  # (samples, channels), non-contiguous view
    np.testing.assert_allclose(y, expected, atol=1e-7)
    assert y.flags.c_contiguous


def test_prepare_resamples_float64_with_soxr():
    x = sine(1000, 8000, 1.0).astype(np.float64)
    y = prepare_waveform(x, 8000)
    assert y.dtype == np.float32 and len(y) == SAMPLE_RATE
    np.testing.assert_allclose(y, soxr.resample(x, 8000, SAMPLE_RATE, quality="HQ"), atol=1e-6)
    assert abs(peak_hz(y, SAMPLE_RATE) - 1000) <= 1


def test_prepare_same_rate_is_unchanged_copy_of_float32():
    x = sine(440, SAMPLE_RATE, 1.0)
    np.testing.assert_array_equal(prepare_waveform(x, SAMPLE_RATE), x)


@pytest.mark.parametrize(
    ("wave", "rate", "word"),
    [
        (np.zeros((2, 3, 8000)), SAMPLE_RATE, "1-D or 2-D"),
        (np.ones(16000, dtype=np.complex64), SAMPLE_RATE, "dtype"),
        (np.array(["a"] * 16000), SAMPLE_RATE, "dtype"),
        (np.ones(16000, np.float32), 0, "sample rate"),
        (np.ones(16000, np.float32), float("nan"), "sample rate"),
        (np.zeros(0, np.float32), SAMPLE_RATE, "no audio samples"),
        (np.r_[np.ones(16000), np.nan], SAMPLE_RATE, "NaN or infinite"),
        (np.r_[np.ones(16000), -np.inf], SAMPLE_RATE, "NaN or infinite"),
        (np.zeros((16000, 2), np.int16), SAMPLE_RATE, "silent"),
        (np.ones(4000, np.float32), SAMPLE_RATE, "too short"),
    ],
)
def test_prepare_bad_arrays(wave, rate, word):
    with pytest.raises(AudioError, match=word) as info:
        prepare_waveform(wave, rate)
    assert str(info.value).startswith("<array>: ")


def test_prepare_error_names_given_source():
    with pytest.raises(AudioError) as info:
        prepare_waveform(np.zeros(16000), SAMPLE_RATE, source="utt42")
    assert str(info.value).startswith("utt42: ") and "silent" in str(info.value)


def test_prepare_min_duration_zero_disables_length_check():
    assert len(prepare_waveform(np.full(10, 0.1), SAMPLE_RATE, min_duration=0)) == 10


def test_resampler_failure_is_wrapped(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("soxr internal error")

    monkeypatch.setattr(audio.soxr, "resample", broken)
    with pytest.raises(AudioError, match="resampling 8000 Hz -> 16000 Hz failed: soxr internal error"):
        prepare_waveform(sine(440, 8000, 1.0), 8000)


def test_audio_error_is_value_error_and_pickles():
    err = AudioError("x.wav", "silent:\n peak 0")
    assert isinstance(err, ValueError) and str(err) == "x.wav: silent: peak 0"
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.source, clone.reason, str(clone)) == (err.source, err.reason, str(err))


# --- bad files ------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.wav", "not found")


def test_directory_is_not_a_regular_file(tmp_path):
    (tmp_path / "dir.wav").mkdir()
    expect_error(tmp_path / "dir.wav", "not a regular file")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.wav").touch()
    expect_error(tmp_path / "empty.wav", "empty file")


def test_wav_with_zero_samples(tmp_path):
    sf.write(tmp_path / "none.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    expect_error(tmp_path / "none.wav", "no audio samples")


@pytest.mark.parametrize("name", ["text.wav", "text.m4a", "text.xyz"])
def test_text_file_is_not_audio(tmp_path, name):
    (tmp_path / name).write_text("this is not audio\n" * 50)
    err = expect_error(tmp_path / name, "cannot decode")
    assert "PyAV" in err.reason


def test_riff_header_followed_by_garbage(tmp_path):
    garbage = np.random.default_rng(2).bytes(4000)
    (tmp_path / "g.wav").write_bytes(b"RIFF" + (4004).to_bytes(4, "little") + b"WAVE" + garbage)
    err = expect_error(tmp_path / "g.wav", "cannot decode")
    assert "soundfile" in err.reason


def test_truncated_wav(tmp_path):
    sf.write(tmp_path / "full.wav", sine(440, SAMPLE_RATE, 2.0), SAMPLE_RATE, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "cut.wav", "truncated")
    # a valid header followed by fewer (garbage) bytes than it declares
    (tmp_path / "junk.wav").write_bytes(data[:44] + np.random.default_rng(3).bytes(1000))
    expect_error(tmp_path / "junk.wav", "truncated")


def test_truncated_flac(tmp_path):
    sf.write(tmp_path / "full.flac", sine(440, SAMPLE_RATE, 2.0), SAMPLE_RATE)
    data = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "cut.flac", "cannot decode")


@needs_aac
@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_m4a(tmp_path, faststart):
    options = {"movflags": "faststart"} if faststart else {}
    path = encode_pyav(tmp_path / "full.m4a", sine(440, SAMPLE_RATE, 2.0), SAMPLE_RATE, "aac", options=options)
    data = path.read_bytes()
    (tmp_path / "cut.m4a").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "cut.m4a", "cannot decode")


@needs_mp3
def test_truncated_mp3(tmp_path):
    path = encode_pyav(tmp_path / "full.mp3", sine(440, SAMPLE_RATE, 3.0), SAMPLE_RATE, "libmp3lame")
    data = path.read_bytes()
    (tmp_path / "cut.mp3").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "cut.mp3", "truncated")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    x = sine(440, SAMPLE_RATE, 1.0)
    x[100] = bad
    sf.write(tmp_path / "nf.wav", x, SAMPLE_RATE, subtype="FLOAT")
    expect_error(tmp_path / "nf.wav", "1 NaN or infinite sample")


@pytest.mark.parametrize("level", [0.0, 1e-10])
def test_silent_file(tmp_path, level):
    sf.write(tmp_path / "quiet.wav", np.full(SAMPLE_RATE, level, np.float32), SAMPLE_RATE, subtype="FLOAT")
    expect_error(tmp_path / "quiet.wav", "silent")


def test_too_short_file(tmp_path):
    sf.write(tmp_path / "short.flac", sine(440, SAMPLE_RATE, 0.3), SAMPLE_RATE)
    err = expect_error(tmp_path / "short.flac", "too short")
    assert err.reason == "too short: 0.3 s, minimum is 0.5 s"
    assert len(load_audio(tmp_path / "short.flac", min_duration=0)) == round(0.3 * SAMPLE_RATE)
    expect_error(tmp_path / "short.flac", "minimum is 1 s", min_duration=1.0)
    # a tiny minimum stays legible
    sf.write(tmp_path / "one.wav", np.full(1, 0.5, np.float32), SAMPLE_RATE, subtype="FLOAT")
    assert expect_error(tmp_path / "one.wav", "too short", min_duration=1e-4).reason == \
        "too short: 6.25e-05 s, minimum is 0.0001 s"


@needs_aac
def test_file_without_audio_stream(tmp_path):
    path = tmp_path / "video.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 32, 32
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    expect_error(path, "no audio stream")


# --- audio_duration -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "rate", "seconds"), [("d.wav", 16000, 1.25), ("d.flac", 44100, 2.5)])
def test_duration_of_soundfile_formats_is_exact(tmp_path, name, rate, seconds):
    sf.write(tmp_path / name, sine(440, rate, seconds), rate)
    assert audio_duration(tmp_path / name) == pytest.approx(seconds, abs=1e-9)


def test_duration_of_truncated_wav_is_what_is_present(tmp_path):
    sf.write(tmp_path / "full.wav", sine(440, SAMPLE_RATE, 2.0), SAMPLE_RATE, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: 44 + 2 * SAMPLE_RATE])
    assert audio_duration(tmp_path / "cut.wav") == pytest.approx(1.0)


@needs_aac
def test_duration_of_m4a_matches_decoded_length(tmp_path):
    path = encode_pyav(tmp_path / "d.m4a", sine(440, 44100, 1.5), 44100, "aac")
    assert audio_duration(path) == pytest.approx(1.5, abs=2048 / 44100)
    assert audio_duration(path) == pytest.approx(len(load_audio(path)) / SAMPLE_RATE, abs=1024 / 44100)


@needs_mp3
def test_duration_of_mp3(tmp_path):
    path = encode_pyav(tmp_path / "d.mp3", sine(440, SAMPLE_RATE, 2.0), SAMPLE_RATE, "libmp3lame")
    assert audio_duration(path) == pytest.approx(2.0, abs=0.05)


def test_duration_errors(tmp_path):
    with pytest.raises(AudioError, match="not found") as info:
        audio_duration(tmp_path / "missing.m4a")
    assert str(info.value).startswith(str(tmp_path / "missing.m4a"))
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(AudioError, match="cannot decode"):
        audio_duration(tmp_path / "text.wav")
    (tmp_path / "empty.m4a").touch()
    with pytest.raises(AudioError, match="empty file"):
        audio_duration(tmp_path / "empty.m4a")


def test_decoding_a_long_mono_file_holds_no_extra_copies(tmp_path):
    import tracemalloc

    path = tmp_path / "long.wav"
    sf.write(path, np.random.default_rng(0).normal(0, 0.1, SAMPLE_RATE * 30).astype(np.float32), SAMPLE_RATE,
             subtype="PCM_16")
    tracemalloc.start()
    try:
        wave = load_audio(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * wave.nbytes  # the samples once, plus a bool mask of them for the finiteness check


# --- decoding from memory (uploads) ---------------------------------------------------------


def _bytes_cases(tmp_path) -> dict[str, Path]:
    x = sine(440, 22050, 1.5)
    cases = {"a.wav": tmp_path / "a.wav", "a.flac": tmp_path / "a.flac", "a.ogg": tmp_path / "a.ogg"}
    for name, path in cases.items():
        sf.write(path, x, 22050)
    if "aac" in av.codecs_available:
        cases["a.m4a"] = encode_pyav(tmp_path / "a.m4a", x, 22050, "aac")
    if "libmp3lame" in av.codecs_available:
        cases["a.mp3"] = encode_pyav(tmp_path / "a.mp3", x, 22050, "libmp3lame")
    return cases


def test_bytes_decode_exactly_as_the_file(tmp_path):
    for name, path in _bytes_cases(tmp_path).items():
        np.testing.assert_array_equal(audio.load_audio_bytes(path.read_bytes(), name), load_audio(path), err_msg=name)


def test_bytes_bad_input_gets_the_reason_the_file_gets(tmp_path):
    full = tmp_path / "full.wav"
    sf.write(full, sine(440, SAMPLE_RATE, 2.0), SAMPLE_RATE, subtype="PCM_16")
    data = full.read_bytes()
    sf.write(tmp_path / "short.wav", sine(440, SAMPLE_RATE, 0.2), SAMPLE_RATE, subtype="PCM_16")
    cases = {"cut.wav": data[: len(data) // 2], "text.wav": b"this is not audio\n" * 50, "empty.wav": b"",
             "short.wav": (tmp_path / "short.wav").read_bytes(), "silent.wav": data[:44] + bytes(len(data) - 44)}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AudioError) as from_file:
            load_audio(tmp_path / name)
        with pytest.raises(AudioError) as from_bytes:
            audio.load_audio_bytes(content, f"upload {name}")
        assert from_bytes.value.reason == from_file.value.reason, name
        assert str(from_bytes.value) == f"upload {name}: {from_file.value.reason}"


def test_bytes_longer_than_max_duration_are_refused_before_decoding_them_all(tmp_path):
    for name, path in _bytes_cases(tmp_path).items():
        data = path.read_bytes()
        with pytest.raises(AudioError, match=r"too long: (1\.5\d* s, maximum is|more than the maximum) 1 s"):
            audio.load_audio_bytes(data, name, max_duration=1.0)
        assert len(audio.load_audio_bytes(data, name, max_duration=2.0)) > 1.4 * SAMPLE_RATE


def test_bytes_any_decoder_failure_is_the_uploads_audio_error(monkeypatch):
    def fail(*args):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(audio, "_decode_memory", fail)
    with pytest.raises(AudioError) as info:
        audio.load_audio_bytes(b"RIFF....", "up.wav")
    assert str(info.value) == "up.wav: cannot read (MemoryError: cannot allocate)"
