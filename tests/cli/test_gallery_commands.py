"""`ghostvlad enroll`, `identify` and `gallery`, and the CLI on foreign or mismatched galleries."""
import os
import sqlite3

import numpy as np
import pytest
from support.gallery import clips, model, tiny_model  # noqa: F401  (fixtures)
from typer.testing import CliRunner

import ghostvlad.cli.gallery  # noqa: F401  (registers enroll, identify, gallery)
from ghostvlad.cli import app
from ghostvlad.evaluate import model_key
from ghostvlad.features import FrontEndConfig
from ghostvlad.gallery import APPLICATION_ID, Gallery, GalleryError
from ghostvlad.inference import SpeakerModel


def _output(result) -> str:
    return " ".join(result.output.split())


def test_other_model_is_refused_and_nothing_changes(model, clips, tmp_path):
    db = tmp_path / "g.db"
    with Gallery(db, model) as gallery:
        gallery.enroll("alice", clips["alice"][:2])
    before = (db.read_bytes(), os.stat(db).st_mtime_ns)
    other = tiny_model(seed=1)
    with pytest.raises(GalleryError) as info:
        Gallery(db, other)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{db}: gallery was enrolled with model ")
    assert model_key(model)[:12] in message and model_key(other)[:12] in message
    other.save(tmp_path / "other")
    res = CliRunner().invoke(app, ["enroll", "bob", str(clips["bob"][0]), "--model", str(tmp_path / "other"),
                                   "--db", str(db)])
    assert res.exit_code == 1 and "gallery was enrolled with model" in _output(res)
    assert (db.read_bytes(), os.stat(db).st_mtime_ns) == before


@pytest.mark.parametrize("kind", ["sqlite", "text", "newer"])
def test_foreign_files_are_refused_unchanged(model, clips, tmp_path, kind):
    path = tmp_path / "foreign.db"
    if kind == "text":
        path.write_text("name,score\nalice,1\n" * 50)
        reason = "not an SQLite database"
    else:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('keep me')")
        if kind == "newer":
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute("PRAGMA user_version = 99")
        db.commit()
        db.close()
        reason = "an SQLite database of another application" if kind == "sqlite" else "gallery schema 99 is newer"
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    for open_it in (lambda: Gallery(path), lambda: Gallery(path, model)):
        with pytest.raises(GalleryError, match=reason) as info:
            open_it()
        assert "\n" not in str(info.value) and str(info.value).startswith(f"{path}: ")
    runner = CliRunner()
    for args in (["gallery", "list", "--db", str(path)],
                 ["enroll", "alice", str(clips["alice"][0]), "--model", str(model.save(tmp_path / "m")), "--db", str(path)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1 and _output(res) == f"error: {path}: not a ghostvlad gallery ({reason})" or (
            kind == "newer" and _output(res) == f"error: {path}: {reason} than this ghostvlad supports")
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.db", "m", "wav"]  # no -wal / -shm left


def test_cli_enroll_identify_list_remove(model, clips, tmp_path):
    model_dir = model.save(tmp_path / "model")
    db = tmp_path / "speakers.db"
    runner = CliRunner()
    base = ["--model", str(model_dir), "--db", str(db)]
    for name, paths in clips.items():
        res = runner.invoke(app, ["enroll", name, *map(str, paths[:2]), *base])
        assert res.exit_code == 0, res.output
    assert "enrolled 2 recordings for dave (2 in all); " in _output(res) and "holds 4 speakers" in _output(res)
    bad = clips["bob"][0].parent / "bad.wav"
    res = runner.invoke(app, ["enroll", "bob", str(bad), str(clips["bob"][2]), *base])
    assert res.exit_code == 1 and f"{bad}: " in _output(res) and "nothing enrolled" in _output(res)
    res = runner.invoke(app, ["enroll", "bob", str(bad), str(clips["bob"][2]), *base, "--skip-bad"])
    assert res.exit_code == 0 and f"skipped {bad}: " in _output(res) and "enrolled 1 recording for bob (3 in all)" in _output(res)

    res = runner.invoke(app, ["identify", str(clips["carol"][2]), *base, "--top", "2"])
    assert res.exit_code == 0, res.output
    assert "best match carol" in _output(res) and "no threshold known" in _output(res)
    res = runner.invoke(app, ["identify", str(clips["carol"][2]), *base, "--threshold", "0.5"])
    assert "identified: carol (threshold 0.5000)" in _output(res)
    res = runner.invoke(app, ["identify", str(clips["carol"][2]), *base, "--threshold", "1.01"])
    assert "unknown speaker: best match carol does not pass (threshold 1.0100)" in _output(res)
    res = runner.invoke(app, ["identify", str(clips["carol"][2]), *base, "--operating-point", "eer"])
    assert res.exit_code == 1 and "needs a calibrated model" in _output(res)
    res = runner.invoke(app, ["identify", str(clips["carol"][0].parent / "silent.wav"), *base])
    assert res.exit_code == 1 and "silent.wav: silent" in _output(res)

    res = runner.invoke(app, ["gallery", "list", "--db", str(db)])
    assert res.exit_code == 0
    lines = res.output.strip().splitlines()
    assert [ln.split()[:2] for ln in lines[1:5]] == [["alice", "2"], ["bob", "3"], ["carol", "2"], ["dave", "2"]]
    assert lines[-1].startswith(f"4 speakers, 9 recordings; model {model_key(model)[:12]} (resnet34s gvlad, 16-d, fp32)")
    res = runner.invoke(app, ["gallery", "remove", "bob", "--db", str(db)])
    assert res.exit_code == 0 and f"removed bob (3 recordings) from {db}" in _output(res)
    res = runner.invoke(app, ["gallery", "remove", "bob", "--db", str(db)])
    assert res.exit_code == 1 and "no speaker named 'bob'" in _output(res)
    res = runner.invoke(app, ["identify", str(clips["alice"][2]), "--model", str(model_dir), "--db", str(tmp_path / "x.db")])
    assert res.exit_code == 1 and "x.db: no such gallery" in _output(res) and not (tmp_path / "x.db").exists()


def test_cli_identify_reports_the_calibrated_decision(model, clips, tmp_path):
    calibrated = SpeakerModel(model.saved_encoder, FrontEndConfig(),
                              calibration={"a": 20.0, "b": -18.0, "prior": 0.5, "thresholds": {"eer": 0.9, "far@0.01": 0.95}})
    model_dir = calibrated.save(tmp_path / "model")
    db = tmp_path / "speakers.db"
    runner = CliRunner()
    for name, paths in clips.items():
        assert runner.invoke(app, ["enroll", name, *map(str, paths[:2]), "--model", str(model_dir), "--db", str(db)]).exit_code == 0
    with Gallery(db, model) as gallery:  # same weights: same model key, so the gallery accepts it
        score = gallery.identify(clips["alice"][2], top=1)[0].score
    llr = 20 * score - 18
    res = runner.invoke(app, ["identify", str(clips["alice"][2]), "--model", str(model_dir), "--db", str(db),
                              "--operating-point", "far@0.01", "--prior", "0.1"])
    assert res.exit_code == 0, res.output
    p = 1 / (1 + np.exp(-(llr + np.log(0.1 / 0.9))))
    verdict = "identified: alice" if score >= 0.95 else "unknown speaker: best match alice does not pass"
    assert (f"{verdict} (operating point far@0.01, threshold 0.9500; LLR {llr:.2f}, P(same)={p:.3f} at prior 0.1)"
            in _output(res))
