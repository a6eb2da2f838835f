"""Test signals: tones, audio whose spectrum keeps changing, and AAC files."""
import av
import numpy as np


def tone(rng: np.random.Generator, freq: float, seconds: float = 0.8, noise: float = 0.05) -> np.ndarray:
    """Float32 16 kHz sine of amplitude 0.3 at ``freq`` Hz plus Gaussian noise of standard deviation ``noise``."""
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t) + rng.normal(0, noise, t.size)).astype(np.float32)


def varied_audio(rng, seconds: float, rate: int = 16000):
    """Float32 audio whose spectrum changes every 50 ms (random tones over noise): every frame differs, so a
    wrong frame anywhere shows in an embedding."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    out = rng.normal(0, 0.01, n)
    for start in range(0, n, rate // 20):
        part = slice(start, start + rate // 20)
        for freq in rng.uniform(100, 7000, 3):
            out[part] += rng.uniform(0.1, 1) * np.sin(2 * np.pi * freq * t[part])
    return out.astype(np.float32)


def write_aac(path, samples, rate: int = 16000) -> None:
    """AAC in MP4 (as VoxCeleb2's m4a) from int16 samples ``(n,)`` or ``(n, channels)``, with FFmpeg's encoder."""
    samples = samples.reshape(len(samples), -1)
    layout = "mono" if samples.shape[1] == 1 else "stereo"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
