"""Streaming embeddings equal the offline embedding of every prefix, with bounded work and state."""
import numpy as np
import pytest
import torch
from support.audio import varied_audio
from support.models import calibrated_tiny_model, largest_activations

from ghostvlad.audio import AudioError
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel

RNG = np.random.default_rng(11)
CALIBRATION = [varied_audio(RNG, 2.0) for _ in range(4)]


def models(backbone="resnet34s", pooling="gvlad", mirror=False, chunk_frames=400, branches=1, max_freq=None):
    """(streaming model, offline reference with the mirror off and no chunking)."""
    m = calibrated_tiny_model(CALIBRATION, mirror=mirror, backbone=backbone, pooling=pooling, branches=branches,
                              max_freq=max_freq, chunk_frames=chunk_frames)
    return m, SpeakerModel(m.saved_encoder, FrontEndConfig(mirror=False, max_freq=max_freq), chunk_frames=10**9)


def check_prefixes(stream, reference, wave, sizes) -> int:
    """Push ``wave`` in pieces of ``sizes``; after every push the embedding equals the prefix's. Returns checks."""
    pos, checked = 0, 0
    for size in sizes:
        stream.push(wave[pos : pos + size])
        pos += size
        got = stream.embedding()
        if pos < reference.min_duration * 16000:
            assert got is None
            continue
        expected = reference.embed_waveforms([wave[:pos]])[0]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        assert float(got @ expected) >= 0.9999
        checked += 1
    return checked


@pytest.mark.parametrize("backbone", ["resnet34s", "resnet34l"])
@pytest.mark.parametrize(("pooling", "branches", "max_freq"), [
    ("tap", 1, None), ("tstp", 1, None), ("astp", 1, None), ("gvlad", 1, None), ("astp", 2, None), ("astp", 2, 4000)])
def test_every_prefix_equals_the_offline_embedding(backbone, pooling, branches, max_freq):
    stream_model, reference = models(backbone, pooling, branches=branches, max_freq=max_freq)
    wave = varied_audio(RNG, 7.0)
    sizes = RNG.integers(1, 12000, 30)
    sizes[:3] = (100, 3, 7000)  # tiny pieces at the start too
    stream = stream_model.stream()
    assert check_prefixes(stream, reference, wave, sizes) > 10


def test_mirror_models_stream_without_the_mirror_and_reset_starts_over():
    stream_model, reference = models(mirror=True)
    wave = varied_audio(RNG, 4.0)
    stream = stream_model.stream()
    check_prefixes(stream, reference, wave, [16000, 20000, 24000])
    stream.reset()
    assert stream.duration == 0 and stream.embedding() is None
    other = varied_audio(RNG, 3.0)
    check_prefixes(stream, reference, other, [9000, 39000])


def test_a_long_push_is_committed_chunk_by_chunk():
    stream_model, reference = models(chunk_frames=336)
    wave = varied_audio(RNG, 12.0)
    stream = stream_model.stream()
    stream.push(wave)
    assert len(stream._buffer) < 400 * 160  # committed as it went: only the uncommitted tail is kept
    np.testing.assert_allclose(stream.embedding(), reference.embed_waveforms([wave])[0], atol=1e-5, rtol=0)


def test_work_per_update_does_not_grow_with_the_stream():
    stream_model, _ = models()
    stream = stream_model.stream()
    wave = RNG.normal(0, 0.1, 16000 * 40).astype(np.float32)
    per_update = []

    def update(piece):
        stream.push(piece)
        stream.embedding()

    for start in range(0, len(wave), 8000):
        per_update.append(largest_activations(stream_model, lambda: update(wave[start : start + 8000])))
    early, late = max(per_update[2:20]), max(per_update[20:])
    assert late == early  # the same largest activation and span width after 5 s and after 40 s
    assert late[1] < 2 * stream_model.fused_encoder.backbone.time_context + 8000 // 160 + 64
    context = stream_model.fused_encoder.backbone.time_context
    assert len(stream._buffer) <= (2 * context + 16 + 8000 // 160 + 2) * 160  # samples kept: 3 s, not 40


def test_integer_pcm_equals_float_samples_and_empty_pushes_are_fine():
    stream_model, _ = models()
    pcm = (varied_audio(RNG, 1.5) * 8000).astype(np.int16)
    a, b = stream_model.stream(), stream_model.stream()
    a.push(pcm)
    b.push(pcm.astype(np.float32) / 32768)
    b.push(np.zeros(0, np.float32))
    np.testing.assert_allclose(a.embedding(), b.embedding(), atol=1e-6)


def test_silence_and_short_audio_give_no_embedding():
    stream_model, _ = models()
    stream = stream_model.stream()
    stream.push(np.zeros(16000, np.float32))
    assert stream.embedding() is None  # silent
    stream.reset()
    stream.push(varied_audio(RNG, 0.3))
    assert stream.embedding() is None and stream.duration == pytest.approx(0.3)  # under min_duration (0.5 s)


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.array([0.1, np.nan, np.inf], np.float32), "<stream>: contains 2 NaN or infinite sample"),
        (np.zeros((2, 100), np.float32), "expected a 1-D array of samples, got shape \\(2, 100\\)"),
        (np.array(["a", "b"]), "dtype <U1"),
    ],
)
def test_bad_pushes_are_rejected_and_leave_the_stream_as_it_was(samples, message):
    stream_model, reference = models()
    wave = varied_audio(RNG, 1.0)
    stream = stream_model.stream()
    stream.push(wave)
    with pytest.raises(AudioError, match=message):
        stream.push(samples)
    assert stream.duration == 1.0
    np.testing.assert_allclose(stream.embedding(), reference.embed_waveforms([wave])[0], atol=1e-5, rtol=0)


def test_bf16_stream_matches_bf16_offline():
    stream_model, _ = models()
    bf16 = SpeakerModel(stream_model.saved_encoder, FrontEndConfig(), precision="bf16", chunk_frames=400)
    offline = SpeakerModel(stream_model.saved_encoder, FrontEndConfig(), precision="bf16")
    wave = varied_audio(RNG, 5.0)
    stream = bf16.stream()
    for piece in np.array_split(wave, 9):
        stream.push(piece)
    assert float(stream.embedding() @ offline.embed_waveforms([wave])[0]) >= 0.9999
    with torch.inference_mode():
        assert stream.embedding().dtype == np.float32
