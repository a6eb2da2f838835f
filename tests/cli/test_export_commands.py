"""`ghostvlad export`, and the CLI on exported and broken ONNX files."""
import json
import warnings

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from support.export import WAVES, min_cosine, mirrored, tiny_model  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from ghostvlad import ModelFileError, load_model
from ghostvlad.cli import app


def test_bad_onnx_files_give_one_line_errors(mirrored, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    foreign = tmp_path / "foreign.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), foreign)
    proto = onnx.load(str(mirrored[1].path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, bare)
    onnx.helper.set_model_props(proto, {"ghostvlad": "{not json"})
    garbled = tmp_path / "garbled.onnx"
    onnx.save(proto, garbled)
    meta = json.loads({p.key: p.value for p in onnx.load(str(mirrored[1].path)).metadata_props}["ghostvlad"])
    width = meta["encoder"]["embed_dim"]
    meta["encoder"]["embed_dim"] = width + 1
    onnx.helper.set_model_props(proto, {"ghostvlad": json.dumps(meta)})
    widened = tmp_path / "widened.onnx"
    onnx.save(proto, widened)
    cases = {
        tmp_path / "missing.onnx": "no such ONNX model file",
        corrupt: "not a readable ONNX model",
        foreign: "not a ghostvlad export",
        bare: "ONNX file without ghostvlad metadata",
        garbled: "bad ghostvlad metadata",
        widened: f"the graph gives {width}-d embeddings, its metadata says {width + 1}",
    }
    for path, message in cases.items():
        with pytest.raises(ModelFileError) as info:
            load_model(path)
        assert str(info.value).startswith(f"{path}: {message}") and "\n" not in str(info.value)
    res = CliRunner().invoke(app, ["verify", "a.wav", "b.wav", "--model", str(corrupt)])
    assert res.exit_code == 1
    assert " ".join(res.output.split()) == f"error: {corrupt}: not a readable ONNX model (Protobuf parsing failed.)"


def test_cli_export_then_embed_and_verify(tmp_path):
    model = tiny_model(mirror=True)
    model_dir = model.save(tmp_path / "m")
    wavs = []
    for i, w in enumerate(WAVES[:2]):
        wavs.append(str(tmp_path / f"{i}.wav"))
        sf.write(wavs[-1], w, 16000, subtype="FLOAT")
    runner = CliRunner()
    onnx_path = tmp_path / "m.onnx"
    res = runner.invoke(app, ["export", "--model", str(model_dir), "--format", "onnx", "--out", str(onnx_path)])
    assert res.exit_code == 0, res.output
    assert f"wrote {onnx_path} (onnx" in " ".join(res.output.split())
    res = runner.invoke(app, ["embed", *wavs, "--model", str(onnx_path), "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output
    data = np.load(tmp_path / "e.npz")
    assert list(data["paths"]) == wavs
    assert min_cosine(data["embeddings"], model.embed_batch(wavs)) > 0.9999
    res = runner.invoke(app, ["verify", *wavs, "--model", str(onnx_path)])
    assert res.exit_code == 0, res.output
    assert f"score {model.score(*wavs):.3f}" in res.output[:-1] and "(threshold 0.4200)" in res.output

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        res = runner.invoke(app, ["export", "-m", str(model_dir), "-f", "torchscript", "-o", str(tmp_path / "m.pt")])
        assert res.exit_code == 0, res.output
        with torch.inference_mode():
            scripted = torch.jit.load(str(tmp_path / "m.pt"))(torch.from_numpy(WAVES[0])[None], torch.tensor([len(WAVES[0])]))
        assert min_cosine(scripted.numpy(), model.embed(WAVES[0])[None]) > 0.9999
    res = runner.invoke(app, ["export", "-m", str(model_dir), "-f", "onnx", "-o", str(tmp_path / "m.bin")])
    assert res.exit_code == 1 and "must end in .onnx" in res.output
    res = runner.invoke(app, ["export", "-m", str(onnx_path), "-f", "onnx", "-o", str(tmp_path / "again.onnx")])
    assert res.exit_code == 1 and "export needs a ghostvlad model directory" in " ".join(res.output.split())
    res = runner.invoke(app, ["export", "-m", str(model_dir), "-f", "tflite", "-o", str(tmp_path / "m.tfl")])
    assert res.exit_code == 2 and "tflite" in res.output
