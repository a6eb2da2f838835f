import re

import numpy as np
import pytest
from pyannote.core import Annotation
from pyannote.core import Segment as Turn
from pyannote.database.util import load_rttm
from sklearn.metrics import adjusted_rand_score
from support.diarize import RATE, conversation, der, model, pause, voice  # noqa: F401  (fixtures)

from ghostvlad.diarize import (
    Segment,
    VadConfig,
    _frame_labels,
    cluster,
    count_speakers,
    diarize,
    rttm_lines,
    speech_regions,
    write_rttm,
)


def annotation(segments: list[Segment]) -> Annotation:
    out = Annotation(uri="conv")
    for s in segments:
        out[Turn(s.start, s.end)] = s.speaker
    return out


def test_energy_vad_finds_known_silent_gaps():
    rng = np.random.default_rng(0)
    truth = [(0.5, 2.0), (2.6, 4.1), (5.0, 6.2)]
    wave = pause(7.0, rng)
    for start, end in truth:
        wave[round(start * RATE):round(end * RATE)] += voice("low", end - start, rng)
    wave[round(6.6 * RATE):round(6.7 * RATE)] += voice("low", 0.1, rng)  # a 0.1 s click: shorter than min_speech
    wave[int(3.3 * RATE):int(3.45 * RATE)] *= 0.01  # a 0.15 s dip inside speech: shorter than min_silence
    np.testing.assert_allclose(speech_regions(wave), truth, atol=0.03)
    np.testing.assert_allclose(speech_regions(wave[::2], 8000), truth, atol=0.03)
    assert len(speech_regions(wave, config=VadConfig(min_silence=0.05))) == 4  # the dip splits a region
    assert speech_regions(wave, config=VadConfig(min_speech=0.05))[-1] == pytest.approx([6.6, 6.7], abs=0.03)
    steady = rng.normal(0, 0.1, 2 * RATE)
    assert speech_regions(steady).tolist() == [[0.0, 2.0]]  # energy spread under min_range_db: all speech
    sparse = pause(31.0, rng)  # speech in 1 s of 31 (under the 5 % above the speech percentile)
    sparse[15 * RATE:16 * RATE] += voice("low", 1.0, rng)
    np.testing.assert_allclose(speech_regions(sparse), [(15.0, 16.0)], atol=0.03)
    silent = np.zeros(31 * RATE, np.float32)  # digital silence around it
    silent[15 * RATE:16 * RATE] = sparse[15 * RATE:16 * RATE]
    np.testing.assert_allclose(speech_regions(silent), [(15.0, 16.0)], atol=0.03)
    with pytest.raises(ValueError, match="VadConfig: threshold 1.5 must be in"):
        VadConfig(threshold=1.5)


def test_clustering_of_given_embeddings():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    sizes = (20, 7, 30)
    x = np.concatenate([c + 0.3 * rng.normal(size=(n, 16)) for c, n in zip(centres, sizes)])
    truth = np.repeat(np.arange(3), sizes)
    labels = cluster(x)
    assert len(set(labels)) == 3 and adjusted_rand_score(truth, labels) == 1.0
    assert adjusted_rand_score(truth, cluster(x, speakers=3)) == 1.0
    assert len(set(cluster(x, speakers=2))) == 2
    assert len(set(cluster(x, max_speakers=2))) <= 2
    assert adjusted_rand_score(truth, cluster(x, 3, max_points=30)) == 1.0  # a subset clustered, the rest assigned
    one = centres[0] + 0.3 * rng.normal(size=(25, 16))
    assert set(cluster(one)) == {0}
    assert cluster(x[:2], speakers=5).tolist() == [0, 1] and cluster(x[:0]).shape == (0,)
    with pytest.raises(ValueError, match="speakers must be at least 1, got 0"):
        cluster(x, speakers=0)


def _count_by_brute_force(x: np.ndarray, threshold: float, min_share: float) -> int:
    """Reference for count_speakers: recompute every cluster mean and every pair at each merge."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    groups = [[i] for i in range(len(x))]
    while len(groups) > 1:
        means = np.stack([x[g].sum(axis=0) for g in groups])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        sim = means @ means.T
        np.fill_diagonal(sim, -np.inf)
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        if sim[i, j] < threshold:
            break
        groups[i] += groups.pop(j)
    return sum(len(g) >= min_share * len(x) for g in groups) or len(groups)


def test_speaker_count_from_a_threshold_on_cluster_means():
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:3] * 3
    sizes = (20, 7, 30)
    x = np.concatenate([c + 0.3 * rng.normal(size=(n, 16)) for c, n in zip(centres, sizes)])
    stray = np.eye(16)[[5]]  # one window unlike all the others: 1/58 of them, under the default 5 %
    both = np.concatenate([x, stray])
    assert count_speakers(both, 0.5) == 3
    assert count_speakers(both, 0.5, min_share=0.0) == 4
    assert count_speakers(both, -1.0) == 1  # everything is one speaker
    assert count_speakers(both, 1.0) == 58 and count_speakers(both, 1.0, min_share=0.0) == 58  # nothing merges
    for bad in (1.01, -1.5, float("nan")):
        with pytest.raises(ValueError, match="threshold must be a cosine in \\[-1, 1\\]"):
            count_speakers(both, bad)
    assert count_speakers(x[:0], 0.5) == 1
    # hand-checked: 0 and 30 degrees merge first (cos 30 = 0.866); their mean, at 15, is 45 from 60 (cos 0.707)
    angles = np.radians([0.0, 30.0, 60.0])
    arc = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert count_speakers(arc, 0.85, min_share=0.0) == 2 and count_speakers(arc, 0.7, min_share=0.0) == 1
    noisy = rng.normal(size=(60, 8)) + rng.normal(size=(4, 8))[rng.integers(0, 4, 60)]
    for threshold in (0.2, 0.4, 0.6, 0.8):
        for share in (0.0, 0.05):
            assert count_speakers(noisy, threshold, share) == _count_by_brute_force(noisy, threshold, share)
    with pytest.raises(ValueError, match="min_share must be in"):
        count_speakers(x, 0.5, min_share=1.0)
    assert len(set(cluster(both, threshold=0.5))) == 3 and len(set(cluster(both, max_speakers=2, threshold=0.5))) == 2


def test_overlapping_windows_resolve_by_majority_then_nearest_centre():
    rng = np.random.default_rng(0)
    starts = np.arange(12) * 0.5
    ends = starts + 2.0
    labels = rng.integers(0, 3, size=12)
    frames = 700  # 7 s at 10 ms: the last frames are covered by no window
    got = _frame_labels(starts, ends, labels, frames, 0.01)
    expected = []
    for f in range(frames):  # reference: count the windows covering each frame's centre
        t = (f + 0.5) * 0.01
        covering = [i for i in range(12) if starts[i] <= t < ends[i]]
        if not covering:
            expected.append(-1)
            continue
        votes = np.bincount(labels[covering], minlength=3).astype(float)
        nearest = min(range(12), key=lambda i: abs((starts[i] + ends[i]) / 2 - t))
        votes[labels[nearest]] += 0.5
        expected.append(int(np.argmax(votes)))
    assert got.tolist() == expected


def test_diarize_conversation_of_distinct_signals(model, conversation):
    wave, reference = conversation
    duration = len(wave) / RATE
    estimated = diarize(model, wave)
    assert len({s.speaker for s in estimated}) == 3
    assert der(reference, annotation(estimated), duration) < 0.05
    assert [s.start for s in estimated] == sorted(s.start for s in estimated)
    given = diarize(model, wave, speakers=3)
    assert der(reference, annotation(given), duration) < 0.05
    assert len({s.speaker for s in diarize(model, wave, speakers=2)}) == 2


def test_diarize_counts_speakers_with_the_models_threshold(model, conversation, monkeypatch):
    wave, reference = conversation
    duration = len(wave) / RATE
    monkeypatch.setattr(model, "threshold", 0.9)  # between the three kinds' window similarities (0.74-0.84 vs 0.98)
    stored = diarize(model, wave)
    assert len({s.speaker for s in stored}) == 3 and der(reference, annotation(stored), duration) < 0.05
    assert len({s.speaker for s in diarize(model, wave, threshold=0.5)}) == 1  # an explicit threshold wins
    monkeypatch.setattr(model, "threshold", 0.5)
    assert len({s.speaker for s in diarize(model, wave)}) == 1


def test_rttm_format_and_atomic_write(tmp_path):
    segments = [Segment(0.0, 1.25, "SPEAKER_00"), Segment(1.5, 3.0, "SPEAKER_01"), Segment(3.2, 4.0, "SPEAKER_00")]
    path = tmp_path / "out" / "conv.rttm"
    write_rttm(segments, path, "conv")
    lines = path.read_text().splitlines()
    assert lines[1] == "SPEAKER conv 1 1.500 1.500 <NA> <NA> SPEAKER_01 <NA> <NA>"
    field = r"\d+\.\d{3}"
    assert all(re.fullmatch(rf"SPEAKER conv 1 {field} {field} <NA> <NA> SPEAKER_\d\d <NA> <NA>", ln) for ln in lines)
    loaded = load_rttm(path)["conv"]  # an independent RTTM reader
    assert [(t.start, t.end, label) for t, _, label in loaded.itertracks(yield_label=True)] == [
        (s.start, s.end, s.speaker) for s in segments
    ]
    assert sorted(p.name for p in path.parent.iterdir()) == ["conv.rttm"]
    with pytest.raises(ValueError, match="RTTM file id must be non-empty without whitespace"):
        rttm_lines(segments, "my file")
