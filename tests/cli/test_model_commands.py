"""The model commands through the CLI: embed (bad files, exit status), convert-keras, ensemble, info, verify."""
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from support.keras import write_keras_h5
from typer.testing import CliRunner

from ghostvlad.cli import app
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.loading import load_model
from ghostvlad.models import EncoderConfig, SpeakerEncoder
from ghostvlad.registry import Component

runner = CliRunner()


def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    enc = SpeakerEncoder(EncoderConfig(width=0.125, clusters=4, ghost_clusters=2, descriptor_dim=16, embed_dim=12))
    return SpeakerModel(enc, FrontEndConfig()).save(tmp_path / "model")


def clips(tmp_path: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(str(tmp_path / f"c{i}.wav"))
        sf.write(paths[-1], rng.normal(0, 0.1, 12000 + 3000 * i).astype(np.float32), 16000)
    return paths


def test_embed_reports_bad_files_and_keeps_the_rest(tmp_path):
    good = clips(tmp_path, 2)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    missing = str(tmp_path / "missing.wav")
    out = tmp_path / "emb.npz"
    res = runner.invoke(app, ["embed", good[0], missing, str(corrupt), good[1], "-m", str(model_dir(tmp_path)),
                              "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "missing.wav" in res.output and "corrupt.wav" in res.output
    assert "2 of 4 files failed" in res.output
    data = np.load(out)
    assert list(data["paths"]) == good and data["embeddings"].shape == (2, 12)
    np.testing.assert_allclose(data["embeddings"][1], load_model(tmp_path / "model").embed(good[1]), atol=1e-5)


def test_embed_fails_when_nothing_could_be_embedded(tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text(f"{tmp_path / 'a.wav'}\n{tmp_path / 'b.wav'}\n")
    res = runner.invoke(app, ["embed", "--list", str(listing), "-m", str(model_dir(tmp_path)), "-o",
                              str(tmp_path / "e.npz")])
    assert res.exit_code != 0
    assert "none of the 2 files could be embedded" in res.output
    assert not (tmp_path / "e.npz").exists()


def test_convert_keras_then_info_and_verify(tmp_path):
    h5 = tmp_path / "weights.h5"
    write_keras_h5(h5, backbone="resnet34s", width=0.125, pooling="gvlad", clusters=3, ghost_clusters=1,
                   descriptor_dim=8, embed_dim=8)
    out = tmp_path / "converted"
    res = runner.invoke(app, ["convert-keras", str(h5), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "skipped" not in res.output
    model = load_model(out)
    assert model.config.pooling == Component("gvlad", {"clusters": 3, "ghost_clusters": 1})
    assert model.frontend_config.mirror  # the original's test-time extension is on for converted models
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and '"clusters": 3' in info.output
    a, b = clips(tmp_path, 2)
    res = runner.invoke(app, ["verify", a, b, "--model", str(out)])
    assert res.exit_code == 0 and res.output.startswith("score ")


def test_convert_keras_training_checkpoint_notes_the_skipped_classifier(tmp_path):
    h5 = tmp_path / "checkpoint.h5"  # a checkpoint of the original training code: the classifier is in it
    write_keras_h5(h5, backbone="resnet34s", width=0.125, pooling="gvlad", clusters=3, ghost_clusters=1,
                   descriptor_dim=8, embed_dim=8, layout="model_weights", with_prediction=True)
    res = runner.invoke(app, ["convert-keras", str(h5), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "(skipped: prediction)" in " ".join(res.output.split())
    assert load_model(tmp_path / "m").config.flat()["clusters"] == 3


def test_convert_keras_mismatch_names_the_layer(tmp_path):
    h5 = tmp_path / "weights.h5"
    write_keras_h5(h5, backbone="resnet34s", width=0.125, pooling="gvlad", clusters=3, ghost_clusters=1,
                   descriptor_dim=8, embed_dim=8)
    res = runner.invoke(app, ["convert-keras", str(h5), "--out", str(tmp_path / "m"), "--clusters", "8"])
    assert res.exit_code != 0
    assert "gvlad_center_assignment" in res.output
    assert not (tmp_path / "m").exists()


def test_ensemble_stacks_models_whose_scores_average(tmp_path):
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        enc = SpeakerEncoder(EncoderConfig(width=0.125, pooling="tstp", descriptor_dim=8, embed_dim=12))
        members.append(SpeakerModel(enc, FrontEndConfig(), threshold=0.5).save(tmp_path / f"m{seed}"))
    result = runner.invoke(app, ["ensemble", *map(str, members), "-o", str(tmp_path / "both")])
    assert result.exit_code == 0, result.output
    assert "2 models as 2 branches, 24-d embeddings" in result.output
    both, singles = load_model(tmp_path / "both"), [load_model(m) for m in members]
    assert both.threshold is None and both.config.branches == 2 and len(both.info["ensemble"]) == 2
    a, b = clips(tmp_path, 2)
    np.testing.assert_allclose(both.score(a, b), np.mean([m.score(a, b) for m in singles]), atol=1e-5)
    info = runner.invoke(app, ["info", str(tmp_path / "both")])
    assert '"branches": 2' in info.output and '"parameters"' in info.output
    torch.manual_seed(0)
    SpeakerModel(SpeakerEncoder(EncoderConfig(width=0.125, pooling="tap", descriptor_dim=8, embed_dim=12)),
                 FrontEndConfig()).save(tmp_path / "tap")
    weights = members[0] / "model.safetensors"
    before = weights.read_bytes()
    for args, out, message in [
        ([members[0], tmp_path / "tap"], tmp_path / "bad", "ensemble: stack: network 2 differs from network 1"),
        ([members[0]], tmp_path / "bad", "ensemble: give two or more PyTorch models"),
        ([members[0], members[1]], members[1], "would overwrite or contain the input model"),
        ([members[0], members[1]], weights, "would overwrite or contain the input model"),  # a file inside an input
        ([members[0], members[1], members[0]], tmp_path / "bad", "given twice"),
    ]:
        result = runner.invoke(app, ["ensemble", *map(str, args), "-o", str(out)])
        assert result.exit_code != 0 and message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    assert weights.read_bytes() == before and not (tmp_path / "bad").exists()


def test_info_components_lists_every_slot_with_parameters_and_defaults():
    res = runner.invoke(app, ["info", "--components"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    slots = [line.split(":")[0] for line in lines if not line.startswith(" ")]
    assert slots == ["backbone", "pooling", "head", "optimiser", "schedule", "precision", "vlad_init", "sampler",
                     "augmentation"]
    choice = {line.split()[0]: line for line in lines if line.startswith("  ")}
    assert choice["gvlad"].endswith("[clusters=8, ghost_clusters=2]") and choice["vlad"].endswith("[clusters=8]")
    assert choice["aamsoftmax"].endswith("[margin=0.2, scale=30.0]") and "[" not in choice["softmax"]
    assert choice["sgd"].endswith("[momentum=0.9]") and choice["resnet34s"].endswith("[width=1.0]")
    assert {"tap", "tstp", "astp", "fp16", "kmeans", "orthogonal", "codec", "cosine", "sessions"} <= set(choice)
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 1 and "give a model path, or --components" in res.output
