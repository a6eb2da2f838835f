import numpy as np
import pytest
from sklearn.metrics import det_curve

from ghostvlad.scoring.metrics import det_points, eer, min_dcf


def _rates(scores, labels, t):
    """Brute force (FAR, FRR) when accepting score >= t."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    return np.mean(scores[labels == 0] >= t), np.mean(scores[labels == 1] < t)


def _thresholds(scores):
    return np.append(np.unique(scores), np.inf)


def _gaussian(n_target, n_non, shift, seed):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(shift, 1.0, n_target), rng.normal(0.0, 1.0, n_non)])
    return scores, np.r_[np.ones(n_target, int), np.zeros(n_non, int)]


def test_eer_hand_case_staircase():
    # Descending: .9T .8T .7T .6N .4N .3T .2N .1N. ROC corners (fpr, tpr, thr): (0, .75, .7),
    # (.5, .75, .4), (.5, 1, .3). On fpr in [0, .5] tpr = .75, so 1 - x = .75 gives EER .25; the
    # threshold interpolates between .7 (fpr 0) and .4 (fpr .5): .55, where FA = 1/4 (.6) and miss = 1/4 (.3).
    scores = [0.9, 0.8, 0.7, 0.3, 0.6, 0.4, 0.2, 0.1]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    rate, thr = eer(scores, labels)
    assert rate == pytest.approx(0.25, abs=1e-9)
    assert thr == pytest.approx(0.55, abs=1e-9)
    assert _rates(scores, labels, thr) == (0.25, 0.25)


def test_eer_hand_case_tie_interpolated():
    # Targets 1.0, .5; non-targets .5, 0. ROC (0, 0) -> (0, .5) @1.0 -> (.5, 1) @.5 (tie) -> (1, 1).
    # On the tie segment tpr = .5 + x; 1 - x = .5 + x gives x = .25; threshold 1.0 + (.25 / .5) * (.5 - 1.0) = .75.
    rate, thr = eer([1.0, 0.5, 0.5, 0.0], [1, 1, 0, 0])
    assert rate == pytest.approx(0.25, abs=1e-9)
    assert thr == pytest.approx(0.75, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_matches_brute_force(seed):
    scores, labels = _gaussian(300, 700, 2.0, seed)
    rate, thr = eer(scores, labels)
    rates = np.array([_rates(scores, labels, t) for t in _thresholds(scores)])
    brute = rates.max(axis=1).min()  # min over thresholds of max(FAR, FRR)
    assert abs(rate - brute) <= 1 / 300
    far, frr = _rates(scores, labels, thr)
    assert abs(far - rate) <= 2 / 300 and abs(frr - rate) <= 2 / 300


def test_eer_perfect_separation():
    scores = [3.0, 2.5, 2.0, 1.0, 0.5]
    labels = [1, 1, 1, 0, 0]
    rate, thr = eer(scores, labels)
    assert rate == pytest.approx(0.0, abs=1e-9)
    assert 1.0 < thr <= 2.0
    assert _rates(scores, labels, thr) == (0.0, 0.0)


def test_eer_random_labels_is_half():
    rng = np.random.default_rng(3)
    rate, _ = eer(rng.normal(size=20000), rng.integers(0, 2, 20000))
    assert rate == pytest.approx(0.5, abs=0.015)


def _brute_dcf(scores, labels, p, c_miss, c_fa):
    costs = [
        (c_miss * p * frr + c_fa * (1 - p) * far) / min(c_miss * p, c_fa * (1 - p))
        for far, frr in (_rates(scores, labels, t) for t in _thresholds(scores))
    ]
    return min(costs)


@pytest.mark.parametrize("p_target", [0.01, 0.05])
@pytest.mark.parametrize(("c_miss", "c_fa"), [(1.0, 1.0), (10.0, 1.0), (1.0, 3.0)])
def test_min_dcf_matches_brute_force(p_target, c_miss, c_fa):
    scores, labels = _gaussian(200, 1800, 2.5, seed=4)
    scores = np.round(scores, 1)  # many ties
    value, thr = min_dcf(scores, labels, p_target, c_miss, c_fa)
    assert value == pytest.approx(_brute_dcf(scores, labels, p_target, c_miss, c_fa), abs=1e-12)
    far, frr = _rates(scores, labels, thr)
    norm = min(c_miss * p_target, c_fa * (1 - p_target))
    achieved = (c_miss * p_target * frr + c_fa * (1 - p_target) * far) / norm
    assert achieved == pytest.approx(value, abs=1e-12)


def test_min_dcf_hand_case():
    # Targets .9 .8 .3, non-targets .7 .2, p_target .5. Accepting >= t, (P_miss, P_fa):
    # .9 (2/3, 0), .8 (1/3, 0), .7 (1/3, 1/2), .3 (0, 1/2), .2 (0, 1), reject-all (1, 0).
    # c_miss = c_fa = 1: normaliser .5, best .5 * 1/3 / .5 = 1/3 at t = .8.
    # c_miss = 10: normaliser .5; at .8: 10*.5/3 = 1.667; at .3: .5*.5 = .25 -> .25 / .5 = .5 at t = .3.
    scores, labels = [0.9, 0.8, 0.3, 0.7, 0.2], [1, 1, 1, 0, 0]
    assert min_dcf(scores, labels, 0.5) == pytest.approx((1 / 3, 0.8))
    assert min_dcf(scores, labels, 0.5, c_miss=10.0) == pytest.approx((0.5, 0.3))


def test_min_dcf_reject_all_threshold_rejects_everything():
    # Tiny p_target with overlapping scores: rejecting all is optimal (cost 1).
    value, thr = min_dcf([1.0, 0.0, 2.0], [1, 0, 0], 0.001)
    assert value == pytest.approx(1.0)
    assert thr > 2.0


def test_det_points_consistent_with_sklearn():
    scores, labels = _gaussian(150, 350, 1.5, seed=5)
    scores = np.round(scores, 1)
    fa, miss = det_points(scores, labels)
    assert (fa[0], miss[0], fa[-1], miss[-1]) == (0.0, 1.0, 1.0, 0.0)
    assert np.all(np.diff(fa) >= 0) and np.all(np.diff(miss) <= 0)
    ours = list(zip(np.round(fa, 12), np.round(miss, 12)))
    brute = [tuple(np.round(_rates(scores, labels, t), 12)) for t in _thresholds(scores)[::-1]]
    assert ours == brute
    ref_fa, ref_miss, _ = det_curve(labels, scores)
    assert set(zip(np.round(ref_fa, 12), np.round(ref_miss, 12))) <= set(ours)

@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [1, 0, 1], "differ in length"),
        ([0.1, 0.2, 0.3], [1, 0, 2], "labels must be 0"),
        ([0.1, 0.2], [1, 1], "need both target"),
        ([0.1, np.nan], [1, 0], "must be finite"),
        ([[0.1, 0.2]], [[1, 0]], "must be 1-D"),
        (["a", "b"], [1, 0], "scores must be numeric"),
    ],
)
def test_bad_input(scores, labels, message):
    for fn in (eer, lambda s, y: min_dcf(s, y, 0.01), det_points):
        with pytest.raises(ValueError, match=message):
            fn(scores, labels)


def test_min_dcf_bad_parameters():
    with pytest.raises(ValueError, match="p_target"):
        min_dcf([0.0, 1.0], [0, 1], 1.0)
    with pytest.raises(ValueError, match="positive"):
        min_dcf([0.0, 1.0], [0, 1], 0.01, c_fa=0.0)
