"""One tone (plus harmonics) per "speaker", and WAV bytes of them, for requests to the HTTP service."""
import io

import numpy as np
import soundfile as sf

VOICES = {"alice": 220.0, "bob": 700.0, "carol": 2100.0}  # one tone (plus harmonics) per "speaker"


def voice(freq: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = sum(0.2 / k * np.sin(2 * np.pi * k * freq * t + rng.uniform(0, 6)) for k in (1, 2, 3))
    return (x + rng.normal(0, 0.01, t.size)).astype(np.float32)


def wav_bytes(x: np.ndarray, rate: int = 16000, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, x, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()
