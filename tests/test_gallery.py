import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from support.gallery import clips, model, tiny_model  # noqa: F401  (fixtures)

from ghostvlad.gallery import store as gallery_store
from ghostvlad.evaluate import model_key
from ghostvlad.gallery import Gallery, GalleryError, describe_model, top_matches


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _state(path):
    """Everything a reader could see: both tables, through a plain SQLite connection."""
    db = sqlite3.connect(path)
    try:
        speakers = db.execute("SELECT id, name, utterances, mean, created, updated FROM speakers ORDER BY id").fetchall()
        utterances = db.execute("SELECT * FROM utterances ORDER BY id").fetchall()
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return speakers, utterances
    finally:
        db.close()


def test_enroll_identify_round_trip(model, clips, tmp_path):
    db = tmp_path / "speakers.db"
    with Gallery(db, model) as gallery:
        for name, paths in clips.items():
            assert gallery.enroll(name, paths[:2]) == 2
        assert len(gallery) == 4
        assert [(s.name, s.utterances) for s in gallery.speakers()] == [(n, 2) for n in sorted(clips)]
        means = {n: _unit(model.embed_batch(p[:2]).mean(axis=0)) for n, p in clips.items()}
        for name, paths in clips.items():
            matches = gallery.identify(paths[2], top=3)
            query = model.embed(paths[2])
            expected = sorted(((float(means[n] @ query), n) for n in means), reverse=True)[:3]
            assert [m.name for m in matches] == [n for _, n in expected]
            assert matches[0].name == name and matches[0].utterances == 2
            np.testing.assert_allclose([m.score for m in matches], [s for s, _ in expected], atol=1e-5)
            assert all(m.accepted is None for m in matches)  # uncalibrated model without a threshold
    with Gallery(db) as reopened:  # persisted; searchable without a model
        assert reopened.model_key == model_key(model) and reopened.dim == 16
        assert reopened.identify_embedding(model.embed(clips["carol"][2]), top=1)[0].name == "carol"


def test_reenrolling_adds_and_the_mean_is_renormalised(model, clips, tmp_path):
    with Gallery(tmp_path / "g.db", model) as gallery:
        gallery.enroll("alice", clips["alice"][:1])
        gallery.enroll("bob", clips["bob"][:1])
        first = gallery.speaker("alice")
        time.sleep(0.01)
        assert gallery.enroll("alice", clips["alice"][1:]) == 2
        info = gallery.speaker("alice")
        assert info.utterances == 3 and info.created == first.created and info.updated > first.updated
        emb = model.embed_batch(clips["alice"])
        mean = _unit(emb.mean(axis=0))
        probe = _unit(np.random.default_rng(0).normal(size=16))
        match = {m.name: m.score for m in gallery.identify_embedding(probe, top=2)}
        assert match["alice"] == pytest.approx(float(mean @ probe), abs=1e-5)
        assert gallery.speaker("nobody") is None and len(gallery) == 2


def test_remove_and_list(model, clips, tmp_path):
    db = tmp_path / "g.db"
    with Gallery(db, model) as gallery:
        gallery.enroll("alice", clips["alice"][:2])
        gallery.enroll("bob", clips["bob"][:1])
        assert gallery.remove("alice") == 2
        assert [s.name for s in gallery.speakers()] == ["bob"]
        assert [m.name for m in gallery.identify(clips["alice"][2], top=5)] == ["bob"]
        with pytest.raises(GalleryError, match="no speaker named 'alice'"):
            gallery.remove("alice")
        gallery.remove("bob")
        with pytest.raises(GalleryError, match="the gallery is empty; enrol speakers first"):
            gallery.identify(clips["bob"][0])
    assert _state(db) == ([], [])


def test_missing_and_empty_gallery_and_bad_queries(model, clips, tmp_path):
    db = tmp_path / "new.db"
    with pytest.raises(GalleryError, match="new.db: no such gallery$"):
        Gallery(db)
    with Gallery(db, model) as gallery:  # nothing is created until the first enrolment
        assert gallery.speakers() == [] and len(gallery) == 0
        with pytest.raises(GalleryError, match="new.db: no such gallery; enrol speakers first"):
            gallery.identify(clips["alice"][0])
        assert not db.exists()
        for bad in ("", " alice", "a\nb"):
            with pytest.raises(GalleryError, match="invalid speaker name"):
                gallery.enroll(bad, clips["alice"][:1])
        gallery.enroll("alice", clips["alice"][:1])
        wav = clips["alice"][0].parent
        with pytest.raises(ValueError, match=r"silent.wav: silent"):
            gallery.identify(wav / "silent.wav")
        with pytest.raises(ValueError, match=r"short.wav: too short: 0.2 s, minimum is 0.5 s"):
            gallery.identify(wav / "short.wav")
        with pytest.raises(GalleryError, match="query embedding must be .* 16 values, got shape \\(3,\\)"):
            gallery.identify_embedding(np.ones(3))
        with pytest.raises(GalleryError, match="4-d embeddings, the gallery holds 16-d"):
            gallery.add_embeddings({"x": np.ones((1, 4))})
        with pytest.raises(GalleryError, match="x: 1 embeddings but 2 sources"):
            gallery.add_embeddings({"x": np.ones((1, 16))}, {"x": ["a", "b"]})


def test_bad_file_refuses_the_whole_enrolment(model, clips, tmp_path):
    db = tmp_path / "g.db"
    bad = clips["alice"][0].parent / "bad.wav"
    with Gallery(db, model) as gallery:
        gallery.enroll("alice", clips["alice"][:1])
        before = _state(db)
        with pytest.raises(GalleryError, match=rf"{bad}: .*; nothing enrolled \(--skip-bad enrols the rest\)"):
            gallery.enroll("alice", [clips["alice"][1], bad])
        with pytest.raises(GalleryError, match="and 1 more bad files"):
            gallery.enroll("bob", [bad, clips["bob"][0], bad.parent / "silent.wav"])
        assert _state(db) == before
        assert gallery.enroll("alice", [clips["alice"][1], bad], skip_bad=True) == 1
        assert gallery.speaker("alice").utterances == 2
        with pytest.raises(GalleryError, match="none of the 1 recordings could be embedded"):
            gallery.enroll("bob", [bad], skip_bad=True)


def test_failure_inside_the_transaction_rolls_back(model, clips, tmp_path, monkeypatch):
    db = tmp_path / "g.db"
    with Gallery(db, model) as gallery:
        gallery.enroll("alice", clips["alice"][:1])
        before = _state(db)
        calls = []

        def failing(emb):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return original(emb)

        original = gallery_store.speaker_mean
        monkeypatch.setattr(gallery_store, "speaker_mean", failing)
        with pytest.raises(KeyboardInterrupt):
            gallery.add_embeddings({"bob": np.ones((2, 16)), "carol": np.ones((1, 16)), "alice": np.ones((1, 16))})
        assert _state(db) == before and len(calls) == 2
        monkeypatch.undo()
        gallery.enroll("bob", clips["bob"][:1])  # still usable
        assert [s.name for s in gallery.speakers()] == ["alice", "bob"]


def test_killed_writer_leaves_the_gallery_as_it_was(tmp_path):
    db = tmp_path / "g.db"
    rng = np.random.default_rng(0)
    with Gallery(db, tiny_model()) as gallery:
        gallery.add_embeddings({"alice": rng.normal(size=(2, 16))})
    before = _state(db)
    flag = tmp_path / "in-transaction"
    script = f"""
import time, numpy as np
from ghostvlad import gallery as g
from ghostvlad.gallery import store
original, calls = store.speaker_mean, []
def slow(emb):
    calls.append(1)
    if len(calls) == 50:
        open({str(flag)!r}, "w").close()
        time.sleep(60)
    return original(emb)
store.speaker_mean = slow
with g.Gallery({str(db)!r}) as gal:
    gal.add_embeddings({{f"s{{i}}": np.ones((2, 16)) for i in range(100)}})
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), "the writer never reached its transaction"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert _state(db) == before
    with Gallery(db) as gallery:
        assert [s.name for s in gallery.speakers()] == ["alice"]
        gallery.add_embeddings({"bob": np.ones((1, 16))})  # the lock was released with the process
        assert len(gallery) == 2


def test_concurrent_reader_sees_consistent_snapshots(tmp_path):
    db = tmp_path / "g.db"
    rng = np.random.default_rng(0)
    embeddings = _unit(rng.normal(size=(150, 16)).astype(np.float32))
    with Gallery(db, tiny_model()) as gallery:
        gallery.add_embeddings({"s0": np.stack([embeddings[0]] * 3)})
    done, started = threading.Event(), threading.Event()
    problems: list[str] = []
    reads = []

    def reader():
        raw = sqlite3.connect(db, timeout=30)
        try:
            with Gallery(db) as view:
                while not done.is_set():
                    raw.execute("BEGIN")
                    total = raw.execute("SELECT sum(utterances) FROM speakers").fetchone()[0]
                    rows = raw.execute("SELECT count(*) FROM utterances").fetchone()[0]
                    raw.execute("COMMIT")
                    counts = {s.utterances for s in view.speakers()}
                    k = len(view) - 1
                    top = view.identify_embedding(embeddings[k], top=1)[0]
                    if total != rows or counts != {3} or top.score < 0.999:
                        problems.append(f"{total} vs {rows} utterances, counts {counts}, top {top}")
                    reads.append(k)
                    started.set()
        except Exception as exc:  # reported below
            problems.append(repr(exc))
        finally:
            raw.close()

    thread = threading.Thread(target=reader)
    thread.start()
    started.wait(30)
    try:
        with Gallery(db) as writer:
            for i in range(1, len(embeddings)):
                writer.add_embeddings({f"s{i}": np.stack([embeddings[i]] * 3)})
    finally:
        done.set()
        thread.join()
    assert problems == [] and len(set(reads)) > 5  # the reader saw many states of the gallery
    with Gallery(db) as gallery:
        assert len(gallery) == 150 and {s.utterances for s in gallery.speakers()} == {3}


@pytest.mark.slow
def test_search_of_100k_by_512_matches_brute_force():
    rng = np.random.default_rng(0)
    matrix = _unit(rng.standard_normal((100_000, 512), dtype=np.float32))
    for q in _unit(rng.standard_normal((3, 512), dtype=np.float32)):
        idx, scores = top_matches(matrix, q, 5)
        brute = np.argsort(-(matrix @ q), kind="stable")[:5]  # full sort instead of a partition
        np.testing.assert_array_equal(idx, brute)
        np.testing.assert_allclose(scores, matrix[brute] @ q, rtol=1e-6)
    idx, _ = top_matches(matrix[:3], q, 5)  # fewer rows than asked for
    assert sorted(idx) == [0, 1, 2]


def test_gallery_search_matches_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((2000, 2, 16)).astype(np.float32)
    with Gallery(tmp_path / "g.db", tiny_model()) as gallery:
        gallery.add_embeddings({f"spk{i:04d}": e for i, e in enumerate(emb)})
        means = _unit(_unit(emb).mean(axis=1))
        for q in rng.standard_normal((5, 16)).astype(np.float32):
            brute = np.argsort(-(means @ _unit(q)))[:5]
            assert [m.name for m in gallery.identify_embedding(q, top=5)] == [f"spk{i:04d}" for i in brute]


def test_speaker_index_searches_and_decides_without_a_database():
    """The index (speaker means, top-k, decisions) stands apart from the SQLite store: a matrix is enough."""
    from ghostvlad.gallery.index import SpeakerIndex
    from ghostvlad.scoring.calibration import DecisionRule
    from ghostvlad.scoring.vectors import speaker_mean

    rng = np.random.default_rng(0)
    utterances = {name: _unit(rng.normal(size=(3, 16))) for name in ("ann", "ben", "cy")}
    means = np.stack([speaker_mean(e) for e in utterances.values()])
    np.testing.assert_allclose(means, _unit(np.stack([e.mean(axis=0) for e in utterances.values()])), atol=1e-6)
    index = SpeakerIndex(7, list(utterances), np.array([3, 3, 3]), means)
    query = utterances["ben"][0] * 5.0  # not unit: normalised by the search
    rule = DecisionRule.for_model(None, threshold=0.5)
    matches = index.search(query, 2, rule)
    scores = means @ _unit(query)
    assert [m.name for m in matches] == [list(utterances)[i] for i in np.argsort(-scores)[:2]]
    assert [m.score for m in matches] == pytest.approx(np.sort(scores)[::-1][:2], abs=1e-6)
    assert [m.accepted for m in matches] == [s >= 0.5 for s in np.sort(scores)[::-1][:2]]
    with pytest.raises(GalleryError, match="top must be at least 1"):
        index.search(query, 0, rule)
    with pytest.raises(GalleryError, match="finite non-zero vector of 16 values"):
        index.search(np.full(16, np.nan), 1, rule)


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs folder, filled up by ``fill()`` (needs root and mount; skipped otherwise)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a full disk is simulated with a small tmpfs mount, which needs root")

    def fill():
        with pytest.raises(OSError), open(folder / "fill", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()

    yield folder, fill
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_said_and_leaves_no_empty_gallery(model, clips, tmp_path, full_disk):
    folder, fill = full_disk
    with Gallery(folder / "g.db", model) as gallery:
        gallery.enroll("alice", clips["alice"][:1])
    fill()
    with pytest.raises(GalleryError, match=r"g.db: cannot (open|write) the gallery \((disk I/O error|database or disk "
                                           r"is full)"):  # not "not an SQLite database"
        with Gallery(folder / "g.db", model) as gallery:
            gallery.enroll("bob", clips["bob"][:1])
    with pytest.raises(GalleryError, match=r"new.db: cannot write the gallery \(database or disk is full\); nothing "
                                           r"was changed"):
        with Gallery(folder / "new.db", model) as gallery:
            gallery.enroll("bob", clips["bob"][:1])
    assert not (folder / "new.db").exists()


def test_a_new_gallery_creates_its_folder_or_says_why_it_cannot(model, clips, tmp_path):
    with Gallery(tmp_path / "new" / "sub" / "g.db", model) as gallery:
        gallery.enroll("alice", clips["alice"][:1])
    assert (tmp_path / "new" / "sub" / "g.db").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(GalleryError, match=r"file/g.db: cannot create the gallery's folder \(.*file: File exists\)"):
        with Gallery(tmp_path / "file" / "g.db", model) as gallery:
            gallery.enroll("alice", clips["alice"][:1])


def test_a_model_is_described_by_its_parts():
    one = {"encoder": {"backbone": {"name": "resnet34s"}, "pooling": {"name": "astp"}, "embed_dim": 64},
           "precision": "fp32"}
    assert describe_model(one, "0123456789abcdef") == "0123456789ab (resnet34s astp, 64-d, fp32)"
    two = {**one, "encoder": {**one["encoder"], "branches": 2, "embed_dim": 128}}
    assert describe_model(two, "0123456789abcdef") == "0123456789ab (2 x resnet34s astp, 128-d, fp32)"
