"""Chunked inference over long clips equals whole-clip inference, in memory bounded by the chunk."""
import numpy as np
import pytest
import torch
from support.audio import varied_audio
from support.models import calibrated_tiny_model, largest_activations

from ghostvlad.features import FrontEndConfig, Spectrogram
from ghostvlad.inference import SpeakerModel

RNG = np.random.default_rng(7)
CALIBRATION = [varied_audio(RNG, 2.0) for _ in range(4)]
LENGTHS = (16000 * 2 + 77, 16000 * 3 + 160 * 7 + 3)  # odd and even frame counts


def model(backbone="resnet34s", pooling="gvlad", mirror=False, branches=1, **kwargs) -> SpeakerModel:
    return calibrated_tiny_model(CALIBRATION, mirror=mirror, backbone=backbone, pooling=pooling, branches=branches,
                                 **kwargs)


def minimal_chunk(m: SpeakerModel, steps: int = 1) -> int:
    backbone = m.fused_encoder.backbone
    return 2 * backbone.time_context + steps * backbone.time_stride


@pytest.mark.parametrize("mirror", [False, True])
def test_frontend_span_equals_the_whole_clip_columns(mirror):
    front = Spectrogram(FrontEndConfig(mirror=mirror))
    wave = torch.from_numpy(varied_audio(RNG, 1.0)[:15937])
    whole, frames = front(wave[None])
    total = int(frames[0])
    for first, count in [(-48, 100), (0, 7), (37, 64), (total - 20, 50), (total - 1, 1)]:
        span = front.span(wave, len(wave), first, count)
        expected = torch.zeros(1, 257, count)
        lo, hi = max(first, 0), min(first + count, total)
        expected[..., lo - first : hi - first] = whole[..., lo:hi]
        torch.testing.assert_close(span, expected, atol=1e-5, rtol=1e-5)
    if not mirror:  # a buffer holding only the samples the frames read
        offset = 50 * 160 - 256
        span = front.span(wave[offset:], len(wave), 50, 30, offset)
        torch.testing.assert_close(span, whole[..., 50:80], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="do not cover frames"):
            front.span(wave[offset + 1 :], len(wave), 50, 30, offset + 1)


@pytest.mark.parametrize("backbone", ["resnet34s", "resnet34l"])
def test_span_steps_equal_the_whole_clip_steps(backbone):
    net = model(backbone).fused_encoder
    stride, context = net.backbone.time_stride, net.backbone.time_context
    for total in (611, 612, 803):
        feats = torch.randn(1, 257, total)
        with torch.inference_mode():
            whole, _ = net.backbone(feats[:, None])
            parts, bare = [], []
            for o0 in range(0, whole.shape[-1], 5):
                o1 = min(o0 + 5, whole.shape[-1])
                first = stride * o0 - context
                span = torch.zeros(1, 257, stride * (o1 - o0) + 2 * context)
                lo, hi = max(first, 0), min(first + span.shape[-1], total)
                span[..., lo - first : hi - first] = feats[..., lo:hi]
                parts.append(net.span_steps(span, total, first)[..., context // stride :][..., : o1 - o0])
                bare.append(net.span_steps(span[..., context : context + stride * (o1 - o0)], total, first + context))
        torch.testing.assert_close(torch.cat(parts, -1), whole, atol=1e-5, rtol=1e-5)
        assert (torch.cat(bare, -1) - whole).abs().max() > 1e-2  # without the context the chunk edges differ


@pytest.mark.parametrize("backbone", ["resnet34s", "resnet34l"])
@pytest.mark.parametrize(("pooling", "branches"), [("tap", 1), ("tstp", 1), ("astp", 1), ("vlad", 1), ("gvlad", 1),
                                                   ("astp", 2)])
@pytest.mark.parametrize("mirror", [False, True])
def test_chunked_embedding_equals_the_whole_clip(backbone, pooling, branches, mirror):
    whole = model(backbone, pooling, mirror, branches, chunk_frames=10**9)
    chunked = [SpeakerModel(whole.saved_encoder, whole.frontend_config, chunk_frames=minimal_chunk(whole, steps))
               for steps in (2, 9)]
    waves = [varied_audio(RNG, n / 16000) for n in LENGTHS]
    expected = whole.embed_waveforms(waves)
    for m in chunked:
        got = m.embed_waveforms(waves)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        assert (got * expected).sum(1).min() >= 0.99999


def test_long_clips_in_a_batch_go_through_chunks_and_short_ones_stay_batched(monkeypatch):
    m = model(chunk_frames=400)
    waves = [varied_audio(RNG, s) for s in (2.0, 9.0, 1.5, 6.0)]  # 201, 901, 151, 601 frames
    alone = np.stack([m.embed_waveforms([w])[0] for w in waves])
    spans = []
    original = Spectrogram.span
    monkeypatch.setattr(Spectrogram, "span", lambda self, wave, n, *a, **k: spans.append(n) or original(self, wave, n, *a, **k))
    torch.testing.assert_close(m.embed_waveforms(waves), alone, atol=1e-6, rtol=0)
    assert set(spans) == {len(waves[1]), len(waves[3])}  # only the two clips over 400 frames


def test_chunk_size_is_checked():
    with pytest.raises(ValueError, match="chunk_frames must be at least 272"):
        model(chunk_frames=271)


@pytest.mark.parametrize("mirror", [False, True])
def test_memory_is_bounded_by_the_chunk_not_the_duration(mirror):
    m = model(mirror=mirror)
    chunk = minimal_chunk(m, 4)
    m.chunk_frames = chunk
    short, long = (RNG.normal(0, 0.1, round(s * 16000)).astype(np.float32) for s in (4.0, 40.0))
    numel_short, width_short = largest_activations(m, lambda: m.embed_waveforms([short]))
    numel_long, width_long = largest_activations(m, lambda: m.embed_waveforms([long]))
    assert width_short == width_long == chunk  # 40 s = 4,001 (8,001 mirrored) frames, seen 336 at a time
    assert numel_long == numel_short
    m.chunk_frames = 10**9
    numel_whole, width_whole = largest_activations(m, lambda: m.embed_waveforms([long]))
    assert width_whole == m.frontend_config.num_frames(len(long)) and numel_whole > 10 * numel_long
