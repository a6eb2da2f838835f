"""The simulated-channel augmentation: each stage changes the signal as specified, deterministically."""
import multiprocessing

import numpy as np
import pytest
import scipy.signal as sps

from ghostvlad.data.augment import (CODECS, STAGE_ORDER, STAGES, AugmentError, ChannelAugment, StageContext, _g711,
                                    chain, shortest_rt60, simulate_rooms)
from ghostvlad.data.dsp import butter_sos, codec_round_trip

SR = 16000
N = 39840


def speechlike(seed: int = 0) -> np.ndarray:
    """A harmonic tone (F0 120-200 Hz) with a syllable-rate envelope: speech's spectral shape, deterministic."""
    rng = np.random.default_rng(seed)
    t = np.arange(N) / SR
    f0 = 160 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 30) if 200 * k < SR / 2)
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.1 * x / np.abs(x).max() + 0.001 * rng.standard_normal(N)).astype(np.float64)


def band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    f, p = sps.welch(x, SR, nperseg=1024)
    return float(p[(f >= lo) & (f < hi)].sum())


def snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    return 10 * np.log10(np.mean(clean**2) / np.mean((mixed - clean) ** 2))


def run(stage: str, x: np.ndarray, seed: int = 0, ctx: StageContext | None = None) -> np.ndarray:
    return STAGES.get(stage)(x.copy(), np.random.default_rng(seed), ctx or StageContext())


class _Draws:
    """A generator whose uniform draws are given: the source stage's flattening power, then its noise level (dB)."""

    def __init__(self, *uniforms: float) -> None:
        self.uniforms, self.rng = list(uniforms), np.random.default_rng(0)

    def uniform(self, low: float, high: float) -> float:
        return self.uniforms.pop(0)

    def standard_normal(self, *args, **kwargs) -> np.ndarray:
        return self.rng.standard_normal(*args, **kwargs)


def test_source_resynthesis_is_exact_without_flattening_or_noise():
    x = speechlike()
    y = STAGES.get("source")(x.astype(np.float32), _Draws(0.0, 300.0), StageContext())
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_source_keeps_the_envelope_and_blurs_the_harmonics():
    x = speechlike()
    y = STAGES.get("source")(x.astype(np.float32), _Draws(0.6, 5.0), StageContext())
    edges = [100, 400, 800, 1600, 3200, 6400]
    change = [10 * np.log10(band_energy(y, lo, hi) / band_energy(x, lo, hi)) for lo, hi in zip(edges, edges[1:])]
    assert max(abs(c) for c in change) < 2.0, change

    def flatness(z: np.ndarray) -> float:  # per 32 ms frame, geometric over arithmetic mean power in 0.3-3 kHz
        f, _, spec = sps.stft(z, SR, nperseg=512, noverlap=384)
        power = np.abs(spec[(f > 300) & (f < 3000)]) ** 2 + 1e-20
        return float(np.median(np.exp(np.mean(np.log(power), axis=0)) / np.mean(power, axis=0)))

    assert flatness(y) > 1.5 * flatness(x)  # harmonics less peaked over the noise between them
    a, b = run("source", x, seed=5), run("source", x, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, run("source", x, seed=6))


def test_reverb_convolves_with_one_of_the_simulated_rooms():
    aug = ChannelAugment({"reverb": 1.0}, seed=0, rooms=4)
    rooms = aug.context.rooms
    assert len(rooms) == 4 and all(abs(np.sum(r.astype(np.float64) ** 2) - 1) < 1e-4 for r in rooms)
    x = speechlike()
    y = run("reverb", x, ctx=aug.context)
    matches = [np.allclose(y, np.convolve(x, r)[:N], atol=1e-6) for r in rooms]
    assert sum(matches) == 1
    # a room lengthens the signal's decay: energy right after the input stops
    burst = np.zeros(N)
    burst[:1600] = x[:1600]
    tail = run("reverb", burst, ctx=aug.context)[1600:4800]
    assert np.sum(tail**2) > 1e-3 * np.sum(burst**2)


def test_every_seed_simulates_its_rooms_even_where_a_large_room_cannot_be_as_dry_as_drawn():
    import pyroomacoustics as pra

    dim = np.array([11.7, 7.8, 3.9])  # seed 2's 12th room: 0.163 s was drawn, its walls allow no less than 0.17 s
    shortest = shortest_rt60(dim, pra.constants.get("c"))
    pra.inverse_sabine(1.001 * shortest, dim)  # the bound is pyroomacoustics' own
    with pytest.raises(ValueError):
        pra.inverse_sabine(0.999 * shortest, dim)
    assert len(simulate_rooms(12, seed=2)) == 12  # raised "room may be too large for required RT60" before


@pytest.mark.parametrize(("stage", "low", "high"), [("noise", 0, 20), ("music", 5, 15), ("babble", 5, 20)])
def test_additive_stages_mix_at_their_snr_range(stage, low, high):
    x = speechlike()
    donors = np.random.default_rng(5).standard_normal((3, N)) * 0.05
    ctx = StageContext(donor=lambda rng: donors[int(rng.integers(3))])
    snrs = [snr_db(x, run(stage, x, seed, ctx)) for seed in range(12)]
    assert all(low - 1e-6 <= s <= high + 1e-6 for s in snrs), snrs
    assert max(snrs) - min(snrs) > 2  # the SNR is drawn, not fixed


def test_music_is_tonal_and_noise_is_not():
    silent = np.zeros(N)
    silent[0] = 1e-3  # the SNR is relative to this
    tones = run("music", silent) - silent
    hiss = run("noise", silent) - silent

    def flatness(x):
        _, p = sps.welch(x, SR, nperseg=2048)
        p = p[1:] + 1e-20
        return np.exp(np.mean(np.log(p))) / np.mean(p)

    assert flatness(tones) < 0.05 < flatness(hiss)


def test_eq_is_a_random_linear_filter_within_its_gain_range():
    impulse = np.zeros(4096)
    impulse[0] = 1
    responses = [np.abs(np.fft.rfft(run("eq", impulse, seed))) for seed in range(5)]
    for h in responses:
        db = 20 * np.log10(h[5:-50])
        assert db.max() < 30 and db.min() > -40 and db.max() - db.min() > 3
    assert not np.allclose(responses[0], responses[1])


@pytest.mark.parametrize(("btype", "cutoffs"), [("lowpass", (2500.0, 7500.0)), ("highpass", (50.0, 400.0))])
@pytest.mark.parametrize("order", range(1, 11))
def test_butter_sos_is_scipys_butterworth(order, btype, cutoffs):
    x = np.random.default_rng(order).standard_normal(4096)
    for cutoff in cutoffs:  # the ends of bandlimit's ranges
        ours = butter_sos(order, cutoff, btype)
        ref = sps.butter(order, cutoff, btype, fs=SR, output="sos")
        assert ours.shape == ref.shape
        np.testing.assert_allclose(sps.sosfilt(ours, x), sps.sosfilt(ref, x), rtol=0, atol=1e-9)


def test_bandlimit_removes_the_extremes():
    x = np.random.default_rng(0).standard_normal(N)
    for seed in range(5):
        y = run("bandlimit", x, seed)
        assert band_energy(y, 7600, 8000) < 0.05 * band_energy(x, 7600, 8000)
        assert band_energy(y, 0, 40) < 0.5 * band_energy(x, 0, 40)
        assert band_energy(y, 500, 2000) > 0.5 * band_energy(x, 500, 2000)


def test_telephone_is_narrow_band():
    x = speechlike()
    y = run("telephone", x)
    assert len(y) == N
    assert band_energy(y, 4100, 8000) < 1e-4 * band_energy(x, 4100, 8000) + 1e-12
    assert band_energy(y, 0, 150) < 0.1 * band_energy(x, 0, 150)
    assert band_energy(y, 500, 3000) > 0.3 * band_energy(x, 500, 3000)


@pytest.mark.parametrize("law", ["mu", "a"])
def test_g711_quantisation_noise_matches_the_standard_codec(law):
    audioop = pytest.importorskip("audioop", reason="audioop (the G.711 reference) left the standard library")
    t = np.arange(8000) / 8000
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    ours = snr_db(x, _g711(x, law))
    pcm = (x * 32767).astype(np.int16).tobytes()
    encode, decode = (audioop.lin2ulaw, audioop.ulaw2lin) if law == "mu" else (audioop.lin2alaw, audioop.alaw2lin)
    ref = snr_db(x, np.frombuffer(decode(encode(pcm, 2), 2), np.int16) / 32767)
    assert 30 < ours < 45 and abs(ours - ref) < 4


@pytest.mark.parametrize("codec", ["mp3", "aac", "opus"])
def test_codec_round_trip_keeps_the_tone_and_the_length(codec):
    t = np.arange(N) / SR
    x = 0.2 * np.sin(2 * np.pi * 500 * t) + 0.1 * np.sin(2 * np.pi * 1200 * t)
    encoder, container, rate, _ = CODECS[codec]
    y = codec_round_trip(x, encoder, container, rate, 16000)
    assert len(y) == N and np.all(np.isfinite(y))
    f, p = sps.welch(y[4000:-4000], SR, nperseg=2048)
    assert abs(f[np.argmax(p)] - 500) < 16
    assert not np.allclose(y, x, atol=1e-3)


def test_gain_scales_and_clips():
    x = speechlike()
    for seed in range(6):
        y = run("gain", x, seed)
        assert np.abs(y).max() <= 1.0
        ratio = np.median(np.abs(y[np.abs(y) < 0.9]) / (np.abs(x[np.abs(y) < 0.9]) + 1e-12))
        assert 10 ** (-20 / 20) - 1e-6 <= ratio <= 10 ** (20 / 20) + 1e-6


def test_chain_is_deterministic_finite_and_in_range():
    aug = ChannelAugment({name: 0.7 for name in STAGE_ORDER}, seed=1, rooms=4,
                         donor=lambda rng: np.random.default_rng(int(rng.integers(9))).standard_normal(N) * 0.1)
    x = speechlike().astype(np.float32)
    a = aug(x, np.random.default_rng([0, 1, 2]))
    b = aug(x, np.random.default_rng([0, 1, 2]))
    c = aug(x, np.random.default_rng([0, 1, 3]))
    assert a.dtype == np.float32 and a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.all(np.isfinite(a)) and np.abs(a).max() <= 1.0


def test_reverb_room_spectra_are_cached_without_changing_the_result():
    aug = ChannelAugment({"reverb": 1.0}, seed=0, rooms=3)
    x = speechlike().astype(np.float32)
    first = run("reverb", x, seed=4, ctx=aug.context)
    assert len(aug.context._spectra) == 1  # noqa: SLF001 - the room drawn, at this crop's FFT size
    np.testing.assert_array_equal(run("reverb", x, seed=4, ctx=aug.context), first)
    # a fresh context (nothing cached) gives the same crop
    np.testing.assert_array_equal(run("reverb", x, seed=4, ctx=StageContext(aug.context.rooms)), first)


_FORKED: ChannelAugment | None = None


def _augment_in_worker(seed: int) -> np.ndarray:
    return _FORKED(speechlike().astype(np.float32), np.random.default_rng([seed, 0, 1]))


def test_chain_is_identical_across_worker_processes():
    """Each crop depends only on its generator: a forked worker (own caches, own codec contexts) that augments the
    crops in another order gives the same arrays as this process."""
    global _FORKED
    donors = np.random.default_rng(3).standard_normal((4, N)).astype(np.float32) * 0.05
    _FORKED = ChannelAugment({name: 0.8 for name in STAGE_ORDER}, seed=2, rooms=3,
                             donor=lambda rng: donors[int(rng.integers(4))])
    seeds = list(range(6))
    here = [_augment_in_worker(s) for s in seeds]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        there = pool.map(_augment_in_worker, seeds[::-1], chunksize=1)[::-1]
    for a, b in zip(here, there):
        np.testing.assert_array_equal(a, b)


def test_chain_order_and_none():
    assert chain(None, None) is None
    double = chain(lambda x, rng: x * 2, None, lambda x, rng: x + 1)
    np.testing.assert_array_equal(double(np.ones(3), np.random.default_rng(0)), np.full(3, 3.0))


def test_bad_settings_fail_clearly():
    with pytest.raises(AugmentError, match="unknown augmentation stage.*wobble"):
        ChannelAugment({"wobble": 0.5})
    with pytest.raises(AugmentError, match=r"in \[0, 1\]"):
        ChannelAugment({"noise": 1.5})
