import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from support.audio import write_aac
from torch.utils.data import DataLoader

from ghostvlad.audio import AudioError, load_audio
from ghostvlad.data.dataset import CropDataset, DatasetError, ShardCropDataset
from ghostvlad.data.manifest import Manifest
from ghostvlad.data.shards import DataShardError, read_index, write_shards

N = 23


def pcm(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, 0.2, n) * 32767).clip(-32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """23 utterances of 4 speakers: wav, flac and one m4a."""
    root = tmp_path_factory.mktemp("corpus")
    paths, speakers, durations = [], [], []
    for k in range(N):
        speaker = f"id{k % 4:05d}"
        ext = "m4a" if k == 5 else ("wav" if k % 2 else "flac")
        path = root / speaker / "v" / f"{k:05d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        x = pcm(16000 + 1000 * k, k)
        if ext == "m4a":
            write_aac(path, x)
        else:
            sf.write(path, x, 16000, subtype="PCM_16")
        paths.append(str(path))
        speakers.append(speaker)
        durations.append(len(load_audio(path)) / 16000)
    return Manifest(paths, speakers, np.array(durations, np.float32))


@pytest.fixture(scope="module")
def shards(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_shards(manifest, out, max_count=5, seed=1, workers=2)
    return out


def members(tar_path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_shard_layout_and_contents(manifest, shards):
    index = json.loads((shards / "index.json").read_text())
    assert index["utterances"] == N and index["speakers"] == ["id00000", "id00001", "id00002", "id00003"]
    assert [s["name"] for s in index["shards"]] == [f"shard-{k:06d}.tar" for k in range(5)]
    assert [s["count"] for s in index["shards"]] == [5, 5, 5, 5, 3]
    assert sorted(p.name for p in shards.iterdir()) == ["index.json"] + [s["name"] for s in index["shards"]]
    keys = []
    for info in index["shards"]:
        content = members(shards / info["name"])
        assert info["bytes"] == (shards / info["name"]).stat().st_size
        assert len(content) == 2 * info["count"]
        for name, data in content.items():
            key, ext = name.split(".", 1)
            if ext == "json":
                continue
            assert ext == "flac"
            meta = json.loads(content[f"{key}.json"])
            i = meta["index"]
            keys.append(i)
            assert key == f"{i:09d}"
            assert meta == {"index": i, "speaker": manifest.speakers[i], "path": manifest.paths[i],
                            "duration": float(manifest.durations[i])}
            decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
            original = load_audio(manifest.paths[i])
            assert rate == 16000 and len(decoded) == len(original)
            if manifest.paths[i].endswith(".m4a"):  # lossy source: stored as 16-bit PCM
                assert np.abs(decoded - original).max() <= 0.5 / 32768
            else:
                assert np.array_equal(decoded, original)
    assert sorted(keys) == list(range(N)) and keys != sorted(keys)  # all there, shuffled


def test_rerun_is_deterministic_and_removes_stale_shards(manifest, tmp_path):
    write_shards(manifest, tmp_path, max_count=5, seed=1, workers=1)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = []
    write_shards(manifest, tmp_path, max_count=5, seed=1, workers=2, on_progress=lambda *c: calls.append(c))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    n = len(manifest)  # 23 utterances in chunks of 16: reported at the start and after each chunk
    assert calls == [(0, n), (16, n), (n, n)]
    index = write_shards(manifest, tmp_path, max_count=10, seed=1, workers=2)
    assert [s.count for s in index.shards] == [10, 10, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "shard-000000.tar", "shard-000001.tar",
                                                          "shard-000002.tar"]


def test_size_limit_and_original_bytes(manifest, tmp_path):
    index = write_shards(manifest, tmp_path, max_count=1000, max_mb=0.2, keep_original=True, workers=1)
    assert len(index.shards) > 2 and sum(s.count for s in index.shards) == N
    for info in index.shards:
        content = members(tmp_path / info.name)
        payload = sum(len(v) for v in content.values())
        assert payload <= 200_000 or info.count == 1
        for name, data in content.items():
            key, ext = name.split(".", 1)
            if ext == "json":
                continue
            path = json.loads(content[f"{key}.json"])["path"]
            if path.endswith(".m4a"):
                assert ext == "flac"  # only WAV/FLAC are kept as they are
            else:
                assert ext == path.rsplit(".", 1)[1] and data == open(path, "rb").read()


def collect(ds) -> list[tuple[bytes, int]]:
    return [(x.numpy().tobytes(), int(y)) for x, y in DataLoader(ds, batch_size=None, num_workers=2)]


def test_every_utterance_once_per_epoch_across_ranks_and_workers(manifest, shards):
    reference = CropDataset(manifest, seed=4)
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        expected = {reference[i][0].tobytes(): (i, reference[i][1]) for i in range(N) if i != 5}  # 5: the m4a
        seen = Counter()
        for rank in (0, 1):
            ds = ShardCropDataset(shards, seed=4, rank=rank, world=2, shuffle_buffer=4)
            ds.set_epoch(epoch)
            got = collect(ds)
            assert len(got) == len(ds)
            for crop, label in got:
                if crop in expected:  # wav/flac sources: the very crop CropDataset gives
                    i, ref_label = expected[crop]
                    assert label == ref_label
                    seen[i] += 1
                else:
                    seen["m4a"] += 1
                    assert label == manifest.labels()[5]
        assert seen == Counter({i: 1 for i in range(N) if i != 5} | {"m4a": 1})


def test_epochs_and_ranks_differ(shards):
    ds = ShardCropDataset(shards, seed=0, rank=0, world=2)
    orders = {e: ds.rank_shards(e) for e in range(4)}
    assert len({tuple(o) for o in orders.values()}) > 1
    other = ShardCropDataset(shards, seed=0, rank=1, world=2)
    for e in range(4):
        assert sorted(orders[e] + other.rank_shards(e)) == list(range(5))
    one = ShardCropDataset(shards, seed=0)
    assert (one.rank, one.world) == (0, 1) and len(one) == N
    first = [label for _, label in one]
    one.set_epoch(1)
    assert sorted(first) == sorted(label for _, label in one) and first != [label for _, label in one]


def test_speaker_ids_and_rank_checks(shards):
    ds = ShardCropDataset(shards, speaker_ids=["id00003", "id00002", "id00001", "id00000", "other"])
    labels = Counter(label for _, label in ds)
    assert labels == Counter({3: 6, 2: 6, 1: 6, 0: 5})
    with pytest.raises(ValueError, match="1 shard speaker\\(s\\) not in speaker_ids, e.g. 'id00003'"):
        ShardCropDataset(shards, speaker_ids=["id00000", "id00001", "id00002"])
    with pytest.raises(ValueError, match=re.escape("rank 2 is not in [0, world=2)")):
        ShardCropDataset(shards, rank=2, world=2)
    with pytest.raises(DatasetError, match="5 shard\\(s\\) cannot feed 6 ranks"):
        ShardCropDataset(shards, rank=0, world=6)


def test_index_errors(tmp_path, shards):
    with pytest.raises(DataShardError, match=f"^{tmp_path / 'index.json'}: no such file$"):
        read_index(tmp_path)
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(DataShardError, match="not a ghostvlad shard index"):
        read_index(tmp_path / "index.json")
    (tmp_path / "index.json").write_text('{"format": "ghostvlad-shards/1", "shards": [{"name": 1}]}')
    with pytest.raises(DataShardError, match="malformed shard index"):
        read_index(tmp_path)
    (tmp_path / "index.json").write_text("not json")
    with pytest.raises(DataShardError, match="cannot read shard index"):
        read_index(tmp_path)
    index = read_index(shards)
    assert index.base == str(shards) and index.url(0) == f"{shards}/shard-000000.tar"


def _one_bad_shard(root: Path) -> None:
    """Shards in ``root`` holding one sample whose audio is not FLAC (its source path: /data/a/v/1.wav)."""
    with open(root / "shard-000000.tar", "wb") as fh, wds.TarWriter(fh, encoder=False) as tar:
        meta = {"index": 0, "speaker": "a", "duration": 1.0, "path": "/data/a/v/1.wav"}
        tar.write({"__key__": "000000000", "flac": b"not flac at all", "json": json.dumps(meta).encode()})
    record = {"format": "ghostvlad-shards/1", "utterances": 1, "speakers": ["a"],
              "shards": [{"name": "shard-000000.tar", "count": 1, "bytes": 1}]}
    (root / "index.json").write_text(json.dumps(record))


def test_bad_sample_at_training_time_names_it(tmp_path):
    _one_bad_shard(tmp_path)
    with pytest.raises(AudioError, match=re.escape(f"/data/a/v/1.wav (in {tmp_path}/shard-000000.tar:000000000): "
                                                   "cannot read audio")):
        next(iter(ShardCropDataset(tmp_path)))
    (tmp_path / "shard-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match="shard-000000.tar"):
        next(iter(ShardCropDataset(tmp_path)))


def test_write_errors(manifest, tmp_path):
    with pytest.raises(DataShardError, match="max_count"):
        write_shards(manifest, tmp_path, max_count=0)
    broken = Manifest([*manifest.paths[:2], str(tmp_path / "gone.wav")], manifest.speakers[:3], manifest.durations[:3])
    with pytest.raises(AudioError, match=f"{tmp_path / 'gone.wav'}: file not found"):
        write_shards(broken, tmp_path / "out", workers=1)
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no partial shard, no index


def test_bad_sample_during_training_is_logged_and_skipped(tmp_path):
    from ghostvlad.data.dataset import read_bad_files

    _one_bad_shard(tmp_path)
    dataset = ShardCropDataset(tmp_path)
    dataset.bad_log = str(tmp_path / "run" / "bad_files.txt")
    assert list(dataset) == []
    bad = read_bad_files(dataset.bad_log)
    assert list(bad) == ["/data/a/v/1.wav (in " + f"{tmp_path}/shard-000000.tar:000000000)"]
