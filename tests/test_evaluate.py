import json
import os

import numpy as np
import pytest
from support.evaluate import corpus, model, tiny_model  # noqa: F401  (fixtures)

from ghostvlad import evaluate as ev
from ghostvlad import metrics
from ghostvlad.data.trials import read_trials
from ghostvlad.evaluate import EvalError, evaluate, read_cohort, write_outputs
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.scoring import as_norm, eer, min_dcf
from ghostvlad.scoring.asnorm import cohort_scores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_scores_are_cosines_and_metrics_match_scoring(model, corpus):
    res = evaluate(model, corpus["trials"], corpus["root"], cache_dir=corpus["cache"])
    trials = read_trials(corpus["trials"])
    direct = {f: model.embed(corpus["root"] / f) for f in trials.files()}
    expected = [float(direct[e] @ direct[t]) for e, t in zip(trials.enroll, trials.test)]
    np.testing.assert_allclose(res.scores, expected, atol=1e-5)
    assert np.ptp(res.scores) > 0.2  # the embeddings really differ
    np.testing.assert_array_equal(res.labels, trials.labels)
    assert (res.enroll, res.test, res.skipped, res.bad_files) == (trials.enroll, trials.test, 0, {})
    s = res.summary
    assert (s.eer, s.threshold) == eer(res.scores, res.labels)
    assert s.min_dcf == {p: min_dcf(res.scores, res.labels, p)[0] for p in (0.01, 0.05)}
    assert (s.n_trials, s.n_skipped, s.n_target, s.n_nontarget, s.n_files) == (15, 0, 3, 12, 6)
    assert s.asnorm is None and res.asnorm_scores is None and "asnorm" not in s.to_dict()


def test_metrics_alias_module():
    assert metrics.eer is eer and metrics.min_dcf is min_dcf
    assert metrics.eer([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])[0] == 0.0
    # best: accept only 0.9 -> P_miss 1/2, P_fa 0 -> 0.05 * 0.5 / min(0.05, 0.95)
    assert metrics.min_dcf([0.9, 0.2, 0.8, 0.1], [1, 1, 0, 0], 0.05, c_miss=1, c_fa=1)[0] == pytest.approx(0.5)


def test_bad_files_are_reported_once_and_their_trials_skipped(model, corpus):
    root = corpus["root"]
    (root / "bad.wav").write_bytes(b"RIFF this is not audio" * 10)
    lines = corpus["trials"].read_text().splitlines()
    extra = ["1 a/0.wav missing.wav", "0 missing.wav b/1.wav", "0 bad.wav c/0.wav", "1 bad.wav missing.wav"]
    corpus["trials"].write_text("\n".join(lines + extra) + "\n")
    res = evaluate(model, corpus["trials"], root, cache_dir=corpus["cache"])
    assert res.skipped == res.summary.n_skipped == 4
    assert res.summary.n_trials == len(res.scores) == 15 and res.summary.n_bad_files == 2
    bad = {str(root / "missing.wav"), str(root / "bad.wav")}
    assert set(res.bad_files) == bad
    for path, message in res.bad_files.items():
        assert message.startswith(f"{path}: ")
    assert "missing.wav" not in res.enroll + res.test


def test_all_trials_skipped_is_an_error(model, corpus, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match=r"all 15 trials skipped: 6 of 6 files could not be embedded \(first: .*empty"):
        evaluate(model, corpus["trials"], tmp_path / "empty", cache_dir=corpus["cache"])


def test_one_class_left_is_an_error(model, corpus):
    corpus["trials"].write_text("1 a/0.wav a/1.wav\n0 a/0.wav nope.wav\n")
    with pytest.raises(EvalError, match=r"trials.txt: need both target .* \(after skipping 1 trials\)"):
        evaluate(model, corpus["trials"], corpus["root"], cache_dir=corpus["cache"])


def _count_embedded(monkeypatch, model):
    calls = []
    original = model.iter_embeddings

    def counting(items, *args, **kwargs):
        calls.extend(items)
        return original(items, *args, **kwargs)

    monkeypatch.setattr(model, "iter_embeddings", counting)
    return calls


def test_cache_reuses_embeddings_and_tracks_model_and_files(model, corpus, monkeypatch):
    args = (corpus["trials"], corpus["root"])
    first = evaluate(model, *args, cache_dir=corpus["cache"])
    assert first.computed == 6
    calls = _count_embedded(monkeypatch, model)
    second = evaluate(model, *args, cache_dir=corpus["cache"])
    assert calls == [] and (second.computed, second.cached) == (0, 6)
    np.testing.assert_array_equal(second.scores, first.scores)
    assert second.summary == first.summary

    same = SpeakerModel(model.saved_encoder, FrontEndConfig(), threshold=0.5)  # threshold: cache still valid
    assert ev.model_key(same) == ev.model_key(model)
    assert evaluate(same, *args, cache_dir=corpus["cache"]).computed == 0
    os.utime(corpus["root"] / "b/1.wav", ns=(1, 1))  # a changed file is embedded again, alone
    assert evaluate(model, *args, cache_dir=corpus["cache"]).computed == 1
    assert calls == [os.path.join(corpus["root"], "b/1.wav")]

    other = evaluate(tiny_model(seed=1), *args, cache_dir=corpus["cache"])
    assert other.computed == 6 and not np.allclose(other.scores, first.scores)
    bf16 = SpeakerModel(model.saved_encoder, FrontEndConfig(), precision="bf16")
    assert evaluate(bf16, *args, cache_dir=corpus["cache"]).computed == 6
    assert len(list(corpus["cache"].iterdir())) == 3


def test_progress_counts_cached_files_as_done_from_the_start(model, corpus):
    calls = []
    evaluate(model, corpus["trials"], corpus["root"], cache_dir=corpus["cache"],
             on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 6) for k in range(7)]  # 6 distinct files, one report each after the start
    (corpus["root"] / "a" / "0.wav").touch()  # a changed file: embedded again, the other 5 come from the cache
    calls.clear()
    evaluate(model, corpus["trials"], corpus["root"], cache_dir=corpus["cache"],
             on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(5, 6), (6, 6)]


def test_unusable_cache_is_a_clear_error(model, corpus, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(EvalError, match=r"file/[0-9a-f]{24}: cannot open the embedding cache"):
        evaluate(model, corpus["trials"], corpus["root"], cache_dir=tmp_path / "file")
    key = ev.model_key(model)[:24]
    (corpus["cache"] / key).mkdir(parents=True)
    (corpus["cache"] / key / "part-x.npz").write_bytes(b"garbage" * 1000)
    with pytest.raises(EvalError, match="part-x.npz: unreadable embedding cache part .*; delete it"):
        evaluate(model, corpus["trials"], corpus["root"], cache_dir=corpus["cache"])


def test_cache_writers_only_create_their_own_files_and_compact_on_close(model, corpus, tmp_path):
    """No locks or journal (network filesystems): concurrent writers each add parts; a later reader sees all."""
    paths = [os.path.join(corpus["root"], f) for f in corpus["files"]]
    key, root = ev.model_key(model), tmp_path / "cache"
    vectors = np.eye(model.embed_dim, dtype=np.float32)
    first, second = ev.EmbeddingCache(root, key, model.embed_dim), ev.EmbeddingCache(root, key, model.embed_dim)
    first.get(paths[:2]), second.get(paths[2:4])  # both open before either writes
    first.add(paths[0], vectors[0]), first.add(paths[1], vectors[1]), second.add(paths[2], vectors[2])
    first.close()
    second.close()
    assert len(list((root / key[:24]).glob("part-*.npz"))) == 2 and not list(root.rglob("*.tmp"))
    with ev.EmbeddingCache(root, key, model.embed_dim) as cache:
        found = cache.get(paths)
    assert sorted(found) == sorted(paths[:3])
    np.testing.assert_array_equal(found[paths[2]], vectors[2])
    assert len(list((root / key[:24]).glob("part-*.npz"))) == 1  # compacted by the last reader


def test_interrupted_run_resumes_without_redoing_work(model, corpus, monkeypatch):
    original = model.iter_embeddings

    def dies_after_four(items, *args, **kwargs):
        for k, r in enumerate(original(items, *args, **kwargs)):
            if k == 4:
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(model, "iter_embeddings", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, corpus["trials"], corpus["root"], cache_dir=corpus["cache"])
    monkeypatch.undo()
    assert evaluate(model, corpus["trials"], corpus["root"], cache_dir=corpus["cache"]).computed == 2


def test_asnorm_with_cohort_list_or_manifest(model, corpus, tmp_path, monkeypatch):
    listing = tmp_path / "cohort.txt"  # absolute paths
    listing.write_text("# cohort\n" + "\n".join(corpus["cohort"]) + "\n\n")
    manifest = tmp_path / "cohort" / "cohort.csv"  # paths relative to the manifest
    manifest.write_text("path,speaker,duration\n" + "".join(f"c{k}.wav,s{k},1.1\n" for k in range(4)))
    assert read_cohort(listing) == read_cohort(manifest) == corpus["cohort"]

    res = evaluate(model, corpus["trials"], corpus["root"], cohort=listing, top_k=3, cache_dir=corpus["cache"])
    trials = read_trials(corpus["trials"])
    emb = {f: model.embed(corpus["root"] / f) for f in trials.files()}
    cohort = model.embed_batch(corpus["cohort"])
    e = cohort_scores(np.stack([emb[f] for f in trials.enroll]), cohort)
    t = cohort_scores(np.stack([emb[f] for f in trials.test]), cohort)
    expected = as_norm(res.scores, e, t, top_k=3)
    np.testing.assert_allclose(res.asnorm_scores, expected, atol=1e-4)
    assert not np.allclose(res.asnorm_scores, res.scores)
    norm = res.summary.asnorm
    assert (norm.eer, norm.threshold) == eer(res.asnorm_scores, res.labels)
    assert norm.min_dcf[0.05] == min_dcf(res.asnorm_scores, res.labels, 0.05)[0]
    assert (norm.top_k, norm.cohort_size, norm.cohort_bad_files) == (3, 4, 0)
    np.testing.assert_array_equal(res.scores, evaluate(model, corpus["trials"], corpus["root"],
                                                       cache_dir=corpus["cache"]).scores)

    monkeypatch.setattr(ev, "_ASNORM_CELLS", 5)  # one file / trial per chunk: same result
    chunked = evaluate(model, corpus["trials"], corpus["root"], cohort=manifest, top_k=3, cache_dir=corpus["cache"])
    np.testing.assert_allclose(chunked.asnorm_scores, res.asnorm_scores, atol=1e-5)  # float32 matmul rounding

    monkeypatch.undo()
    gone = str(tmp_path / "gone.wav")  # a bad cohort file is reported and left out of the cohort
    with_bad = evaluate(model, corpus["trials"], corpus["root"], cohort=[*corpus["cohort"], gone], top_k=3,
                        cache_dir=corpus["cache"])
    np.testing.assert_allclose(with_bad.asnorm_scores, res.asnorm_scores, atol=1e-12)
    assert with_bad.summary.asnorm.cohort_bad_files == 1 and list(with_bad.bad_files) == [gone]
    assert (with_bad.summary.n_bad_files, with_bad.skipped) == (0, 0)


def test_cohort_errors(model, corpus, tmp_path):
    with pytest.raises(EvalError, match="nothere.txt: cannot read cohort list"):
        read_cohort(tmp_path / "nothere.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(EvalError, match="empty.txt: cohort list has no files"):
        read_cohort(tmp_path / "empty.txt")
    (tmp_path / "m.csv").write_text("path,speaker,duration\nx.wav,s1\n")
    with pytest.raises(EvalError, match=r"m.csv:2: expected 3 fields"):
        read_cohort(tmp_path / "m.csv")
    with pytest.raises(EvalError, match="AS-norm needs top_k >= 2, got 1"):
        evaluate(model, corpus["trials"], corpus["root"], cohort=corpus["cohort"], top_k=1, cache_dir=corpus["cache"])
    with pytest.raises(EvalError, match=r"cohort: only 1 of 2 cohort files could be embedded; AS-norm needs at least 2 "
                                        r"\(first: .*x.wav: file not found\)"):
        evaluate(model, corpus["trials"], corpus["root"], cohort=[corpus["cohort"][0], str(tmp_path / "x.wav")],
                 cache_dir=corpus["cache"])


def test_write_outputs(model, corpus, tmp_path):
    res = evaluate(model, corpus["trials"], corpus["root"], cohort=corpus["cohort"], top_k=3, cache_dir=corpus["cache"])
    out = tmp_path / "out"
    write_outputs(res, out, json_path=tmp_path / "s.json")
    assert sorted(os.listdir(out)) == ["det.png", "scores.txt", "scores_asnorm.txt", "summary.json"]
    rows = [ln.split() for ln in (out / "scores.txt").read_text().splitlines()]
    assert [r[1:] for r in rows] == [[str(y), e, t] for y, e, t in zip(res.labels, res.enroll, res.test)]
    np.testing.assert_allclose([float(r[0]) for r in rows], res.scores, atol=1e-6)
    asn = [float(ln.split()[0]) for ln in (out / "scores_asnorm.txt").read_text().splitlines()]
    np.testing.assert_allclose(asn, res.asnorm_scores, atol=1e-6)
    assert (out / "det.png").read_bytes().startswith(PNG_MAGIC)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((tmp_path / "s.json").read_text()) == res.summary.to_dict()
    # the file's keys, in order, as summary.json has always had them (scripts parse it)
    metrics = ["eer", "threshold", "min_dcf_p0.01", "min_dcf_p0.05"]
    assert list(summary) == ["trials", *metrics, "n_trials", "n_skipped", "n_target", "n_nontarget", "n_files",
                             "n_bad_files", "precision", "asnorm"]
    assert list(summary["asnorm"]) == [*metrics, "top_k", "cohort_size", "cohort_bad_files"]
    s = res.summary
    assert summary["trials"] == str(corpus["trials"]) and summary["precision"] == "fp32"
    assert [summary[k] for k in metrics] == [s.eer, s.threshold, s.min_dcf[0.01], s.min_dcf[0.05]]
    assert [summary["asnorm"][k] for k in metrics] == [s.asnorm.eer, s.asnorm.threshold, *s.asnorm.min_dcf.values()]
    assert (summary["n_trials"], summary["n_skipped"]) == (15, 0)
