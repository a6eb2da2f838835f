"""`ghostvlad train` on bad config values and a full disk."""
import errno
import os

import torch
from support.training import corpus  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from ghostvlad.cli import app
from ghostvlad.train.checkpoint import CHECKPOINT_NAME


def test_cli_checkpoint_on_a_full_disk_and_bad_config_values(corpus, tmp_path, monkeypatch):  # noqa: F811
    manifest, config = corpus
    runner = CliRunner()
    base = ["train", "--config", str(config), "--data", str(manifest)]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "r1"), "train.epochs=abc"])
    assert res.exit_code == 1 and "train.epochs: expected an integer, got 'abc'" in res.output
    assert "Traceback" not in res.output

    def full_disk(state, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "r2"
    res = runner.invoke(app, [*base, "--out", str(run), "--max-steps", "1"])
    assert res.exit_code == 1, res.output
    assert f"{run / CHECKPOINT_NAME}: No space left on device" in " ".join(res.output.split())
    assert not list(run.glob(".*.tmp")) and not (run / CHECKPOINT_NAME).exists()


def test_cli_data_set_and_augmentation_setup_errors_are_one_line(corpus, tmp_path):  # noqa: F811
    manifest, config = corpus
    empty = tmp_path / "musan"
    empty.mkdir()
    base = ["train", "--config", str(config), "--data", str(manifest), "--out", str(tmp_path / "r")]
    for override, message in (("data.speeds=[0.9, 0.9]", "speeds [0.9, 0.9]: give distinct factors"),
                              (f"data.musan={empty}", f"{empty}: no audio under noise/, music/ or speech/")):
        res = CliRunner().invoke(app, [*base, override])
        assert res.exit_code == 1, res.output
        assert message in " ".join(res.output.split()) and "Traceback" not in res.output
