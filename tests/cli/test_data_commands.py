"""`ghostvlad prepare` and `ghostvlad synth`."""
import re

import numpy as np
from support.manifest import GOOD, tree  # noqa: F401  (fixtures)
from typer.testing import CliRunner

import ghostvlad.cli.data  # noqa: F401  (registers the data commands)
from ghostvlad.cli import app
from ghostvlad.data.manifest import AUDIO_SUFFIXES, bad_report_path, read_manifest

runner = CliRunner(env={"COLUMNS": "1000"})  # no line wrapping by rich


def test_cli_prepare_scan_with_shards(tree, tmp_path):
    root, bad = tree
    out = tmp_path / "data" / "vox2_dev.csv"
    result = runner.invoke(app, ["prepare", "--root", str(root), "--out", str(out), "--shards",
                                 str(tmp_path / "shards"), "--shard-size", "4", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert f"{len(GOOD)} utterances, 3 speakers" in result.output
    assert "3 bad file(s) left out" in result.output and "vox2_dev.bad.txt" in result.output
    assert len(read_manifest(out)) == len(GOOD)
    assert len(bad_report_path(out).read_text().splitlines()) == 3
    assert "wrote 2 shard(s)" in result.output
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["index.json", "shard-000000.tar",
                                                                       "shard-000001.tar"]


def test_cli_prepare_original_list(tree, tmp_path):
    root, _ = tree
    lst = tmp_path / "list.txt"
    lst.write_text("id00012/vidA/00001.wav 1\nid00003/x-Y_z/00007.wav 0\nid00003/x-Y_z/missing.wav 0\n")
    out = tmp_path / "m.csv"
    result = runner.invoke(app, ["prepare", "--root", str(root), "--list", str(lst), "--out", str(out),
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    m = read_manifest(out)
    assert m.paths == [str(root / "id00012/vidA/00001.wav"), str(root / "id00003/x-Y_z/00007.wav")]
    assert m.speakers == ["id00012", "id00003"]
    assert bad_report_path(out).read_text() == f"{root / 'id00003/x-Y_z/missing.wav'}: file not found\n"


def test_cli_prepare_help_names_every_collected_suffix():
    result = runner.invoke(app, ["prepare", "--help"])
    assert result.exit_code == 0, result.output
    named = set(re.findall(r"\w+", result.output))
    assert {suffix[1:] for suffix in AUDIO_SUFFIXES} <= named, result.output


def test_cli_prepare_errors(tmp_path):
    result = runner.invoke(app, ["prepare", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 1 and "nope: not a directory" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["prepare", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 1 and "no audio files found" in result.output
    lst = tmp_path / "l.txt"
    lst.write_text("id1/v/1.wav zero\n")
    result = runner.invoke(app, ["prepare", "--root", str(tmp_path), "--list", str(lst), "--out", "m.csv"])
    assert result.exit_code == 1 and "l.txt:1: label 'zero' is not an integer" in result.output
    (tmp_path / "empty" / "s" / "v").mkdir(parents=True)
    (tmp_path / "empty" / "s" / "v" / "1.wav").write_text("junk")
    result = runner.invoke(app, ["prepare", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "m.csv"),
                                 "--workers", "1"])
    assert result.exit_code == 1 and "none of the 1 files could be decoded" in result.output
    lst.write_text("a file")
    result = runner.invoke(app, ["prepare", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "s.csv"),
                                 "--shards", str(lst)])
    assert result.exit_code == 1 and "l.txt: exists and is not a folder" in " ".join(result.output.split())
    assert not (tmp_path / "s.csv").exists()  # refused before decoding anything


def test_cli_synth_then_prepare(tmp_path):
    corpus = tmp_path / "synth"
    args = ["synth", "--out", str(corpus), "--speakers", "3", "--test-speakers", "2", "--sessions", "2",
            "--utterances", "1", "--min-duration", "1.0", "--max-duration", "1.5", "--trials", "2", "--seed", "3",
            "--workers", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "6 utterances (6 synthesised now) of 3 speakers (1 dev, 2 test)" in result.output
    assert "2 trials (1 target)" in result.output
    assert len((corpus / "trials.txt").read_text().splitlines()) == 2
    out = tmp_path / "test.csv"
    result = runner.invoke(app, ["prepare", "--root", str(corpus / "test"), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    m = read_manifest(out)
    assert m.speaker_ids() == ["id00002", "id00003"] and len(m) == 4
    assert np.all((m.durations >= 1.0) & (m.durations <= 1.5))
    result = runner.invoke(app, [*args[:-4], "--seed", "4"])  # other settings into the same directory
    assert result.exit_code == 1 and "made with other settings" in result.output
