"""Sharded extraction: 2-rank torchrun (gloo) `embed` / `eval`, and `embed --shard k/n` + `merge`, equal one process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from support.audio import tone
from support.evaluate import tiny_model
from typer.testing import CliRunner

from ghostvlad.cli import app
from ghostvlad.sharding import Shard, ShardError, merge_parts

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    rng = np.random.default_rng(0)
    files = []
    for spk, freq in enumerate((220.0, 330.0, 500.0)):
        for k, seconds in enumerate((0.9, 1.2, 1.5)):
            path = root / "wav" / f"s{spk}" / f"{k}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, tone(rng, freq * (1 + 0.03 * k), seconds), 16000)
            files.append(path)
    bad = root / "wav" / "bad.wav"
    bad.write_bytes(b"not audio")
    files.insert(4, bad)
    rel = [str(f.relative_to(root / "wav")) for f in files if f != bad]
    trials = root / "trials.txt"
    trials.write_text("".join(f"{int(a[:2] == b[:2])} {a} {b}\n" for i, a in enumerate(rel) for b in rel[i + 1:]))
    model = root / "model"
    tiny_model().save(model)
    return {"root": root, "files": [str(f) for f in files], "model": model, "trials": trials}


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ghostvlad",
           *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def single(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_torchrun_embed_and_shard_parts_equal_one_process(setup, tmp_path):
    common = ["embed", "--model", str(setup["model"]), *setup["files"], "--device", "cpu"]
    single(*common, "--out", str(tmp_path / "one.npz"))
    torchrun(*common, "--out", str(tmp_path / "ddp.npz"))
    parts = [tmp_path / f"part{k}.npz" for k in range(3)]
    for k, part in enumerate(parts):
        single(*common, "--shard", f"{k}/3", "--out", str(part))
    single("merge", *map(str, reversed(parts)), "--out", str(tmp_path / "merged.npz"))
    one = np.load(tmp_path / "one.npz")
    assert len(one["paths"]) == 9 and "bad.wav" not in " ".join(one["paths"])
    for name in ("ddp.npz", "merged.npz"):
        other = np.load(tmp_path / name)
        assert sorted(other.files) == sorted(one.files), name
        np.testing.assert_array_equal(other["paths"], one["paths"])
        np.testing.assert_allclose(other["embeddings"], one["embeddings"], rtol=0, atol=1e-5)
    assert not list(tmp_path.glob(".ddp.npz.part*"))  # the ranks' parts are merged and removed
    with pytest.raises(ShardError, match="missing shard\\(s\\) 1/3"):
        merge_parts([parts[0], parts[2]])
    with pytest.raises(ShardError, match="given twice"):
        merge_parts([parts[0], parts[0], parts[1]])
    result = runner.invoke(app, [*common, "--shard", "3/3", "--out", str(tmp_path / "x.npz")])
    assert result.exit_code != 0 and "shard 3/3: need 0 <= k < n" in result.output


@pytest.mark.slow
def test_torchrun_eval_and_sharded_cache_equal_one_process(setup, tmp_path):
    common = ["eval", "--model", str(setup["model"]), "--trials", str(setup["trials"]), "--wav-root",
              str(setup["root"] / "wav"), "--device", "cpu"]
    single(*common, "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "c1"))
    torchrun(*common, "--out", str(tmp_path / "ddp"), "--cache-dir", str(tmp_path / "c2"))
    for k in range(2):
        shard = single(*common, "--shard", f"{k}/2", "--cache-dir", str(tmp_path / "c3"))
        assert f"shard {k}/2: embedded" in shard.output
    merged = single(*common, "--out", str(tmp_path / "merged"), "--cache-dir", str(tmp_path / "c3"))
    assert "embedded 0 files, 9 from the cache" in merged.output
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    for name in ("ddp", "merged"):
        other = json.loads((tmp_path / name / "summary.json").read_text())
        assert other["n_trials"] == one["n_trials"] == 36
        for key in ("eer", "threshold", "min_dcf_p0.01"):
            assert other[key] == pytest.approx(one[key], abs=1e-5), (name, key)
        a = np.loadtxt(tmp_path / "one" / "scores.txt", usecols=0)
        np.testing.assert_allclose(np.loadtxt(tmp_path / name / "scores.txt", usecols=0), a, atol=1e-5)


def test_shard_take_and_parse():
    assert Shard.parse("1/3").take(list(range(8))) == [1, 4, 7]
    with pytest.raises(ShardError, match="bad shard 'x'"):
        Shard.parse("x")


def test_merge_refuses_parts_of_other_jobs_and_bad_parts(setup, tmp_path):
    files = setup["files"]
    common = ["embed", "--model", str(setup["model"]), "--device", "cpu"]
    parts = [tmp_path / f"part{k}.npz" for k in range(2)]
    for k, part in enumerate(parts):
        single(*common, *files, "--shard", f"{k}/2", "--out", str(part))
    assert len(merge_parts(parts)["paths"]) == 9  # the good parts merge

    other = tmp_path / "other.npz"  # shard 1/2 of the same files in another order
    single(*common, *reversed(files), "--shard", "1/2", "--out", str(other))
    with pytest.raises(ShardError, match="other.npz: a part of another job than .*part0.npz"):
        merge_parts([parts[0], other])
    tiny_model(seed=1).save(tmp_path / "model1")  # the same files, another model
    single("embed", "--model", str(tmp_path / "model1"), "--device", "cpu", *files, "--shard", "1/2", "--out", str(other))
    with pytest.raises(ShardError, match="a part of another job"):
        merge_parts([parts[0], other])

    with np.load(parts[1]) as data:
        arrays = {k: data[k] for k in data.files}
    for name, change, message in (
            ("nan", {"embeddings": np.where(np.eye(*arrays["embeddings"].shape) > 0, np.nan, arrays["embeddings"])},
             "nan.npz: embeddings hold NaN or infinite values"),
            ("rows", {"paths": arrays["paths"][:2]}, "rows.npz: arrays of different lengths"),
            ("dims", {"embeddings": arrays["embeddings"][:, :4]}, "parts hold embeddings of different sizes")):
        np.savez(tmp_path / f"{name}.npz", **{**arrays, **change})
        with pytest.raises(ShardError, match=message):
            merge_parts([parts[0], tmp_path / f"{name}.npz"])
    np.save(tmp_path / "bare.npy", arrays["embeddings"])
    result = runner.invoke(app, ["merge", str(parts[0]), str(tmp_path / "bare.npy"), "--out", str(tmp_path / "m.npz")])
    assert result.exit_code == 1 and "bare.npy: not a shard part (a single array, not an .npz)" in result.output
    assert not (tmp_path / "m.npz").exists()
