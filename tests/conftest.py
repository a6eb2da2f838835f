"""Test-wide settings: tiny models run fastest (and most predictably on a busy 2-core machine) on one thread."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses (CLI, torchrun) the tests start

import torch  # noqa: E402

torch.set_num_threads(1)


def tiny_config(backbone: str = "resnet34s", pooling: str = "gvlad"):
    """A tiny encoder config (width 1/8, 16-d); each pooling gets only the parameters it takes."""
    from ghostvlad.models import EncoderConfig
    from ghostvlad.registry import Component

    own = {"vlad": {"clusters": 4}, "gvlad": {"clusters": 4, "ghost_clusters": 2}}.get(pooling, {})
    return EncoderConfig(backbone=Component(backbone, {"width": 0.125}), pooling=Component(pooling, own),
                         descriptor_dim=16, embed_dim=16)


def calibrated_tiny_model(waves, seed: int = 0, mirror: bool = False, backbone: str = "resnet34s",
                          pooling: str = "gvlad", **model_kwargs):
    """A random tiny model whose BatchNorm statistics are set on ``waves`` (N equal-length float32 clips).

    An untrained model with default statistics embeds everything almost identically; with statistics taken
    from the test signals, their embeddings differ (and depend on every layer's full reach in time).
    ``model_kwargs`` go to :class:`SpeakerModel`.
    """
    import numpy as np

    from ghostvlad.features import FrontEndConfig, Spectrogram
    from ghostvlad.inference import SpeakerModel
    from ghostvlad.models import SpeakerEncoder

    torch.manual_seed(seed)
    encoder = SpeakerEncoder(tiny_config(backbone, pooling))
    for module in encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    with torch.no_grad():
        encoder.train()(Spectrogram()(torch.from_numpy(np.stack(waves)))[0])
    return SpeakerModel(encoder.eval(), FrontEndConfig(mirror=mirror), **model_kwargs)


def write_aac(path, samples, rate: int = 16000) -> None:
    """AAC in MP4 (as VoxCeleb2's m4a) from int16 samples ``(n,)`` or ``(n, channels)``, with FFmpeg's encoder."""
    import av

    samples = samples.reshape(len(samples), -1)
    layout = "mono" if samples.shape[1] == 1 else "stereo"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def varied_audio(rng, seconds: float, rate: int = 16000):
    """Float32 audio whose spectrum changes every 50 ms (random tones over noise): every frame differs, so a
    wrong frame anywhere shows in an embedding."""
    import numpy as np

    n = round(seconds * rate)
    t = np.arange(n) / rate
    out = rng.normal(0, 0.01, n)
    for start in range(0, n, rate // 20):
        part = slice(start, start + rate // 20)
        for freq in rng.uniform(100, 7000, 3):
            out[part] += rng.uniform(0.1, 1) * np.sin(2 * np.pi * freq * t[part])
    return out.astype(np.float32)
