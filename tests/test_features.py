import librosa
import numpy as np
import pytest
import torch

from ghostvlad.features import FrontEndConfig, Spectrogram, train_crop


def librosa_reference(y: np.ndarray, mirror: bool, bins: int = 257) -> np.ndarray:
    """The original front-end (src/utils.py of the Keras code), written with librosa; ``bins``: the lowest kept."""
    if mirror:
        y = np.concatenate([y, y[::-1]])
    mag = np.abs(librosa.stft(y, n_fft=512, win_length=400, hop_length=160, center=True, pad_mode="reflect"))[:bins]
    mu = mag.mean(0, keepdims=True)
    sd = mag.std(0, keepdims=True)
    return (mag - mu) / (sd + 1e-5)


@pytest.fixture
def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(24000) / 16000
    speechy = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return [speechy, rng.normal(0, 0.1, 16000).astype(np.float32), rng.normal(0, 0.05, 9123).astype(np.float32)]


@pytest.mark.parametrize("mirror", [False, True])
def test_matches_librosa_per_clip(clips, mirror):
    front = Spectrogram(FrontEndConfig(mirror=mirror))
    for y in clips:
        feats, frames = front(torch.from_numpy(y)[None])
        ref = librosa_reference(y, mirror)
        assert feats.shape == (1, 257, ref.shape[1])
        assert int(frames) == ref.shape[1] == FrontEndConfig(mirror=mirror).num_frames(len(y))
        np.testing.assert_allclose(feats[0].numpy(), ref, atol=2e-4)


@pytest.mark.parametrize("mirror", [False, True])
def test_padded_batch_equals_single_clips(clips, mirror):
    front = Spectrogram(FrontEndConfig(mirror=mirror))
    lengths = torch.tensor([len(c) for c in clips])
    batch = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        batch[i, : len(c)] = torch.from_numpy(c)
    feats, frames = front(batch, lengths)
    for i, c in enumerate(clips):
        alone, n = front(torch.from_numpy(c)[None])
        assert frames[i] == n[0]
        torch.testing.assert_close(feats[i, :, : int(n)], alone[0], atol=1e-5, rtol=0)
        assert torch.all(feats[i, :, int(n):] == 0)


@pytest.mark.parametrize("stft", ["torch", "conv"])
@pytest.mark.parametrize(("max_freq", "bins"), [(4000, 129), (5500, 177), (8000, 257)])
def test_max_freq_keeps_the_bins_up_to_it_and_normalises_over_them(clips, stft, max_freq, bins):
    config = FrontEndConfig(max_freq=max_freq)
    assert config.n_freq == bins  # bin k lies at k * 31.25 Hz
    front = Spectrogram(config, stft=stft)
    lengths = torch.tensor([len(c) for c in clips])
    batch = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        batch[i, : len(c)] = torch.from_numpy(c)
    feats, frames = front(batch, lengths)
    assert feats.shape[1] == bins
    for i, c in enumerate(clips):
        ref = librosa_reference(c, False, bins)
        np.testing.assert_allclose(feats[i, :, : int(frames[i])].numpy(), ref, atol=2e-4)
    wave = torch.from_numpy(clips[0])
    expected = torch.cat([torch.zeros(1, bins, 3), feats[:1, :, :37]], dim=2)  # frames -3 to 36 of the first clip
    torch.testing.assert_close(front.span(wave, len(wave), -3, 40), expected, atol=1e-5, rtol=0)


def test_max_freq_is_checked_and_left_out_of_the_full_band_dict():
    assert "max_freq" not in FrontEndConfig().to_dict()  # model files and cache keys of full-band models unchanged
    assert FrontEndConfig(max_freq=4000).to_dict()["max_freq"] == 4000
    assert FrontEndConfig().n_freq == 257
    for bad in (20.0, 8001.0, float("nan")):
        with pytest.raises(ValueError, match="frontend.max_freq"):
            FrontEndConfig(max_freq=bad)


def test_normalised_per_frame(clips):
    feats, _ = Spectrogram()(torch.from_numpy(clips[0])[None])
    torch.testing.assert_close(feats.mean(1), torch.zeros(1, feats.shape[2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.std(1, unbiased=False), torch.ones(1, feats.shape[2]), atol=5e-3, rtol=0)


def test_too_short_raises():
    with pytest.raises(ValueError, match="too short"):
        Spectrogram()(torch.zeros(1, 200))


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("stft", ["torch", "conv"])
def test_min_samples_is_the_shortest_clip_accepted(mirror, stft):
    config = FrontEndConfig(mirror=mirror)
    front = Spectrogram(config, stft=stft)
    shortest = config.min_samples
    assert shortest == (129 if mirror else 257)  # reflect padding of n_fft / 2 = 256 needs 257 samples
    wave = torch.randn(2, shortest + 40)
    feats, frames = front(wave, torch.tensor([shortest, shortest + 40]))  # the shortest in a batch: fine
    assert int(frames[0]) == config.num_frames(shortest)
    with pytest.raises(ValueError, match=f"{shortest - 1} samples .needs at least {shortest}"):
        front(wave, torch.tensor([shortest - 1, shortest + 40]))
    with pytest.raises(ValueError, match="too short"):
        front(torch.zeros(1, shortest - 1))


@pytest.mark.parametrize("mirror", [False, True])
def test_conv_stft_equals_torch_stft_in_batches_and_spans(clips, mirror):
    config = FrontEndConfig(mirror=mirror)
    plain, conv = Spectrogram(config), Spectrogram(config, stft="conv")
    lengths = torch.tensor([len(c) for c in clips])
    batch = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        batch[i, : len(c)] = torch.from_numpy(c)
    (a, fa), (b, fb) = plain(batch, lengths), conv(batch, lengths)
    assert torch.equal(fa, fb)
    torch.testing.assert_close(b, a, atol=2e-5, rtol=0)  # normalised features: 5e-7 on the magnitudes
    wave = torch.from_numpy(clips[0])
    torch.testing.assert_close(conv.span(wave, len(wave), -3, 40), plain.span(wave, len(wave), -3, 40),
                               atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown stft"):
        Spectrogram(config, stft="fft")


def test_train_crop_shape_and_content():
    rng = np.random.default_rng(1)
    y = np.arange(30000, dtype=np.float32)
    seen_reversed = 0
    for _ in range(200):
        crop = train_crop(y, rng)
        assert crop.shape == (249 * 160,)
        d = np.diff(crop)
        # a crop of the doubled clip is a run of +1 or -1 steps with at most one jump at the join
        assert np.count_nonzero(np.abs(d) != 1) <= 1
        seen_reversed += int(np.median(d) < 0)
    assert 30 < seen_reversed < 90  # p = 0.3


def test_train_crop_pads_short_clips():
    crop = train_crop(np.ones(8000, dtype=np.float32), np.random.default_rng(0))
    assert crop.shape == (249 * 160,)
    assert crop[:16000].min() == 1 and np.all(crop[16000:] == 0)
    frames = Spectrogram()(torch.from_numpy(crop)[None])[0].shape[-1]
    assert frames == 250
