"""Training runs end to end on a tiny model: resume after SIGKILL is exact, DDP runs on CPU (gloo)."""
import copy
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from support.training import corpus  # noqa: F401  (fixtures)

from ghostvlad import load_model
from ghostvlad.evaluate import evaluate
from ghostvlad.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ghostvlad.train.config import load_config
from ghostvlad.data.dataset import read_bad_files
from ghostvlad.schema import ConfigError
from ghostvlad.train.build import TrainError, first_crops
from ghostvlad.train import loop
from ghostvlad.train.loop import Trainer
from ghostvlad.train.run_folder import BAD_FILES_NAME
from ghostvlad.train.vlad_init import KMEANS_CROPS


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT_NAME)["model"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ghostvlad", "train", *args]


def test_stop_and_resume_equals_uninterrupted(corpus, tmp_path):
    manifest, config = corpus
    cfg = load_config(config)
    Trainer(cfg, manifest, tmp_path / "full").run()
    Trainer(cfg, manifest, tmp_path / "split").run(max_steps=7)
    assert load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)["progress"]["global_step"] == 7
    state = Trainer(cfg, manifest, tmp_path / "split").run()
    assert state.global_step == 20 and state.epoch == 4
    full, split = weights(tmp_path / "full"), weights(tmp_path / "split")
    for k in full:
        torch.testing.assert_close(split[k], full[k], rtol=0, atol=1e-6, msg=k)
    lines = (tmp_path / "split" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("time,epoch,step") and len(lines) > 20
    model = load_model(tmp_path / "split")  # a run folder is a model
    assert model.embed_dim == 8 and model.info["source"] == "ghostvlad-train"


@pytest.mark.parametrize(("asked", "native", "used", "notice"), [
    ("auto", False, "fp32", "train.precision=auto: fp32 (this cpu has no native bfloat16)"),
    ("auto", True, "bf16", None),
    ("bf16", False, "bf16", "train.precision=bf16: this cpu emulates bfloat16, several times slower than fp32"),
    ("fp32", False, "fp32", None),
])
def test_the_precision_a_run_uses_and_its_notice(corpus, tmp_path, monkeypatch, asked, native, used, notice):
    import ghostvlad.precision as precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    monkeypatch.setattr(loop, "native_bf16", lambda device: native)
    manifest, config = corpus
    trainer = Trainer(load_config(config, [f"train.precision={asked}"]), manifest, tmp_path / "run")
    assert trainer.parts.precision.name == used
    notes = [n for n in trainer.notices if "precision" in n]
    assert len(notes) == (notice is not None) and (notice is None or notes[0].startswith(notice))


@pytest.mark.slow
def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(corpus, tmp_path):
    manifest, config = corpus
    longer = "train.epochs=40"  # 200 steps: time to kill it mid-run
    reference = tmp_path / "reference"
    subprocess.run(cli("--config", str(config), "--data", str(manifest), "--out", str(reference), longer), check=True,
                   capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(cli("--config", str(config), "--data", str(manifest), "--out", str(run), longer),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpt = run / CHECKPOINT_NAME
        if ckpt.exists() and load_checkpoint(ckpt)["progress"]["global_step"] >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(run / CHECKPOINT_NAME)["progress"]["global_step"]
    assert 3 <= killed_at < 200, "the run finished before it could be killed"
    subprocess.run(cli("--config", str(config), "--data", str(manifest), "--out", str(run), longer), check=True,
                   capture_output=True)
    full, resumed = weights(reference), weights(run)
    assert load_checkpoint(run / CHECKPOINT_NAME)["progress"]["global_step"] == 200
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=1e-6, msg=k)
    assert not list(run.glob(".*.tmp"))


def test_changed_config_on_an_existing_run_is_refused(corpus, tmp_path):
    manifest, config = corpus
    Trainer(load_config(config), manifest, tmp_path / "run").run(max_steps=1)
    with pytest.raises(TrainError, match="different config \\(optim.lr\\)"):
        Trainer(load_config(config, ["optim.lr=0.1"]), manifest, tmp_path / "run").run()


def test_a_run_folder_of_an_earlier_version_resumes(corpus, tmp_path):
    """Earlier versions saved ``optim.momentum: 0.9`` and ``optim.eps: 1e-07`` for every optimiser."""
    manifest, config = corpus
    run = tmp_path / "run"
    Trainer(load_config(config), manifest, run).run(max_steps=1)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["name"] == "adam" and saved["optim"]["eps"] is None
    saved["optim"].update(momentum=0.9, eps=1e-7)
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    state = Trainer(load_config(config), manifest, run).run(max_steps=2)
    assert state.global_step == 2
    saved["optim"]["eps"] = 1e-3  # an argument the optimiser takes, changed: a different run
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(TrainError, match="different config \\(optim.eps\\)"):
        Trainer(load_config(config), manifest, run).run()


def test_kmeans_vlad_init_puts_each_center_at_the_mean_of_its_descriptors(corpus, tmp_path):
    manifest, config = corpus
    plain = Trainer(load_config(config), manifest, tmp_path / "plain")
    trainer = Trainer(load_config(config, ["train.vlad_init=kmeans"]), manifest, tmp_path / "kmeans")
    encoder = trainer.parts.net.encoder
    before, after = plain.parts.net.encoder.state_dict(), encoder.state_dict()
    for name in before:  # same seed: only the centers differ (BatchNorm statistics put back too)
        assert torch.equal(before[name], after[name]) == (name != "pooling.centers"), name
    probe = copy.deepcopy(encoder).train()
    seen = []
    probe.pooling.register_forward_hook(lambda module, args, out: seen.append(args[1]))
    with torch.no_grad():
        probe(trainer.parts.frontend(first_crops(trainer.parts.dataset, KMEANS_CROPS, trainer.dist.device))[0])
    frames = seen[0].transpose(1, 2).reshape(-1, seen[0].shape[1]).double()
    centers = encoder.pooling.centers.detach().double()
    nearest = torch.cdist(frames, centers).argmin(dim=1)
    assert len(set(nearest.tolist())) == len(centers)
    for k, center in enumerate(centers):  # k-means' fixed point
        torch.testing.assert_close(center, frames[nearest == k].mean(dim=0), rtol=0, atol=1e-4)
    assert trainer.run(max_steps=2).global_step == 2
    with pytest.raises(ConfigError, match="train.vlad_init=kmeans needs vlad or gvlad pooling, not tap"):
        Trainer(load_config(config, ["train.vlad_init=kmeans", "model.pooling=tap"]), manifest, tmp_path / "tap")
    with pytest.raises(ConfigError, match="unknown vlad_init 'random'; choose one of: kmeans, orthogonal"):
        load_config(config, ["train.vlad_init=random"])


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(corpus, tmp_path):
    manifest, config = corpus
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ghostvlad", "train", "--config", str(config), "--data", str(manifest), "--out", str(run),
           "--max-steps", "4", "train.epochs=1", "train.steps_per_epoch=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(run / CHECKPOINT_NAME)["progress"]["global_step"] == 4


def test_augmentation_folders_reach_the_dataset(corpus, tmp_path):
    manifest, config = corpus
    noise = tmp_path / "musan" / "noise"
    noise.mkdir(parents=True)
    sf.write(noise / "n.wav", np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32), 16000)
    trainer = Trainer(load_config(config, [f"data.musan={tmp_path / 'musan'}", "data.augment_prob=1.0"]), manifest,
                      tmp_path / "run")
    clean = Trainer(load_config(config), manifest, tmp_path / "clean")
    noisy_crop, _ = trainer.parts.dataset[0]
    clean_crop, _ = clean.parts.dataset[0]
    assert trainer.parts.dataset.augment is not None and clean.parts.dataset.augment is None
    assert not np.allclose(noisy_crop, clean_crop)


def test_corrupt_checkpoint_is_a_clear_error(corpus, tmp_path):
    manifest, config = corpus
    run = tmp_path / "run"
    Trainer(load_config(config), manifest, run).run(max_steps=1)
    (run / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint.pt: unreadable checkpoint"):
        Trainer(load_config(config), manifest, run).run()


def test_validation_picks_the_model_and_stores_its_threshold(corpus, tmp_path):
    manifest, config = corpus
    root = manifest.parent
    trials = tmp_path / "trials.txt"
    trials.write_text("1 id00000/vid/00000.wav id00000/vid/00001.wav\n0 id00000/vid/00000.wav id00001/vid/00000.wav\n"
                      "1 id00002/vid/00002.wav id00002/vid/00003.wav\n0 id00002/vid/00002.wav id00003/vid/00001.wav\n"
                      "0 id00000/vid/00000.wav missing/vid/00000.wav\n")
    cfg = load_config(config, ["train.epochs=1", f"valid.trials={trials}", f"valid.wav_root={root}"])
    Trainer(cfg, manifest, tmp_path / "run").run()
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert rows[-1]["valid_eer"] != ""  # the epoch row carries the validation EER
    model = load_model(tmp_path / "run")  # its stored threshold is the EER threshold of its own validation scores
    assert model.threshold == pytest.approx(evaluate(model, trials, root).summary.threshold, abs=1e-5)


def test_a_band_limited_run_trains_validates_and_exports_its_front_end(corpus, tmp_path):
    manifest, config = corpus
    root = manifest.parent
    trials = tmp_path / "trials.txt"
    trials.write_text("1 id00000/vid/00000.wav id00000/vid/00001.wav\n0 id00000/vid/00000.wav id00001/vid/00000.wav\n")
    cfg = load_config(config, ["train.epochs=1", "frontend.max_freq=4000", f"valid.trials={trials}",
                               f"valid.wav_root={root}"])
    Trainer(cfg, manifest, tmp_path / "run").run()
    assert list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))[-1]["valid_eer"] != ""
    model = load_model(tmp_path / "run")
    assert model.frontend_config.n_freq == 129 and model.saved_encoder.backbone.out_height == 3
    assert np.isfinite(model.embed(np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))).all()
    Trainer(load_config(config, ["train.epochs=1", "frontend.max_freq=4000"]), manifest, tmp_path / "again",
            init=tmp_path / "run").run(max_steps=1)  # --init from a model of the same bins
    message = r"run: it reads 129 frequency bins \(its frontend.max_freq 4000.0\), the config 257"
    with pytest.raises(TrainError, match=message):
        Trainer(load_config(config, ["train.epochs=1"]), manifest, tmp_path / "full", init=tmp_path / "run")


@pytest.mark.parametrize(("select", "exported_step"), [("best", 10), ("last", 20)])
def test_valid_select_exports_the_best_or_the_last_epoch(corpus, tmp_path, monkeypatch, select, exported_step):
    manifest, config = corpus
    eers = iter([0.3, 0.1, 0.2, 0.4])  # epochs 0-3 of 5 steps: the best is the second, at step 10
    monkeypatch.setattr(loop, "_validate", lambda *args: (next(eers), 0.5))
    cfg = load_config(config, ["valid.trials=unused.txt", f"valid.select={select}"])
    Trainer(cfg, manifest, tmp_path / "run").run()
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [r["valid_eer"] for r in rows if r["valid_eer"]] == ["0.30000", "0.10000", "0.20000", "0.40000"]
    model = load_model(tmp_path / "run")
    assert model.info["global_step"] == exported_step and model.threshold == 0.5
    exported = model.saved_encoder.state_dict()
    Trainer(load_config(config), manifest, tmp_path / "again").run(max_steps=exported_step)
    trained = {k.removeprefix("encoder."): v for k, v in weights(tmp_path / "again").items()
               if k.startswith("encoder.")}
    for k, v in exported.items():  # that step's weights (training is the same whatever is validated)
        torch.testing.assert_close(v, trained[k], rtol=0, atol=1e-6, msg=k)


def test_channel_augmentation_speeds_and_session_batches_train(corpus, tmp_path):
    manifest, config_path = corpus
    overrides = ["data.augment={reverb: 0.5, noise: 0.5, babble: 0.3, eq: 0.5, telephone: 0.3, codec: 0.2}",
                 "data.rooms=4", "data.speeds=[0.9, 1.0, 1.1]", "train.sampler=sessions", "train.per_speaker=2",
                 "head.prototypical=1.0"]
    trainer = Trainer(load_config(config_path, overrides), manifest, tmp_path / "run")
    assert trainer.parts.net.head.weight.shape[0] == 4 * 3  # every speed of a speaker is a class
    prototypical_w = trainer.parts.net.prototypical.w.detach().clone()
    state = trainer.run(max_steps=3)
    assert state.global_step == 3
    assert torch.isfinite(trainer.parts.net.head.weight.detach()).all()
    # a batch pairs utterances of one speaker
    batch = trainer.parts.batches.batches(0)[0]
    labels = trainer.parts.dataset.labels[batch]
    assert (labels[0::2] == labels[1::2]).all()
    assert not torch.equal(trainer.parts.net.prototypical.w.detach(), prototypical_w)  # the prototypical loss trains
    with pytest.raises(ConfigError, match="unknown sampler 'fancy'; choose one of: random, sessions"):
        load_config(config_path, ["train.sampler=fancy"])
    with pytest.raises(TrainError, match="head.prototypical needs train.sampler=sessions"):
        Trainer(load_config(config_path, ["head.prototypical=0.5"]), manifest, tmp_path / "run3")




def test_file_undecodable_after_prepare_is_logged_and_replaced(corpus, tmp_path):
    """One bad file must not kill a run (nor a restart): logged, replaced by the same speaker's other utterance."""
    manifest, config = corpus
    root = tmp_path / "copy"
    shutil.copytree(manifest.parent, root, ignore=shutil.ignore_patterns("*.csv", "*.yaml"))
    text = manifest.read_text().replace(str(manifest.parent), str(root))
    broken_manifest = tmp_path / "train.csv"
    broken_manifest.write_text(text)
    broken = root / "id00001" / "vid" / "00002.wav"
    broken.write_bytes(b"RIFF" + bytes(100))  # became undecodable after `prepare`
    cfg = load_config(config, ["train.epochs=2", "data.max_bad_fraction=0.1"])
    trainer = Trainer(cfg, broken_manifest, tmp_path / "run")
    index = trainer.parts.dataset.paths.tolist().index(os.fsencode(broken))
    crop, label = trainer.parts.dataset[index]
    assert label == trainer.parts.dataset.labels[index] and crop.shape == (49 * 160,)
    state = trainer.run()
    assert state.epoch == 2 and state.global_step == 10
    bad = read_bad_files(tmp_path / "run" / BAD_FILES_NAME)
    assert list(bad) == [str(broken)] and bad[str(broken)].startswith(f"{broken}: ")
    replaced = Trainer(cfg, broken_manifest, tmp_path / "run2").parts.dataset[index]
    np.testing.assert_array_equal(replaced[0], crop)  # deterministic replacement
    strict = load_config(config, ["train.epochs=2", "data.max_bad_fraction=0.01"])  # 1 of 16 files > 1 %
    with pytest.raises(TrainError, match=r"1 of 16 training files failed to decode .*bad_files.txt; first: .*00002.wav"):
        Trainer(strict, broken_manifest, tmp_path / "run3").run()


def test_non_finite_step_is_skipped_and_counted_and_never_saved(corpus, tmp_path, monkeypatch):
    manifest, config = corpus
    trainer = Trainer(load_config(config, ["train.epochs=1"]), manifest, tmp_path / "run")
    original, calls = trainer.parts.net.head.forward, []

    def nan_on_second_step(x, labels=None):
        calls.append(1)
        logits = original(x, labels)
        return logits * float("nan") if len(calls) == 2 else logits

    monkeypatch.setattr(trainer.parts.net.head, "forward", nan_on_second_step)
    before = {}

    def snapshot(row, steps):
        before[row["global_step"]] = {k: v.clone() for k, v in trainer.parts.net.state_dict().items()}

    trainer.run(on_log=snapshot)
    rows = [r for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open()) if r["step"]]
    assert [r["skipped"] for r in rows] == ["0", "1", "0", "0", "0"]
    assert rows[1]["loss"] == "nan" and rows[0]["loss"] != "nan"
    for name, value in before[2].items():  # the skipped step left the weights and running statistics as they were
        if name.endswith("weight") and "head" in name or "running_" in name or "num_batches" in name:
            torch.testing.assert_close(value, before[1][name], rtol=0, atol=0)
    assert not torch.equal(before[3]["encoder.backbone.stem.bn.running_mean"],
                           before[2]["encoder.backbone.stem.bn.running_mean"])  # a taken step updates them
    with torch.no_grad():
        next(trainer.parts.net.parameters()).fill_(float("inf"))
    with pytest.raises(TrainError, match="non-finite values in encoder.* not saved"):
        trainer.save()


def test_a_skipped_first_step_raises_no_scheduler_order_warning(corpus, tmp_path, monkeypatch, recwarn):
    manifest, config = corpus
    trainer = Trainer(load_config(config, ["train.epochs=1"]), manifest, tmp_path / "run")
    original = trainer.parts.net.head.forward
    monkeypatch.setattr(trainer.parts.net.head, "forward", lambda x, labels=None: original(x, labels) * float("nan"))
    trainer.run(max_steps=2)
    assert trainer.state.global_step == 2
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


def test_prefetch_depth_adapts_to_dev_shm(corpus, tmp_path, monkeypatch):
    manifest, config = corpus
    trainer = Trainer(load_config(config, ["train.batch_size=16"]), manifest, tmp_path / "run")
    batch = 16 * 49 * 160 * 4  # bytes of one batch of 50-frame crops
    free = {"value": 10**12}
    monkeypatch.setattr("ghostvlad.train.loop.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(0, 0, free["value"]))
    assert trainer._prefetch(8) == 4 and trainer.notices == []
    free["value"] = int(batch * 8 * 2 / 0.8) + 1  # room for 2 batches per worker
    assert trainer._prefetch(8) == 2
    assert "/dev/shm has" in trainer.notices[-1] and "data.prefetch=4; using 2" in trainer.notices[-1]
    free["value"] = batch  # not even one per worker: says what to do
    assert trainer._prefetch(8) == 1 and "enlarge /dev/shm or lower data.workers" in trainer.notices[-1]


def test_training_reports_each_log_row_to_the_callback_and_prints_nothing(corpus, tmp_path, capfd):
    """Library training never prints (the CLI draws the bar): every logged row goes to ``on_log`` with the epoch's
    step count, and equals the row written to metrics.csv."""
    manifest, config = corpus
    seen = []
    cfg = load_config(config, ["train.epochs=2", "train.log_every=2"])  # 5 steps per epoch: rows at steps 2, 4, 6, ...
    state = Trainer(cfg, manifest, tmp_path / "run").run(on_log=lambda row, steps: seen.append((row, steps)))
    assert state.global_step == 10
    assert [(r["epoch"], r["step"], r["global_step"], steps) for r, steps in seen] == [
        (0, 2, 2, 5), (0, 4, 4, 5), (1, 1, 6, 5), (1, 3, 8, 5), (1, 5, 10, 5)]
    logged = [r for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open()) if r["step"]]
    assert [(r["global_step"], r["loss"], r["acc"]) for r in logged] == [
        (str(r["global_step"]), r["loss"], r["acc"]) for r, _ in seen]
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_min_steps_passes_a_small_corpus_several_times_an_epoch(corpus, tmp_path):
    manifest, config = corpus  # 16 utterances, batches of 4: one pass is 4 steps
    steps = {name: Trainer(load_config(config, ["train.steps_per_epoch=null", *extra]), manifest,
                           tmp_path / name).parts.batches.steps
             for name, extra in (("pass", []), ("min", ["train.min_steps=30"]), ("less", ["train.min_steps=8"]))}
    assert steps == {"pass": 4, "min": 8, "less": 4}  # ceil(30 / 4 epochs) = 8; 8 steps are within 4 epochs of one pass
    with pytest.raises(ConfigError, match="train.min_steps=30: .*not given with train.steps_per_epoch"):
        load_config(config, ["train.min_steps=30"])


def test_ema_run_exports_the_average_and_resumes_exactly(corpus, tmp_path):
    manifest, config = corpus
    cfg = load_config(config, ["train.ema=0.8"])
    Trainer(cfg, manifest, tmp_path / "full").run()
    Trainer(cfg, manifest, tmp_path / "split").run(max_steps=7)
    Trainer(cfg, manifest, tmp_path / "split").run()
    full = load_checkpoint(tmp_path / "full" / CHECKPOINT_NAME)
    split = load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)
    assert full["average"]["updates"] == split["average"]["updates"] == 20
    for k, v in full["average"]["module"].items():
        torch.testing.assert_close(split["average"]["module"][k], v, rtol=0, atol=1e-6, msg=k)
    model = load_model(tmp_path / "full")  # exported at the epoch of the lowest mean loss
    Trainer(cfg, manifest, tmp_path / "then").run(max_steps=model.info["global_step"])
    then = load_checkpoint(tmp_path / "then" / CHECKPOINT_NAME)
    exported = model.saved_encoder.state_dict()
    trained = {k.removeprefix("encoder."): v for k, v in then["model"].items() if k.startswith("encoder.")}
    for k, v in exported.items():  # the average at that step, not that step's weights
        torch.testing.assert_close(v, then["average"]["module"][k], rtol=0, atol=1e-6, msg=k)
    assert any(not torch.allclose(v, trained[k], atol=1e-4) for k, v in exported.items() if v.is_floating_point())
