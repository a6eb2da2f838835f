"""`ghostvlad embed --window/--hop`."""
import numpy as np
import soundfile as sf
from support.windows import RATE, clip, model  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from ghostvlad.cli import app
from ghostvlad.windows import embed_windows


def test_cli_embed_with_windows(model, tmp_path):
    model_dir = tmp_path / "model"
    model.save(model_dir)
    files = []
    for k, seconds in enumerate((2.7, 3.4)):
        files.append(tmp_path / f"{k}.wav")
        sf.write(files[-1], clip(seconds, seed=k), RATE, subtype="FLOAT")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    out = tmp_path / "emb.npz"
    runner = CliRunner()
    result = runner.invoke(app, ["embed", *map(str, files), str(bad), "-m", str(model_dir), "-o", str(out),
                                 "--window", "2.0", "--hop", "0.5"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "wrote 7 window embeddings of 2 files" in said and "1 of 3 files failed" in said
    data = np.load(out)
    assert data["embeddings"].shape == (7, 16)
    assert data["paths"].tolist() == [str(files[0])] * 3 + [str(files[1])] * 4
    np.testing.assert_allclose(data["starts"], [0, 0.5, 1.0, 0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(data["ends"], [2.0, 2.5, 2.7, 2.0, 2.5, 3.0, 3.4])
    ref = embed_windows(model, sf.read(files[1], dtype="float32")[0], 2.0, 0.5)
    np.testing.assert_allclose(data["embeddings"][3:], ref.embeddings, atol=1e-5)
    result = runner.invoke(app, ["embed", str(files[0]), "-m", str(model_dir), "-o", str(out), "--hop", "0.5"])
    assert result.exit_code == 1 and "--hop needs --window" in result.output
    result = runner.invoke(app, ["embed", str(files[0]), "-m", str(model_dir), "-o", str(out), "--window", "-1"])
    assert result.exit_code == 1 and "window must be a positive number of seconds" in " ".join(result.output.split())
