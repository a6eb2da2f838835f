"""The tiny training config and a 4-speaker wav corpus with its manifest, for training runs."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from ghostvlad.data.manifest import build_manifest

TINY = {
    "model": {"backbone": {"name": "resnet34s", "width": 0.0625}, "pooling": {"name": "gvlad", "clusters": 2,
              "ghost_clusters": 1}, "descriptor_dim": 8, "embed_dim": 8},
    "head": {"name": "softmax"},
    "optim": {"name": "adam", "lr": 0.003},
    "schedule": {"name": "paper", "warmup_ratio": 0.5, "warmup_epochs": 1},
    "data": {"frames": 50, "workers": 0},
    "train": {"epochs": 4, "batch_size": 4, "steps_per_epoch": 5, "precision": "fp32", "checkpoint_every": 1,
              "log_every": 1, "channels_last": False},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    files, speakers = [], []
    for s in range(4):
        for u in range(4):
            t = np.arange(int(rng.uniform(0.8, 1.5) * 16000)) / 16000
            wave = 0.3 * np.sin(2 * np.pi * (150 + 60 * s) * t * (1 + 0.05 * rng.standard_normal()))
            path = root / f"id{s:05d}" / "vid" / f"{u:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, (wave + rng.normal(0, 0.02, t.size)).astype(np.float32), 16000)
            files.append(path)
            speakers.append(f"id{s:05d}")
    manifest = build_manifest(files, speakers, root / "train.csv", workers=1).manifest
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    return Path(manifest), config
