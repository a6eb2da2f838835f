import numpy as np
import pytest
import soundfile as sf

from ghostvlad.data.augment import SNR_DB, AugmentError, Augmenter


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    musan, rir = tmp_path / "musan", tmp_path / "rirs"
    for category in ("noise", "music"):
        (musan / category).mkdir(parents=True)
        sf.write(musan / category / "a.wav", rng.normal(0, 0.3, 48000).astype(np.float32), 16000)
    rir.mkdir()
    impulse = np.zeros(4000, dtype=np.float32)
    impulse[0], impulse[800] = 1.0, 0.5
    sf.write(rir / "room.wav", impulse, 16000)
    return musan, rir


def test_none_without_folders():
    assert Augmenter.from_dirs(None, None, 0.5) is None


def test_empty_folders_fail_clearly(tmp_path):
    with pytest.raises(AugmentError, match="no audio under noise/, music/ or speech/"):
        Augmenter.from_dirs(tmp_path, None, 0.5)
    with pytest.raises(AugmentError, match="no .wav/.flac room impulse responses"):
        Augmenter.from_dirs(None, tmp_path, 0.5)


def test_noise_at_the_drawn_snr_and_deterministic(folders):
    aug = Augmenter.from_dirs(folders[0], None, prob=1.0)
    assert sorted(aug.musan) == ["music", "noise"]
    crop = np.sin(np.arange(16000) / 10).astype(np.float32)
    out = aug(crop, np.random.default_rng(3))
    np.testing.assert_array_equal(out, aug(crop, np.random.default_rng(3)))
    snr = 10 * np.log10(np.mean(crop**2) / np.mean((out - crop) ** 2))
    lo, hi = min(r[0] for r in SNR_DB.values()), max(r[1] for r in SNR_DB.values())
    assert lo - 0.5 <= snr <= hi + 0.5 and out.dtype == np.float32


def test_reverb_convolves_with_the_normalised_rir(folders):
    aug = Augmenter.from_dirs(None, folders[1], prob=1.0)
    crop = np.random.default_rng(1).normal(0, 0.1, 8000).astype(np.float32)
    out = aug(crop, np.random.default_rng(0))
    scale = 1 / np.sqrt(1.25)
    expected = scale * crop
    expected[800:] += scale * 0.5 * crop[:-800]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_probability_zero_keeps_the_crop(folders):
    aug = Augmenter.from_dirs(*folders, prob=0.0)
    crop = np.ones(100, dtype=np.float32)
    assert aug(crop, np.random.default_rng(0)) is crop
