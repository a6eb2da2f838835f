"""`ghostvlad diarize`."""
import soundfile as sf
from pyannote.database.util import load_rttm
from support.diarize import RATE, conversation, der, model  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from ghostvlad.cli import app


def test_cli_diarize_end_to_end(model, conversation, tmp_path):
    wave, reference = conversation
    audio = tmp_path / "conv.wav"
    sf.write(audio, wave, RATE, subtype="FLOAT")
    model.save(tmp_path / "model")
    runner = CliRunner()
    rttm = tmp_path / "conv.rttm"
    result = runner.invoke(app, ["diarize", str(audio), "-m", str(tmp_path / "model"), "--out", str(rttm)])
    assert result.exit_code == 0, result.output
    assert "3 speaker(s) (estimated with the eigengap)" in " ".join(result.output.split())
    hypothesis = load_rttm(rttm)["conv"]
    assert der(reference, hypothesis, len(wave) / RATE) < 0.05
    printed = runner.invoke(app, ["diarize", str(audio), "-m", str(tmp_path / "model"), "--speakers", "3"])
    assert printed.exit_code == 0 and printed.output.splitlines()[0].startswith("SPEAKER conv 1 0.000 ")
    lenient = runner.invoke(app, ["diarize", str(audio), "-m", str(tmp_path / "model"), "--out", str(rttm),
                                  "--threshold", "0.5"])
    assert lenient.exit_code == 0
    assert "1 speaker(s) (estimated with threshold 0.500)" in " ".join(lenient.output.split())
    missing = runner.invoke(app, ["diarize", str(tmp_path / "nope.wav"), "-m", str(tmp_path / "model")])
    assert missing.exit_code == 1 and "nope.wav: file not found" in " ".join(missing.output.split())
