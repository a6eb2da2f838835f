import json

import numpy as np
import pytest
import soundfile as sf
import torch

from ghostvlad import AudioError, SpeakerModel, load_model
from ghostvlad.features import FrontEndConfig
from ghostvlad.models import EncoderConfig, SpeakerEncoder


@pytest.fixture(scope="module")
def model() -> SpeakerModel:
    torch.manual_seed(0)
    enc = SpeakerEncoder(EncoderConfig(width=0.125, clusters=4, ghost_clusters=2, descriptor_dim=16, embed_dim=12))
    return SpeakerModel(enc, FrontEndConfig(mirror=True), batch_frames=600)


def clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * (120 + 40 * seed) * t) + rng.normal(0, 0.05, t.size)).astype(np.float32)


def test_embed_is_unit_norm_float32(model):
    e = model.embed(clip(1.0, 0))
    assert e.shape == (12,) and e.dtype == np.float32
    assert abs(np.linalg.norm(e) - 1) < 1e-5


def test_batch_of_mixed_lengths_equals_one_at_a_time(model, tmp_path):
    waves = [clip(s, i) for i, s in enumerate([0.7, 2.3, 1.1, 3.0, 1.6])]
    paths = []
    for i, w in enumerate(waves):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], w, 16000, subtype="FLOAT")
    alone = np.stack([model.embed(w) for w in waves])
    np.testing.assert_allclose(model.embed_batch(waves), alone, atol=1e-5)
    np.testing.assert_allclose(model.embed_batch(paths), alone, atol=1e-5)  # several length buckets


def test_sample_rate_argument_resamples(model):
    w16 = clip(1.5, 3)
    t = np.arange(int(1.5 * 8000)) / 8000
    w8 = (0.2 * np.sin(2 * np.pi * 240 * t)).astype(np.float32)
    e = model.embed(w8, sample_rate=8000)
    assert e.shape == (12,)
    assert not np.allclose(e, model.embed(w16))


def test_score_is_cosine(model):
    a, b = clip(1.0, 1), clip(1.2, 2)
    assert model.score(a, b) == pytest.approx(float(model.embed(a) @ model.embed(b)), abs=1e-5)
    assert model.score(a, a) == pytest.approx(1.0, abs=1e-5)


def test_bad_items_are_reported_and_the_rest_still_embedded(model, tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, clip(1.0, 0), 16000)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    items = [str(good), str(tmp_path / "missing.wav"), str(silent)]
    results = {r.index: r for r in model.iter_embeddings(items)}
    assert results[0].error is None and np.allclose(results[0].embedding, model.embed(good), atol=1e-5)
    assert "missing.wav" in str(results[1].error) and "silent.wav" in str(results[2].error)
    with pytest.raises(AudioError, match="missing.wav"):
        model.embed_batch(items)


def test_too_short_clip_is_an_audio_error(model):
    with pytest.raises(AudioError, match="<array>"):
        model.embed(clip(0.2, 0))


def test_bf16_is_close_to_fp32(tmp_path, model):
    path = model.save(tmp_path / "m")
    bf16 = load_model(path, precision="bf16")
    w = clip(2.0, 5)
    assert float(bf16.embed(w) @ model.embed(w)) > 0.99


def test_an_ensemble_scores_the_mean_of_its_members_and_keeps_their_front_end(tmp_path):
    from ghostvlad.inference import ensemble
    from ghostvlad.modelfile import ModelFileError

    members = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        enc = SpeakerEncoder(EncoderConfig(width=0.125, pooling="astp", descriptor_dim=8, embed_dim=8))
        members.append(SpeakerModel(enc, FrontEndConfig(mirror=True), threshold=0.3, info={"seed": seed}))
    both = ensemble(members)
    assert both.frontend_config.mirror and both.threshold is None
    assert both.info == {"ensemble": [{"seed": 3}, {"seed": 4}]}
    a, b = clip(1.3, 0), clip(2.1, 1)
    np.testing.assert_allclose(both.score(a, b), np.mean([m.score(a, b) for m in members]), atol=1e-5)
    again = load_model(both.save(tmp_path / "both.safetensors"))
    np.testing.assert_allclose(again.embed(a), both.embed(a), atol=1e-6)
    # a stack is format version 2 (a ghostvlad from before stacks refuses it as too new); one network stays 1
    assert json.loads((both.save(tmp_path / "both") / "config.json").read_text())["version"] == 2
    assert json.loads((members[0].save(tmp_path / "one") / "config.json").read_text())["version"] == 1
    plain = SpeakerModel(members[1].saved_encoder, FrontEndConfig(mirror=False))
    with pytest.raises(ModelFileError, match="ensemble: model 2's front-end differs from model 1's: mirror False vs True"):
        ensemble([members[0], plain])
