"""The embedding contract (ghostvlad.embedding) and opening models through the table of loaders."""
import threading
import time

import numpy as np
import pytest
import torch

from ghostvlad import loading
from ghostvlad.embedding import Embedder, length_batches, pad_batch, prefetch
from ghostvlad.export import OnnxSpeakerModel, export_onnx
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.loading import load_model
from ghostvlad.modelfile import ModelFileError
from ghostvlad.models import EncoderConfig, SpeakerEncoder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    enc = SpeakerEncoder(EncoderConfig(width=0.125, clusters=4, ghost_clusters=2, descriptor_dim=16, embed_dim=12))
    model = SpeakerModel(enc, FrontEndConfig(), threshold=0.3)
    root = tmp_path_factory.mktemp("models")
    return model, model.save(root / "m.safetensors"), export_onnx(model, root / "m.onnx")


def test_prefetch_keeps_order_and_stays_bounded():
    lock, running, started, most = threading.Lock(), [0], [], [0]

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            started.append(i)
            most[0] = max(most[0], running[0])
        time.sleep(0.002 * (i % 3))  # finish out of order
        with lock:
            running[0] -= 1
        return i * i

    out = []
    for value in prefetch(work, range(20), workers=3, ahead=4):
        out.append(value)
        assert len(started) <= len(out) + 4  # never more than `ahead` items in front of the consumer
    assert out == [i * i for i in range(20)]
    assert most[0] <= 3


def test_prefetch_raises_where_the_item_is_reached_and_stops_early():
    def work(i: int) -> int:
        if i == 2:
            raise RuntimeError("item 2")
        return i

    gen = prefetch(work, range(10), workers=2, ahead=3)
    assert [next(gen), next(gen)] == [0, 1]
    with pytest.raises(RuntimeError, match="item 2"):
        next(gen)
    started = []
    stopped = prefetch(started.append, range(1000), workers=1, ahead=2)
    next(stopped)
    stopped.close()  # the rest is never started
    assert len(started) <= 3


def test_pad_batch_and_length_batches():
    batch, lengths = pad_batch([np.ones(3, np.float32), np.full(5, 2, np.float32)])
    assert batch.dtype == np.float32 and lengths.tolist() == [3, 5]
    np.testing.assert_array_equal(batch, [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2]])
    config = FrontEndConfig()
    sizes = [16000, 1600, 48000, 16000, 3200]  # 101, 11, 301, 101 and 21 frames
    batches = length_batches(sizes, config, batch_frames=210)
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert batches == [[1, 4], [0, 3], [2]]  # by length; 301 frames alone although over the cap
    assert all(config.num_frames(max(sizes[i] for i in b)) * len(b) <= 210 for b in batches if len(b) > 1)


def test_load_model_dispatches_by_file_kind(saved, monkeypatch, tmp_path):
    model, safetensors, onnx = saved
    assert loading.model_kind(onnx) == "onnx" and loading.model_kind(safetensors) == "pytorch"
    assert loading.model_kind(tmp_path) == "pytorch"  # a model directory or run folder
    torch_model, onnx_model = load_model(safetensors, batch_frames=700), load_model(onnx, batch_frames=900)
    assert isinstance(torch_model, SpeakerModel) and isinstance(onnx_model, OnnxSpeakerModel)
    assert torch_model.batch_frames == 700 and onnx_model.batch_frames == 900  # no mutation after loading
    assert load_model(safetensors).batch_frames == 3200
    with pytest.raises(ModelFileError, match="ONNX models run in fp32 on CPU"):
        load_model(onnx, precision="bf16")
    seen = {}
    monkeypatch.setitem(loading.LOADERS, "onnx", lambda path, **kw: seen.setdefault("onnx", (path, kw)))
    load_model(onnx, min_duration=1.5)
    assert seen["onnx"][0] == onnx and seen["onnx"][1]["min_duration"] == 1.5


def test_both_models_declare_the_whole_contract(saved):
    model, _, onnx = saved
    onnx_model = load_model(onnx)
    for m in (model, onnx_model):
        assert isinstance(m, Embedder)
        key, config = m.identity()
        assert key == m.cache_key() and config["precision"] == "fp32" and config["threshold"] == 0.3
        assert set(config) == {"encoder", "frontend", "threshold", "info", "calibration", "precision"}
        assert m.calibration is None and m.info == {} and m.min_duration == 0.5
    wave = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)
    np.testing.assert_array_equal(model.load_item(wave), wave)
    np.testing.assert_allclose(model.load_item(wave[::2], sample_rate=8000).shape, (8000,))
    np.testing.assert_allclose(onnx_model.embed(wave), model.embed(wave), atol=1e-4)
