"""Recording channels of a session: the random draw of a :class:`Channel` (``studio`` or ``field`` family) and the
signal processing it stands for (room response, band and EQ filters, saturation, telephone line, codec)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.signal as sps
import soxr

from ..dsp import SAMPLE_RATE, biquads, codec_round_trip, fit_length

# session channels: "studio" (rooms, noise, EQ, band limits) or "field" (adds telephone lines, speech codecs that
# the training augmentation never uses, loudspeaker distortion and larger rooms), for cross-domain checks
CHANNEL_FAMILIES = ("studio", "field")


FIELD_CODECS = {  # name -> (PyAV encoder, container, sample rate, bit rates in bit/s)
    "amr_nb": ("libopencore_amrnb", "amr", 8000, (4750, 5900, 7400, 10200, 12200)),
    "g726": ("g726", "wav", 8000, (16000, 24000, 32000)),
    "real_144": ("real_144", "rm", 8000, (0,)),
    "g722": ("g722", "wav", 16000, (64000,)),
    "nellymoser": ("nellymoser", "flv", 16000, (0,)),
}


NOISES = ("white", "pink", "brown", "babble")


NOISE_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}


@dataclass(frozen=True)
class Channel:
    """A session's recording channel."""

    rt60: float  # seconds, 0 = no reverberation
    drr_db: float  # direct-to-reverberant ratio
    noise: str  # one of NOISES
    snr_db: float
    eq: tuple[tuple[str, float, float, float], ...]  # (peak|lowshelf|highshelf, Hz, gain dB, Q)
    highpass: float  # Hz
    lowpass: float  # Hz
    lowpass_order: int
    level_db: float  # RMS in dBFS
    drive: float = 0.0  # loudspeaker/recorder saturation: tanh drive, 0 = none
    narrowband: bool = False  # a 300-3400 Hz telephone line at 8 kHz
    codec: str = ""  # "name@bit_rate" of FIELD_CODECS, "" = none


def draw_channel(rng: np.random.Generator, family: str = "studio") -> Channel:
    studio = _draw_studio_channel(rng)
    if family == "studio":
        return studio
    codec = list(FIELD_CODECS)[int(rng.integers(len(FIELD_CODECS)))] if rng.random() < 0.7 else ""
    if codec:
        rates = FIELD_CODECS[codec][3]
        codec = f"{codec}@{int(rates[int(rng.integers(len(rates)))])}"
    return replace(
        studio,
        rt60=round(float(rng.uniform(0.3, 1.2)), 3) if rng.random() < 0.7 else 0.0,
        drive=round(float(rng.uniform(1.0, 6.0)), 2) if rng.random() < 0.5 else 0.0,
        narrowband=bool(rng.random() < 0.5),
        codec=codec,
    )


def _draw_studio_channel(rng: np.random.Generator) -> Channel:
    n_peaks = int(rng.integers(2, 5))
    freqs = np.exp(rng.uniform(np.log(150), np.log(5000), n_peaks))
    peaks = [("peak", float(f), float(g), float(q))
             for f, g, q in zip(freqs, rng.uniform(-9, 9, n_peaks), rng.uniform(0.7, 3, n_peaks))]
    shelves = [("lowshelf", float(rng.uniform(100, 400)), float(rng.uniform(-6, 6)), 0.707),
               ("highshelf", float(rng.uniform(2500, 6000)), float(rng.uniform(-8, 6)), 0.707)]
    reverberant = rng.random() < 0.8
    return Channel(
        rt60=round(float(rng.uniform(0.15, 0.9)), 3) if reverberant else 0.0,
        drr_db=round(float(rng.uniform(-3, 12)), 2),
        noise=str(rng.choice(NOISES)),
        snr_db=round(float(rng.uniform(5, 30)), 2),
        eq=tuple((kind, round(f, 1), round(g, 2), round(q, 3)) for kind, f, g, q in peaks + shelves),
        highpass=round(float(np.exp(rng.uniform(np.log(50), np.log(300)))), 1),
        lowpass=round(float(rng.uniform(3000, 7500)), 1),
        lowpass_order=int(rng.integers(4, 9)),
        level_db=round(float(rng.uniform(-32, -16)), 2),
    )


def channel_filter(channel: Channel) -> np.ndarray:
    band = np.vstack([
        sps.butter(2, channel.highpass, "highpass", fs=SAMPLE_RATE, output="sos"),
        sps.butter(channel.lowpass_order, channel.lowpass, "lowpass", fs=SAMPLE_RATE, output="sos"),
    ])
    return np.vstack([biquads(channel.eq), band])


def room_response(channel: Channel, rng: np.random.Generator) -> np.ndarray:
    """Direct path plus an exponentially decaying noise tail (60 dB down after rt60), scaled to the DRR."""
    n = max(int(channel.rt60 * SAMPLE_RATE), 1)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-3 * np.log(10) * t / channel.rt60)
    tail = sps.sosfilt(sps.butter(1, rng.uniform(2000, 6000), fs=SAMPLE_RATE, output="sos"), tail)  # air absorption
    tail[: int(0.002 * SAMPLE_RATE)] = 0  # first reflections arrive after the direct path
    tail *= 10 ** (-channel.drr_db / 20) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    return tail


def field_effects(x: np.ndarray, channel: Channel) -> np.ndarray:
    """The field channel's saturation, telephone line and codec (nothing for a studio channel)."""
    if channel.drive > 0:
        x = np.tanh(channel.drive * x / (np.max(np.abs(x)) + 1e-12))
    if channel.narrowband:
        line = sps.sosfilt(sps.butter(4, [300, 3400], "bandpass", fs=8000, output="sos"),
                           soxr.resample(x, SAMPLE_RATE, 8000))
        x = fit_length(soxr.resample(line, 8000, SAMPLE_RATE), len(x))
    if channel.codec:
        name, _, bit_rate = channel.codec.partition("@")
        encoder, container, rate, _ = FIELD_CODECS[name]
        x = codec_round_trip(0.5 * x / (np.max(np.abs(x)) + 1e-12), encoder, container, rate, int(bit_rate) or None)
    return x
