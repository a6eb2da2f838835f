import numpy as np
import pytest

from ghostvlad.scoring.identification import UNKNOWN, IdentificationCounts, identification_counts, leave_one_out
from ghostvlad.scoring.metrics import MetricsError


def _brute(scores, truth, threshold):
    """Query by query, as a person would tally them."""
    out = dict(enrolled=0, unknown=0, top1=0, identified=0, false_alarms=0)
    for row, t in zip(scores, truth):
        best = max(range(len(row)), key=lambda j: (row[j], -j))  # first of ties
        accepted = row[best] >= threshold
        if t == UNKNOWN:
            out["unknown"] += 1
            out["false_alarms"] += accepted
        else:
            out["enrolled"] += 1
            out["top1"] += best == t
            out["identified"] += best == t and accepted
    return IdentificationCounts(**out)


def test_hand_case():
    scores = [[0.9, 0.1, 0.2],   # speaker 0, right and accepted
              [0.3, 0.2, 0.1],   # speaker 1, wrong (0 ranks first)
              [0.1, 0.2, 0.4],   # speaker 2, right but below the threshold
              [0.1, 0.7, 0.0],   # unknown, accepted as speaker 1: a false alarm
              [0.2, 0.3, 0.1]]   # unknown, rejected
    c = identification_counts(scores, [0, 1, 2, UNKNOWN, UNKNOWN], threshold=0.5)
    assert c == IdentificationCounts(enrolled=3, unknown=2, top1=2, identified=1, false_alarms=1)
    assert c.top1_rate == pytest.approx(2 / 3)
    assert c.identification_rate == pytest.approx(1 / 3)
    assert c.unknown_rejection_rate == pytest.approx(0.5)


def test_threshold_is_inclusive():
    c = identification_counts([[0.5, 0.1], [0.5, 0.1]], [0, UNKNOWN], threshold=0.5)
    assert (c.identified, c.false_alarms) == (1, 1)


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.uniform(-1, 1, (60, 7)), 1)  # rounded: ties happen
    truth = rng.integers(-1, 7, 60)
    threshold = float(rng.uniform(-0.2, 0.8))
    assert identification_counts(scores, truth, threshold) == _brute(scores.tolist(), truth.tolist(), threshold)


def test_rounds_pool_by_adding():
    rng = np.random.default_rng(9)
    s1, s2 = rng.normal(size=(10, 4)), rng.normal(size=(8, 3))
    t1, t2 = rng.integers(-1, 4, 10), rng.integers(-1, 3, 8)
    pooled = identification_counts(s1, t1, 0.3) + identification_counts(s2, t2, 0.3)
    assert pooled == _brute([*s1.tolist(), *s2.tolist()], [*t1.tolist(), *t2.tolist()], 0.3)


def test_rates_without_queries_are_nan():
    c = IdentificationCounts()
    assert np.isnan(c.top1_rate) and np.isnan(c.identification_rate) and np.isnan(c.unknown_rejection_rate)


@pytest.mark.parametrize("scores, truth, threshold, message", [
    ([[0.1, 0.2]], [0, 1], 0.5, "truth must be 1"),
    ([[0.1, 0.2]], [2], 0.5, "outside -1..1"),
    ([[0.1, 0.2]], [-2], 0.5, "outside -1..1"),
    ([[0.1, 0.2]], [0.0], 0.5, "integer"),
    ([0.1, 0.2], [0, 1], 0.5, "(queries, speakers)"),
    (np.zeros((2, 0)), [0, 0], 0.5, "at least one speaker"),
    ([[np.nan, 0.2]], [0], 0.5, "finite"),
    ([[0.1, 0.2]], [0], float("inf"), "finite"),
])
def test_bad_input_is_one_clear_error(scores, truth, threshold, message):
    with pytest.raises(MetricsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        identification_counts(scores, truth, threshold)


def _unit(*v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_leave_one_out_hand_case():
    # Three speakers on three axes, two sessions each; B's second session sounds like A.
    a, b, c = _unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 0, 1)
    sessions = {"A": [np.stack([a, a]), np.stack([a])],
                "B": [np.stack([b]), np.stack([_unit(1, 0.2, 0)])],
                "C": [np.stack([c]), np.stack([c, c])]}
    got = leave_one_out(sessions, threshold=0.9)
    # (x = B's A-like utterance: cosine 0.98 with a, 0.20 with b.) Enrolled from session 0 (means a, b, c):
    #   B unknown, gallery A, C: A's a and C's c, c right and accepted; b rejected, x taken for A (false alarm).
    #   A unknown, gallery B, C: B's x nearest B but at 0.20 (rejected); C's c, c accepted; a, a, a rejected.
    #   C unknown, gallery A, B: A's a accepted; B's x nearest A (wrong); c, c, c rejected.
    # Enrolled from session 1 (means a, x, c):
    #   B unknown, gallery A, C: A's a, a and C's c accepted; b rejected, x taken for A (false alarm).
    #   A unknown, gallery B (x), C: B's b nearest B at 0.20 (rejected); C's c accepted; a, a, a taken for B.
    #   C unknown, gallery A, B (x): A's a, a accepted (1 > 0.98); B's b nearest B, rejected; c, c, c rejected.
    assert got == IdentificationCounts(enrolled=16, unknown=16, top1=15, identified=12, false_alarms=5)


def test_leave_one_out_needs_two_speakers():
    with pytest.raises(MetricsError, match="two or more speakers"):
        leave_one_out({"A": [np.eye(2)]}, 0.5)
