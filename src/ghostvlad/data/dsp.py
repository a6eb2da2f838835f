"""Signal-processing building blocks shared by the synthetic corpus and the training augmentation (16 kHz)."""
from __future__ import annotations

import io

import av
import numpy as np
import scipy.fft
import scipy.signal as sps
import soxr

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


def butter_sos(order: int, cutoff: float, btype: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Second-order sections of a digital Butterworth low- or high-pass, as ``scipy.signal.butter(..., output="sos")``
    gives them (a section per conjugate pole pair, the pair nearest the unit circle last, and a first-order section
    for an odd order's real pole) but built straight from its poles: scipy's general pairing costs 10x the design."""
    zeros, poles, gain = sps.butter(order, cutoff, btype, fs=sample_rate, output="zpk")
    zero = float(zeros[0].real)  # all at -1 (low-pass) or +1 (high-pass)
    pairs = poles[poles.imag > 1e-12]
    pairs = pairs[np.argsort(np.abs(pairs))]
    sections = [np.stack([np.ones(len(pairs)), np.full(len(pairs), -2 * zero), np.ones(len(pairs)),
                          np.ones(len(pairs)), -2 * pairs.real, np.abs(pairs) ** 2], axis=1)]
    if order % 2:
        real = float(poles[np.argmin(np.abs(poles.imag))].real)
        sections.insert(0, np.array([[1.0, -zero, 0.0, 1.0, -real, 0.0]]))
    sos = np.vstack(sections)
    sos[0, :3] *= gain
    return sos


def colored_noise(rng: np.random.Generator, n: int, exponent: float, sample_rate: int = SAMPLE_RATE,
                  dtype: type = np.float64) -> np.ndarray:
    """Gaussian noise with power spectrum proportional to ``1/f**exponent`` (flat below 20 Hz), in ``dtype``."""
    m = scipy.fft.next_fast_len(n, real=True)
    freqs = np.maximum(scipy.fft.rfftfreq(m, 1 / sample_rate), 20.0).astype(dtype)
    return scipy.fft.irfft(scipy.fft.rfft(rng.standard_normal(m, dtype=dtype)) * freqs ** (-exponent / 2), m)[:n]


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal + noise`` with the noise scaled to ``snr_db`` below the signal's mean power."""
    scale = np.sqrt((np.mean(signal**2) + 1e-12) / ((np.mean(noise**2) + 1e-12) * 10 ** (snr_db / 10)))
    return signal + noise * scale


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` cut or zero-padded to ``n`` samples."""
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def codec_round_trip(x: np.ndarray, encoder: str, container: str, rate: int = SAMPLE_RATE,
                     bit_rate: int | None = None) -> np.ndarray:
    """``x`` (16 kHz float) encoded with the FFmpeg ``encoder`` at ``rate`` Hz and ``bit_rate`` (PyAV), decoded
    again and brought back to 16 kHz and to its length (the encoder's delay is kept: a shift of some ms)."""
    y = soxr.resample(x, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else x
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(encoder, rate=rate, layout="mono")
        if bit_rate:
            stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(np.clip(y, -1, 1).astype(np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = rate
        out.mux([*stream.encode(frame), *stream.encode(None)])
    buffer.seek(0)
    with av.open(buffer, "r") as inp:
        frames = list(inp.decode(audio=0))
    if not frames:
        return np.zeros_like(x)
    decoded = np.concatenate([f.to_ndarray() for f in frames], axis=1).mean(axis=0)  # (planes, samples): mono
    if frames[0].sample_rate != SAMPLE_RATE:  # narrow-band codecs, and Opus, which always decodes to 48 kHz
        decoded = soxr.resample(decoded, frames[0].sample_rate, SAMPLE_RATE)
    return fit_length(decoded, len(x))
