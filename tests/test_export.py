import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
from support.export import LENGTHS, WAVES, clip, min_cosine, mirrored, tiny_model  # noqa: F401  (fixtures)

from ghostvlad import load_model
from ghostvlad.export import OnnxSpeakerModel, export_onnx, export_torchscript
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.modelfile import FORMAT

CASES = {
    f"{pooling}-{backbone}-{'mirror' if mirror else 'plain'}-{branches}{f'-{max_freq}Hz' if max_freq else ''}":
        (pooling, backbone, mirror, branches, max_freq)
    for pooling, backbone, mirror, branches, max_freq in [
        *((p, "resnet34s", m, 1, None) for p in ("tap", "vlad", "gvlad") for m in (False, True)),
        ("gvlad", "resnet34l", False, 1, None),
        ("tstp", "resnet34s", False, 1, None),
        ("astp", "resnet34s", True, 1, None),
        ("astp", "resnet34s", False, 2, None),
        ("astp", "resnet34s", False, 2, 4000),  # a band-limited front-end (frontend.max_freq)
    ]
}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory) -> tuple[SpeakerModel, OnnxSpeakerModel]:
    model = tiny_model(*CASES[request.param])
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    return model, OnnxSpeakerModel(path)


def test_onnx_matches_pytorch_alone_and_in_mixed_batches(exported):
    model, onnx_model = exported
    reference = np.stack([model.embed(w) for w in WAVES])  # PyTorch, one clip at a time
    alone = np.stack([onnx_model.embed(w) for w in WAVES])
    batch = onnx_model.embed_waveforms(WAVES)  # one padded batch of four lengths, masked in the graph
    assert alone.dtype == np.float32 and alone.shape == (len(WAVES), 16)
    assert min_cosine(alone, reference) > 0.9999
    assert min_cosine(batch, reference) > 0.9999
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(onnx_model.path)).metadata_props}
    assert json.loads(props["ghostvlad"])["version"] == (2 if model.config.branches > 1 else 1)  # stacks: version 2


def test_three_line_onnxruntime_example(mirrored, tmp_path):
    model, onnx_model = mirrored
    path = tmp_path / "clip.wav"
    sf.write(path, WAVES[1], 16000, subtype="FLOAT")
    wave, rate = sf.read(path, dtype="float32")  # then the README's three lines
    session = ort.InferenceSession(str(onnx_model.path))
    emb = session.run(None, {"waveform": wave[None], "lengths": np.array([len(wave)], np.int64)})[0][0]
    assert rate == 16000 and float(emb @ model.embed(WAVES[1])) > 0.9999


def test_metadata_round_trips(mirrored):
    model, onnx_model = mirrored
    props = {p.key: p.value for p in onnx.load(str(onnx_model.path)).metadata_props}
    assert json.loads(props["ghostvlad"]) == {"format": FORMAT, "version": 1, **model.to_config()}
    assert onnx_model.to_config() == model.to_config()
    assert onnx_model.config == model.config and onnx_model.frontend_config == FrontEndConfig(mirror=True)
    assert (onnx_model.embed_dim, onnx_model.threshold, onnx_model.info) == (16, 0.42, {"note": "tiny"})


def test_api_matches_speaker_model(mirrored, tmp_path):
    model, onnx_model = mirrored
    paths = []
    for i, w in enumerate(WAVES[:3]):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], w, 16000, subtype="FLOAT")
    assert min_cosine(onnx_model.embed_batch(paths), model.embed_batch(paths)) > 0.9999
    assert onnx_model.score(paths[0], paths[1]) == pytest.approx(model.score(paths[0], paths[1]), abs=1e-4)
    results = {r.index: r for r in onnx_model.iter_embeddings([str(paths[0]), str(tmp_path / "missing.wav")])}
    assert np.allclose(results[0].embedding, onnx_model.embed(paths[0]), atol=1e-5) and "missing.wav" in str(results[1].error)
    with pytest.raises(ValueError, match="too short"):
        onnx_model.embed_waveforms([np.ones(100, dtype=np.float32)])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated in favour of torch.export
@pytest.mark.parametrize("backbone", ["resnet34s", "resnet34l"])
def test_torchscript_matches_pytorch(backbone, tmp_path):
    model = tiny_model(backbone=backbone, mirror=True)
    path = export_torchscript(model, tmp_path / "m.pt")
    extra = {"ghostvlad.json": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["ghostvlad.json"])["encoder"] == model.config.to_dict()
    lengths = torch.tensor(LENGTHS)
    batch = torch.zeros(len(WAVES), max(LENGTHS))
    for i, w in enumerate(WAVES):
        batch[i, : len(w)] = torch.from_numpy(w)
    with torch.inference_mode():
        emb = module(batch, lengths).numpy()
        alone = module(batch[2:3, : LENGTHS[2]], lengths[2:3]).numpy()
    reference = np.stack([model.embed(w) for w in WAVES])
    assert min_cosine(emb, reference) > 0.9999 and min_cosine(alone, reference[2:3]) > 0.9999


def test_load_model_dispatches_on_the_onnx_suffix(mirrored):
    path = mirrored[1].path
    assert isinstance(load_model(path), OnnxSpeakerModel)
    with pytest.raises(ValueError, match="mirror is fixed|mirror extension is fixed"):
        load_model(path, mirror=False)
    with pytest.raises(ValueError, match="fp32 on CPU"):
        load_model(path, precision="bf16")


def test_evaluate_and_its_cache_work_with_onnx_models(mirrored, tmp_path):
    from ghostvlad.evaluate import evaluate

    torch_model, onnx_model = mirrored
    for i in range(4):
        sf.write(tmp_path / f"{i}.wav", clip(12000 + 2000 * i, i), 16000)
    trials = tmp_path / "trials.txt"
    trials.write_text("1 0.wav 1.wav\n0 0.wav 2.wav\n1 2.wav 3.wav\n0 1.wav 3.wav\n")
    first = evaluate(onnx_model, trials, tmp_path, cache_dir=tmp_path / "cache")
    again = evaluate(onnx_model, trials, tmp_path, cache_dir=tmp_path / "cache")
    reference = evaluate(torch_model, trials, tmp_path, cache_dir=tmp_path / "cache")
    assert (first.computed, again.computed, again.cached) == (4, 0, 4)
    assert onnx_model.cache_key() != torch_model.cache_key() and reference.computed == 4
    np.testing.assert_allclose(first.scores, reference.scores, atol=1e-4)
