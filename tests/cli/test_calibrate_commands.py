"""`ghostvlad calibrate`, then `verify` reporting the calibrated operating point."""
import json

import numpy as np
import pytest
import soundfile as sf
from support.audio import tone
from support.calibration import tiny_model
from typer.testing import CliRunner

import ghostvlad.cli.calibrate  # noqa: F401  (registers calibrate)
from ghostvlad.cli import app
from ghostvlad.scoring.calibration import fit_calibration


def _output(result) -> str:
    return " ".join(result.output.split())


def test_cli_calibrate_then_verify_reports_the_operating_point(tmp_path):
    model = tiny_model()
    model_dir = model.save(tmp_path / "model")
    rng = np.random.default_rng(1)
    files = []
    for k in range(8):
        files.append(f"{k}.wav")
        sf.write(tmp_path / files[-1], tone(rng, 150 + 90 * k, 1.0), 16000)
    pairs = [(a, b) for i, a in enumerate(files) for b in files[i + 1:]]
    emb = {f: model.embed(tmp_path / f) for f in files}
    order = np.argsort([-float(emb[a] @ emb[b]) for a, b in pairs])
    labels = np.zeros(len(pairs), int)
    labels[order[[0, 1, 2, 3, 5, 6, 8, 11, 15]]] = 1  # mostly the highest scores: overlapping, not separable
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"{y} {a} {b}\n" for y, (a, b) in zip(labels, pairs)))
    runner = CliRunner()
    res = runner.invoke(app, ["calibrate", "--model", str(model_dir), "--trials", str(trials), "--wav-root",
                              str(tmp_path), "--far", "0.05", "--far", "0.1", "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    assert f"fitted on {len(pairs)} trials at prior 0.5" in _output(res) and f"stored the calibration in {model_dir}" in _output(res)
    stored = json.loads((model_dir / "config.json").read_text())["calibration"]
    scores = np.array([float(emb[a] @ emb[b]) for a, b in pairs])
    expected = fit_calibration(scores, labels, fars=(0.05, 0.1))
    assert stored["a"] == pytest.approx(expected.a, rel=1e-4) and stored["b"] == pytest.approx(expected.b, rel=1e-4)
    assert stored["thresholds"] == pytest.approx(expected.thresholds, rel=1e-5)
    assert set(stored["thresholds"]) == {"eer", "far@0.05", "far@0.1"}

    a, b = pairs[int(order[0])]
    score = float(emb[a] @ emb[b])
    llr = stored["a"] * score + stored["b"]
    verify = ["verify", str(tmp_path / a), str(tmp_path / b), "--model", str(model_dir)]
    res = runner.invoke(app, [*verify, "--operating-point", "far@0.1", "--prior", "0.2"])
    assert res.exit_code == 0, res.output
    t = stored["thresholds"]["far@0.1"]
    p = 1 / (1 + np.exp(-(llr + np.log(0.2 / 0.8))))
    verdict = "same speaker" if score >= t else "different speakers"
    assert _output(res) == (f"score {score:.4f} {verdict} (operating point far@0.1, threshold {t:.4f}; "
                            f"LLR {llr:.2f}, P(same)={p:.3f} at prior 0.2)")
    res = runner.invoke(app, verify)
    assert f"(operating point eer, threshold {stored['thresholds']['eer']:.4f}; LLR {llr:.2f}" in _output(res)
    res = runner.invoke(app, [*verify, "--operating-point", "far@0.5"])
    assert res.exit_code == 1
    assert _output(res) == (f"error: {model_dir}: unknown operating point 'far@0.5'; this model has: eer, far@0.05, "
                            "far@0.1, bayes")


def test_cli_calibrate_errors(tmp_path):
    model = tiny_model()
    model_dir = model.save(tmp_path / "model")
    rng = np.random.default_rng(1)
    for k in range(3):
        sf.write(tmp_path / f"{k}.wav", tone(rng, 150 + 400 * k, 1.0), 16000)
    trials = tmp_path / "trials.txt"
    trials.write_text("1 0.wav 0.wav\n0 0.wav 1.wav\n0 1.wav 2.wav\n")  # a self-trial scores 1: separable
    res = CliRunner().invoke(app, ["calibrate", "--model", str(model_dir), "--trials", str(trials), "--wav-root",
                                   str(tmp_path), "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 1 and _output(res).startswith(f"error: {trials}: the 3 scores separate targets")
    assert json.loads((model_dir / "config.json").read_text())["calibration"] is None  # nothing stored
