"""`ghostvlad eval`."""
import json
import os

from support.evaluate import corpus, model  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from ghostvlad.cli import app


def _output(result) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_cli_eval_writes_outputs_and_stores_threshold(model, corpus, tmp_path, monkeypatch):
    model_dir = model.save(tmp_path / "model")
    (corpus["root"] / "bad.wav").write_bytes(b"junk")
    corpus["trials"].write_text(corpus["trials"].read_text() + "0 bad.wav a/0.wav\n1 bad.wav a/1.wav\n")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["eval", "--model", str(model_dir), "--trials", str(corpus["trials"]), "--wav-root", str(corpus["root"]),
            "--cache", str(corpus["cache"])]
    res = runner.invoke(app, [*base, "--json", "summary.json"])
    assert res.exit_code == 0, res.output
    assert _output(res).count("bad.wav: ") == 1 and f"skipped {corpus['root'] / 'bad.wav'}: " in _output(res)
    assert "EER %" in _output(res) and "15 trials scored, 2 skipped" in _output(res)
    out = tmp_path / "eval" / "trials"
    assert sorted(os.listdir(out)) == ["det.png", "scores.txt", "summary.json"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_skipped"] == 2 and f"{100 * summary['eer']:.2f}" in _output(res)

    verify = ["verify", str(corpus["root"] / "a/0.wav"), str(corpus["root"] / "a/1.wav"), "--model", str(model_dir)]
    assert "threshold" not in _output(runner.invoke(app, verify))
    (tmp_path / "one.txt").write_text("cohort/c0.wav\n")  # relative to the list's folder
    res = runner.invoke(app, [*base, "--out", "o2", "--cohort", "one.txt", "--store-threshold"])
    assert res.exit_code == 1 and "one.txt: only 1 of 1 cohort files" in _output(res)  # fails before storing anything
    assert "threshold" not in _output(runner.invoke(app, verify))
    res = runner.invoke(app, [*base, "--out", "o2", "--store-threshold"])
    assert res.exit_code == 0 and f"stored threshold {summary['threshold']:.4f}" in _output(res)
    assert "embedded 0 files, 6 from the cache" in _output(res)
    res = runner.invoke(app, verify)
    assert res.exit_code == 0
    assert f"(threshold {summary['threshold']:.4f})" in _output(res)
    assert "same speaker" in _output(res) or "different speakers" in _output(res)


def test_cli_eval_errors(model, corpus, tmp_path):
    model_dir = model.save(tmp_path / "model")
    runner = CliRunner()
    base = ["eval", "--model", str(model_dir), "--trials", str(corpus["trials"]), "--cache", str(corpus["cache"])]
    res = runner.invoke(app, [*base, "--wav-root", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "nope: wav root is not a folder" in _output(res)
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, [*base, "--wav-root", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "all 15 trials skipped" in _output(res)
    res = runner.invoke(app, ["eval", "--model", str(model_dir), "--trials", str(tmp_path / "t.txt"),
                              "--wav-root", str(corpus["root"])])
    assert res.exit_code == 1 and "t.txt: trial list not found" in _output(res)
    (tmp_path / "taken").write_text("a file, not a folder")
    res = runner.invoke(app, [*base, "--wav-root", str(corpus["root"]), "--out", str(tmp_path / "taken")])
    assert res.exit_code == 1 and "cannot write the results: " in _output(res) and "taken" in _output(res)
    res = runner.invoke(app, [*base, "--wav-root", str(corpus["root"]), "--out", str(tmp_path / "o"),
                              "--json", str(tmp_path / "taken" / "s.json")])
    assert res.exit_code == 1 and "cannot write the results: " in _output(res)
    assert not (tmp_path / "o").exists()  # the summary file is written first: a failure leaves no half result


def test_cli_eval_mirror_override_scores_with_that_front_end(model, corpus, tmp_path, monkeypatch):
    from ghostvlad.features import FrontEndConfig
    from ghostvlad.inference import SpeakerModel
    from ghostvlad.loading import load_model

    model_dir = model.save(tmp_path / "model")  # mirror off
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["eval", "--model", str(model_dir), "--trials", str(corpus["trials"]), "--wav-root", str(corpus["root"]),
            "--cache", str(corpus["cache"])]
    assert runner.invoke(app, [*base, "--out", "plain"]).exit_code == 0
    res = runner.invoke(app, [*base, "--out", "mirrored", "--mirror"])
    assert res.exit_code == 0 and "embedded 6 files, 0 from the cache" in _output(res)  # another cache key
    mirrored = SpeakerModel(model.saved_encoder, FrontEndConfig(mirror=True))
    emb = {f: mirrored.embed(str(corpus["root"] / f)) for f in corpus["files"]}
    rows = [line.split() for line in (tmp_path / "mirrored" / "scores.txt").read_text().splitlines()]
    assert len(rows) == 15
    for score, _, a, b in rows:
        assert abs(float(score) - float(emb[a] @ emb[b])) < 1e-5
    plain = (tmp_path / "plain" / "scores.txt").read_text().split()[0]
    assert abs(float(plain) - float(rows[0][0])) > 1e-4  # the override changed the scores

    res = runner.invoke(app, [*base, "--out", "o3", "--mirror", "--store-threshold"])
    assert res.exit_code == 1
    assert "--store-threshold stores the threshold of the model as saved (mirror off)" in _output(res)
    assert load_model(model_dir).threshold is None
    res = runner.invoke(app, [*base, "--out", "o3", "--no-mirror", "--store-threshold"])  # the saved front-end: allowed
    assert res.exit_code == 0 and "stored threshold" in _output(res)
