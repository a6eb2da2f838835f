"""`ghostvlad train` on bad config values and a full disk, and the OpenMP wait policy it sets."""
import errno
import os
import subprocess
import sys

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


SPY = """
import os, sys
class Spy:  # what OMP_WAIT_POLICY is when torch (and its OpenMP runtime) is first imported
    seen = False
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not self.seen:
            self.seen = True
            print("at torch import:", os.environ.get("OMP_WAIT_POLICY"), flush=True)
sys.meta_path.insert(0, Spy())
from ghostvlad.cli import main
sys.argv = ["ghostvlad", *sys.argv[1:]]
main()
"""


def test_cli_training_lets_waiting_threads_sleep_unless_told_otherwise(corpus, tmp_path):  # noqa: F811
    manifest, config = corpus
    args = ["train", "--config", str(config), "--data", str(manifest), "--max-steps", "1"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run_env = env if given is None else {**env, "OMP_WAIT_POLICY": given}
        res = subprocess.run([sys.executable, "-c", SPY, *args, "--out", str(tmp_path / expected)], env=run_env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[0] == f"at torch import: {expected}"
        assert (tmp_path / expected / CHECKPOINT_NAME).exists()
