"""Tiny models with non-trivial BatchNorm statistics, test clips of awkward lengths, and a mirrored model's ONNX
export, for `export` and the commands built on it."""
import numpy as np
import pytest
import torch

from ghostvlad.export import OnnxSpeakerModel, export_onnx
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.models import SpeakerEncoder
from support.models import tiny_config

# 0.6 s, 1.3 s, 3 s and 1.315 s: odd and even frame counts with and without mirror (the stride-2 stem cares)
LENGTHS = (9600, 20800, 48000, 21040)


def tiny_model(pooling: str = "gvlad", backbone: str = "resnet34s", mirror: bool = False,
               branches: int = 1, max_freq: float | None = None) -> SpeakerModel:
    torch.manual_seed(0)
    frontend = FrontEndConfig(mirror=mirror, max_freq=max_freq)
    enc = SpeakerEncoder(tiny_config(backbone, pooling, branches), frontend.n_freq)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folding them matters
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    return SpeakerModel(enc, frontend, threshold=0.42, info={"note": "tiny"})


def clip(samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    return (0.2 * np.sin(2 * np.pi * (110 + 35 * seed) * t) + rng.normal(0, 0.05, samples)).astype(np.float32)


WAVES = [clip(n, i) for i, n in enumerate(LENGTHS)]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(1).min() / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).max())


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory) -> tuple[SpeakerModel, OnnxSpeakerModel]:
    model = tiny_model(mirror=True)
    return model, OnnxSpeakerModel(export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx"))
