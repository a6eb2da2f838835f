"""Tiny random models for tests, and a probe of the activations a model's network produces."""
import numpy as np
import torch

from ghostvlad.features import FrontEndConfig, Spectrogram
from ghostvlad.inference import SpeakerModel
from ghostvlad.models import EncoderConfig, SpeakerEncoder
from ghostvlad.registry import Component
from support.audio import tone


def tiny_config(backbone: str = "resnet34s", pooling: str = "gvlad", branches: int = 1) -> EncoderConfig:
    """A tiny encoder config (width 1/8, 16-d); each pooling gets only the parameters it takes."""
    own = {"vlad": {"clusters": 4}, "gvlad": {"clusters": 4, "ghost_clusters": 2}}.get(pooling, {})
    return EncoderConfig(backbone=Component(backbone, {"width": 0.125}), pooling=Component(pooling, own),
                         descriptor_dim=16, embed_dim=16, branches=branches)


def calibrated_tiny_model(waves, seed: int = 0, mirror: bool = False, backbone: str = "resnet34s",
                          pooling: str = "gvlad", branches: int = 1, max_freq: float | None = None,
                          **model_kwargs) -> SpeakerModel:
    """A random tiny model whose BatchNorm statistics are set on ``waves`` (N equal-length float32 clips).

    An untrained model with default statistics embeds everything almost identically; with statistics taken
    from the test signals, their embeddings differ (and depend on every layer's full reach in time).
    ``model_kwargs`` go to :class:`SpeakerModel`.
    """
    torch.manual_seed(seed)
    frontend = FrontEndConfig(mirror=mirror, max_freq=max_freq)
    encoder = SpeakerEncoder(tiny_config(backbone, pooling, branches), frontend.n_freq)
    for module in encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    with torch.no_grad():
        encoder.train()(Spectrogram(frontend)(torch.from_numpy(np.stack(waves)))[0])
    return SpeakerModel(encoder.eval(), frontend, **model_kwargs)


def tone_model(freqs, seconds: float, seed: int = 0) -> SpeakerModel:
    """:func:`calibrated_tiny_model` on one noisy tone per frequency (``support.audio.tone``), all drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return calibrated_tiny_model([tone(rng, f, seconds) for f in freqs], seed)


def largest_activations(m: SpeakerModel, run) -> tuple[int, int]:
    """(largest tensor any module of the network outputs, widest span in frames the backbone sees) during ``run``."""
    seen = {"numel": 0, "width": 0}

    def record(module, inputs, output):
        for t in output if isinstance(output, tuple) else (output,):
            if isinstance(t, torch.Tensor):
                seen["numel"] = max(seen["numel"], t.numel())

    def width(module, inputs, output):
        seen["width"] = max(seen["width"], inputs[0].shape[-1])

    hooks = [mod.register_forward_hook(record) for mod in m.fused_encoder.modules() if mod is not m.fused_encoder]
    hooks.append(m.fused_encoder.backbone.stem.bn.register_forward_hook(width))  # the stem's input: frames in time
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen["numel"], seen["width"]
