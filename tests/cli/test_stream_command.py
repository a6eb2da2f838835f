"""``ghostvlad stream``: a file (fast) or PCM16 on stdin, with and without a gallery; bad input in one line."""
from pathlib import Path

import numpy as np
import soundfile as sf
from support.audio import varied_audio
from support.models import calibrated_tiny_model
from typer.testing import CliRunner

from ghostvlad.cli import app
from ghostvlad.features import FrontEndConfig
from ghostvlad.gallery import Gallery
from ghostvlad.inference import SpeakerModel
from ghostvlad.loading import load_model

runner = CliRunner()
RNG = np.random.default_rng(3)


def setup(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A saved tiny model (mirror on) and three recordings of 'speakers'."""
    waves = [varied_audio(RNG, 2.0) for _ in range(3)]
    path = calibrated_tiny_model(waves, mirror=True).save(tmp_path / "model")
    files = []
    for i, w in enumerate(waves):
        files.append(tmp_path / f"s{i}.wav")
        sf.write(files[-1], w, 16000, subtype="FLOAT")
    return path, files


def lines(output: str) -> list[str]:
    return [line.split() for line in output.strip().splitlines()]


def test_stream_a_file_prints_running_embeddings_equal_to_offline(tmp_path):
    model, files = setup(tmp_path)
    res = runner.invoke(app, ["stream", str(files[0]), "-m", str(model), "--fast", "--update", "0.3"])
    assert res.exit_code == 0, res.output
    rows = lines(res.output)
    assert [r[0] for r in rows] == ["0.30", "0.60", "0.90", "1.20", "1.50", "1.80", "2.00"]
    assert rows[0][2] == "(listening)" and rows[1][2] == "embedded"  # 0.3 s < min_duration 0.5 s
    assert all(0.5 < float(r[-1]) <= 1.0001 for r in rows[2:])  # cosine to the previous update


def test_stream_with_a_gallery_names_the_best_match(tmp_path):
    model, files = setup(tmp_path)
    m = load_model(model)
    with Gallery(tmp_path / "g.db", m) as gallery:
        gallery.enroll("alice", [str(files[0])])
        gallery.enroll("bob", [str(files[1])])
    res = runner.invoke(app, ["stream", str(files[1]), "-m", str(model), "--db", str(tmp_path / "g.db"), "--fast",
                              "--threshold", "0.5"])
    assert res.exit_code == 0, res.output
    last = lines(res.output)[-1]
    assert last[0] == "2.00" and last[2] == "bob" and last[4] == "accepted"
    offline = SpeakerModel(m.saved_encoder, FrontEndConfig(mirror=False)).embed(str(files[1]))
    with Gallery(tmp_path / "g.db", m) as gallery:
        expected = gallery.identify_embedding(offline, 1)[0].score
    assert abs(float(last[3]) - expected) < 1e-4


def test_stream_reads_pcm16_from_stdin(tmp_path):
    model, files = setup(tmp_path)
    pcm = (sf.read(files[2], dtype="float32")[0] * 32767).astype("<i2")
    res = runner.invoke(app, ["stream", "-", "-m", str(model), "--update", "1"], input=pcm.tobytes())
    assert res.exit_code == 0, res.output
    assert [r[0] for r in lines(res.output)] == ["1.00", "2.00"]
    res = runner.invoke(app, ["stream", "-", "-m", str(model)], input=pcm.tobytes()[:16001])
    assert res.exit_code == 1
    assert "stdin: odd number of bytes" in res.output and "Traceback" not in res.output


def test_stream_bad_input_is_one_line(tmp_path):
    model, files = setup(tmp_path)
    res = runner.invoke(app, ["stream", str(tmp_path / "missing.wav"), "-m", str(model), "--fast"])
    assert res.exit_code == 1 and "missing.wav: file not found" in res.output
    res = runner.invoke(app, ["stream", "-", "-m", str(model)], input=np.zeros(16000, "<i2").tobytes())
    assert res.exit_code == 1 and "stdin: no embedding: less than 0.5 s of non-silent audio" in res.output
    res = runner.invoke(app, ["stream", str(files[0]), "-m", str(model), "--db", str(tmp_path / "none.db"), "--fast"])
    assert res.exit_code == 1 and "none.db" in res.output and len(res.output.strip().splitlines()) == 1
