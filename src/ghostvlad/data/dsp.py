"""Signal-processing building blocks shared by the synthetic corpus and the training augmentation (16 kHz)."""
from __future__ import annotations

import numpy as np
import scipy.fft

SAMPLE_RATE = 16000
EqBand = tuple[str, float, float, float]  # (peak | lowshelf | highshelf, Hz, gain dB, Q)


def biquads(eq: tuple[EqBand, ...] | list[EqBand], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Second-order sections ``(len(eq), 6)`` of RBJ-cookbook peaking and shelving filters."""
    kind = np.array([e[0] for e in eq])
    f, gain, q = (np.array([e[i] for e in eq], dtype=np.float64) for i in (1, 2, 3))
    a = 10 ** (gain / 40)
    w0 = 2 * np.pi * f / sample_rate
    cos, alpha = np.cos(w0), np.sin(w0) / (2 * q)
    sq = 2 * np.sqrt(a) * alpha
    peak = np.stack([1 + alpha * a, -2 * cos, 1 - alpha * a, 1 + alpha / a, -2 * cos, 1 - alpha / a], axis=1)
    low = np.stack([a * ((a + 1) - (a - 1) * cos + sq), 2 * a * ((a - 1) - (a + 1) * cos),
                    a * ((a + 1) - (a - 1) * cos - sq), (a + 1) + (a - 1) * cos + sq,
                    -2 * ((a - 1) + (a + 1) * cos), (a + 1) + (a - 1) * cos - sq], axis=1)
    high = np.stack([a * ((a + 1) + (a - 1) * cos + sq), -2 * a * ((a - 1) + (a + 1) * cos),
                     a * ((a + 1) + (a - 1) * cos - sq), (a + 1) - (a - 1) * cos + sq,
                     2 * ((a - 1) - (a + 1) * cos), (a + 1) - (a - 1) * cos - sq], axis=1)
    sos = np.select([kind[:, None] == "peak", kind[:, None] == "lowshelf"], [peak, low], high)
    return sos / sos[:, 3:4]


def colored_noise(rng: np.random.Generator, n: int, exponent: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Gaussian noise with power spectrum proportional to ``1/f**exponent`` (flat below 20 Hz)."""
    m = scipy.fft.next_fast_len(n, real=True)
    freqs = np.maximum(scipy.fft.rfftfreq(m, 1 / sample_rate), 20.0)
    return scipy.fft.irfft(scipy.fft.rfft(rng.standard_normal(m)) * freqs ** (-exponent / 2), m)[:n]


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal + noise`` with the noise scaled to ``snr_db`` below the signal's mean power."""
    scale = np.sqrt((np.mean(signal**2) + 1e-12) / ((np.mean(noise**2) + 1e-12) * 10 ** (snr_db / 10)))
    return signal + noise * scale
