import json

import numpy as np
import pytest
import torch

from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.loading import load_model
from ghostvlad.modelfile import ModelFileError, read_model
from ghostvlad.models import EncoderConfig, SpeakerEncoder

CONFIG = EncoderConfig(width=0.125, pooling="gvlad", clusters=3, ghost_clusters=1, descriptor_dim=16, embed_dim=8)


@pytest.fixture
def model() -> SpeakerModel:
    torch.manual_seed(0)
    return SpeakerModel(SpeakerEncoder(CONFIG), FrontEndConfig(mirror=True), threshold=0.5, info={"source": "test"})


@pytest.mark.parametrize("name", ["model_dir", "model.safetensors"])
def test_round_trip_is_exact(tmp_path, model, name):
    path = model.save(tmp_path / name)
    loaded = load_model(path)
    assert loaded.config == CONFIG
    assert loaded.frontend.config == FrontEndConfig(mirror=True)
    assert loaded.threshold == 0.5 and loaded.info == {"source": "test"}
    for k, v in model.saved_encoder.state_dict().items():
        assert torch.equal(v, loaded.saved_encoder.state_dict()[k]), k
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    np.testing.assert_array_equal(model.embed(wave), loaded.embed(wave))
    assert not list(tmp_path.rglob("*.tmp"))


def test_directory_layout_is_safetensors_plus_json(tmp_path, model):
    path = model.save(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["format"] == "ghostvlad-model"
    assert config["encoder"]["pooling"] == {"name": "gvlad", "clusters": 3, "ghost_clusters": 1}


def test_mirror_override(tmp_path, model):
    assert load_model(model.save(tmp_path / "m"), mirror=False).frontend.config.mirror is False


def test_errors(tmp_path, model):
    with pytest.raises(ModelFileError, match="no such model"):
        read_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="missing config.json"):
        read_model(tmp_path / "empty")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="junk.safetensors: not a safetensors model file"):
        read_model(junk)
    pickled = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(2)}, pickled)
    with pytest.raises(ModelFileError, match="model.pt"):
        read_model(pickled)
    path = model.save(tmp_path / "m")
    (path / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="invalid JSON"):
        read_model(path)
    (path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFileError, match="not a ghostvlad model"):
        read_model(path)
    (path / "config.json").write_text(json.dumps({"format": "ghostvlad-model", "version": 3}))
    with pytest.raises(ModelFileError, match="model format version 3 is newer than this ghostvlad"):
        read_model(path)


def test_weights_that_do_not_fit_the_config(tmp_path, model):
    path = model.save(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["encoder"]["pooling"]["clusters"] = 4
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="weights do not match the config: .*pooling.assignment.bias has shape \\(4,\\), config needs \\(5,\\)"):
        load_model(path)


def test_model_file_of_an_earlier_version_loads(tmp_path, model):
    """Model files written before slots had their own parameters hold a flat encoder config (today's main
    wrote this exact dict): they load as the same model, with the same cache key."""
    path = model.save(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["encoder"] = {"backbone": "resnet34s", "width": 0.125, "pooling": "gvlad", "clusters": 3,
                         "ghost_clusters": 1, "descriptor_dim": 16, "embed_dim": 8}
    (path / "config.json").write_text(json.dumps(config))
    loaded = load_model(path)
    assert loaded.config == CONFIG and loaded.cache_key() == model.cache_key()
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    np.testing.assert_array_equal(model.embed(wave), loaded.embed(wave))
    config["encoder"] = {**config["encoder"], "pooling": "tstp", "clusters": 4, "ghost_clusters": 0}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="pooling 'tstp' does not take: clusters"):
        load_model(path)


@pytest.mark.parametrize("name", ["m", "m.safetensors"])
def test_non_finite_weights_and_failed_writes_leave_the_saved_model_as_it_was(tmp_path, model, name, monkeypatch):
    import safetensors.torch

    from ghostvlad import modelfile

    path = model.save(tmp_path / name)
    saved = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    broken = SpeakerModel(SpeakerEncoder(model.config), FrontEndConfig())
    with torch.no_grad():
        broken.saved_encoder.backbone.stem.bn.bias[0] = float("nan")
    with pytest.raises(ModelFileError, match=r"tensor 'backbone.stem.bn.bias' holds NaN or infinite values"):
        broken.save(path)

    def full_disk(state, filename, metadata=None):
        open(filename, "wb").write(b"part")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modelfile, "save_file", full_disk)
    with pytest.raises(OSError, match="cannot write the weights .*No space left on device") as info:
        model.save(path)
    assert str(path) in info.value.filename
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == saved
    with pytest.raises(OSError):
        model.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()  # no empty or half model directory
    monkeypatch.undo()
    assert torch.equal(read_model(path)[1]["backbone.stem.bn.bias"], model.saved_encoder.state_dict()["backbone.stem.bn.bias"])


@pytest.mark.parametrize("change, message", [
    ({"hop_length": 0}, r"frontend: need 0 < hop_length \(0\) <= win_length \(400\) <= n_fft \(512\)"),
    ({"win_length": 1024}, r"frontend: need 0 < hop_length \(160\) <= win_length \(1024\) <= n_fft \(512\)"),
    ({"sample_rate": 0}, r"frontend.sample_rate 0: audio is always resampled to 16000 Hz"),
    ({"eps": 2.0}, r"frontend.eps 2.0: must be in \(0, 1\)"),
])
def test_an_edited_front_end_that_cannot_run_is_refused(tmp_path, model, change, message):
    path = model.save(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["frontend"].update(change)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="m: bad model config \\(ValueError: " + message):
        load_model(path)


def test_a_band_limited_model_keeps_its_front_end_and_refuses_a_mismatch(tmp_path, model):
    torch.manual_seed(1)
    narrow = SpeakerModel(SpeakerEncoder(CONFIG, freq_bins=129), FrontEndConfig(max_freq=4000))
    path = narrow.save(tmp_path / "narrow")
    assert json.loads((path / "config.json").read_text())["frontend"]["max_freq"] == 4000
    loaded = load_model(path)
    assert loaded.frontend_config == FrontEndConfig(max_freq=4000) and loaded.saved_encoder.freq_bins == 129
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    np.testing.assert_array_equal(narrow.embed(wave), loaded.embed(wave))
    assert "max_freq" not in json.loads((model.save(tmp_path / "full") / "config.json").read_text())["frontend"]
    with pytest.raises(ValueError, match="the encoder reads 257 frequency bins, the front-end gives 129"):
        SpeakerModel(SpeakerEncoder(CONFIG), FrontEndConfig(max_freq=4000))
    config = json.loads((path / "config.json").read_text())
    del config["frontend"]["max_freq"]  # a file edited to the full band no longer fits its weights
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="narrow: weights do not match the config"):
        load_model(path)
