"""Training faults: resumes that log as one run, the run-folder lock, impossible settings, full disks."""
import csv
import os

import pytest
from support.training import corpus  # noqa: F401  (fixtures)

from ghostvlad.schema import ConfigError
from ghostvlad.train.checkpoint import CHECKPOINT_NAME, CheckpointError
from ghostvlad.train.config import load_config
from ghostvlad.train.build import TrainError
from ghostvlad.train.loop import Trainer
from ghostvlad.train.run_folder import METRICS_NAME

LOGGED = ("epoch", "step", "global_step", "loss", "acc", "lr", "valid_eer")  # all but timings


def rows(run):
    with (run / METRICS_NAME).open(newline="") as fh:
        return [tuple(r[k] for k in LOGGED) for r in csv.DictReader(fh)]


@pytest.mark.slow
def test_metrics_after_stops_and_a_kill_read_as_one_uninterrupted_run(corpus, tmp_path):  # noqa: F811
    manifest, config = corpus
    cfg = load_config(config)  # 4 epochs of 5 steps, a checkpoint every step
    Trainer(cfg, manifest, tmp_path / "full").run()
    run = tmp_path / "split"
    Trainer(cfg, manifest, run).run(max_steps=5)  # stops exactly at the end of epoch 0
    Trainer(cfg, manifest, run).run(max_steps=8)
    assert Trainer(cfg, manifest, run).run(max_steps=8).global_step == 8  # a stop is a stop
    # a run killed after logging steps 9-10 but before their checkpoint: those rows are logged again on resume
    full = (tmp_path / "full" / METRICS_NAME).read_text().splitlines()
    extra = [line for line in full if line.split(",")[3] in ("9", "10") and line.split(",")[2]]
    with (run / METRICS_NAME).open("a") as fh:
        fh.write("".join(line + "\n" for line in extra))
    Trainer(cfg, manifest, run).run()
    assert rows(run) == rows(tmp_path / "full")
    epoch_losses = [r[3] for r in rows(run) if not r[1]]
    assert len(epoch_losses) == 4 and "inf" not in epoch_losses


def test_a_second_trainer_on_the_same_run_folder_fails_at_once_naming_the_holder(corpus, tmp_path):  # noqa: F811
    manifest, config = corpus
    first = Trainer(load_config(config), manifest, tmp_path / "run")
    second = Trainer(load_config(config), manifest, tmp_path / "run")
    with first.folder.lock():
        with pytest.raises(TrainError, match=f"run folder in use by another training process \\(pid {os.getpid()}\\)"):
            second.run(max_steps=1)
        assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()
    assert second.run(max_steps=1).global_step == 1  # released with the first


def test_impossible_settings_are_refused_before_training(corpus, tmp_path):  # noqa: F811
    manifest, config = corpus
    with pytest.raises(TrainError, match="train.batch_size=1000 is larger than the 16 utterances"):
        Trainer(load_config(config, ["train.batch_size=1000"]), manifest, tmp_path / "a")
    with pytest.raises(ConfigError, match="train.checkpoint_every=0: must be >= 1"):  # before any run folder
        Trainer(load_config(config, ["train.checkpoint_every=0"]), manifest, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainError, match="file: exists and is not a folder"):
        Trainer(load_config(config), manifest, tmp_path / "file")


@pytest.mark.parametrize("content", [b"", b"\x80\x02}q\x00.", b"PK\x03\x04"])
def test_empty_or_foreign_checkpoint_is_one_line(corpus, tmp_path, content):  # noqa: F811
    manifest, config = corpus
    run = tmp_path / "run"
    Trainer(load_config(config), manifest, run).run(max_steps=1)
    (run / CHECKPOINT_NAME).write_bytes(content)
    with pytest.raises(CheckpointError, match="checkpoint.pt: (unreadable checkpoint|not a checkpoint)") as info:
        Trainer(load_config(config), manifest, run).run()
    assert "\n" not in str(info.value)
