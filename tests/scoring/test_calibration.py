import json

import numpy as np
import pytest
from scipy.stats import norm
from support.calibration import tiny_model

from ghostvlad.loading import load_model
from ghostvlad.scoring import eer
from ghostvlad.scoring.calibration import (
    Calibration,
    CalibrationError,
    DecisionRule,
    cllr,
    far_threshold,
    fit_calibration,
)

MU_T, MU_N, SIGMA = 0.5, 0.2, 0.1  # target / non-target cosine scores ~ N(mu, sigma^2)


def true_llr(s):
    """log N(s; mu_t, sigma) / N(s; mu_n, sigma): linear for equal variances."""
    return ((MU_T - MU_N) * s - (MU_T ** 2 - MU_N ** 2) / 2) / SIGMA ** 2


def gaussian_scores(n_target, n_non, seed=0):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(MU_T, SIGMA, n_target), rng.normal(MU_N, SIGMA, n_non)]
    return scores, np.r_[np.ones(n_target, int), np.zeros(n_non, int)]


@pytest.mark.parametrize("n_target, n_non, prior", [(20000, 20000, 0.5), (3000, 30000, 0.5), (3000, 30000, 0.1)])
def test_fitted_llr_is_close_to_the_true_llr(n_target, n_non, prior):
    scores, labels = gaussian_scores(n_target, n_non)
    cal = fit_calibration(scores, labels, prior=prior)
    grid = np.linspace(MU_N - 2 * SIGMA, MU_T + 2 * SIGMA, 50)  # LLR from -12 to +12
    assert np.abs(cal.llr(grid) - true_llr(grid)).max() < 0.5
    assert cal.a == pytest.approx((MU_T - MU_N) / SIGMA ** 2, rel=0.03)
    assert abs(-cal.b / cal.a - (MU_T + MU_N) / 2) < 0.005  # where LLR = 0
    # the posterior at any prior follows Bayes' rule with the true densities
    s = np.array([0.3, 0.35, 0.4])
    for p in (0.5, 0.01):
        bayes = p * norm.pdf(s, MU_T, SIGMA) / (p * norm.pdf(s, MU_T, SIGMA) + (1 - p) * norm.pdf(s, MU_N, SIGMA))
        np.testing.assert_allclose(cal.posterior(s, p), bayes, atol=0.03)
    assert cal.prior == prior
    assert cllr(cal.llr(scores), labels) < cllr(np.zeros_like(scores), labels) == pytest.approx(1.0)


def _far(scores, labels, t):
    return np.mean(scores[labels == 0] >= t)


@pytest.mark.parametrize("seed", [0, 1])
def test_thresholds_are_right_on_the_data(seed):
    scores, labels = gaussian_scores(300, 1000, seed)
    scores = np.round(scores, 2)  # ties
    cal = fit_calibration(scores, labels, fars=(0.01, 0.05, 0.29))
    assert cal.thresholds["eer"] == eer(scores, labels)[1]
    for far in (0.01, 0.05, 0.29):
        t = cal.thresholds[f"far@{far:g}"]
        assert _far(scores, labels, t) <= far
        lower = scores[scores < t].max()  # the next lower threshold accepts too many non-targets
        assert _far(scores, labels, lower) > far
        assert t == far_threshold(scores, labels, far)


def test_far_threshold_hand_case():
    # non-targets .9 .5 .4 .3 .1 .0 .0 .0 .0 .0 (10): 10% FAR allows one false accept (.9), so .5 must be rejected;
    # the next higher score is the target .6: threshold (.5 + .6) / 2
    scores = [0.9, 0.5, 0.4, 0.3, 0.1, 0, 0, 0, 0, 0, 0.6, 0.45]
    labels = [0] * 10 + [1, 1]
    assert far_threshold(scores, labels, 0.1) == pytest.approx(0.55)
    assert far_threshold(scores, labels, 0.05) == np.nextafter(0.9, 1)  # nothing higher: just above .9
    with pytest.raises(CalibrationError, match="false-accept rate must be in"):
        far_threshold(scores, labels, 1.0)


def test_fit_errors():
    with pytest.raises(CalibrationError, match="separate targets from non-targets perfectly"):
        fit_calibration([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])
    with pytest.raises(CalibrationError, match="prior must be in"):
        fit_calibration([0.9, 0.1, 0.2], [1, 0, 1], prior=1.0)
    with pytest.raises(CalibrationError, match="do not rise"):
        fit_calibration([0.1, 0.2, 0.9, 0.8, 0.15], [1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="need both target"):
        fit_calibration([0.1, 0.2], [1, 1])


def test_decision_rules():
    cal = Calibration(20.0, -10.0, 0.5, {"eer": 0.45, "far@0.01": 0.6})

    class Model:
        calibration = cal.to_dict()
        threshold = 0.3

    d = DecisionRule.for_model(Model)(0.5)  # default: the eer point, with LLR and posterior
    assert (d.accept, d.point.name, d.llr) == (True, "eer", 0.0) and d.p_same == pytest.approx(0.5)
    assert d.explain() == "operating point eer, threshold 0.4500; LLR 0.00, P(same)=0.500 at prior 0.5"
    d = DecisionRule.for_model(Model, "far@0.01", prior=0.2)(0.5)
    assert d.accept is False and d.p_same == pytest.approx(0.2)
    bayes = DecisionRule.for_model(Model, "bayes", prior=0.2)
    assert bayes.point.threshold == pytest.approx((np.log(4) + 10) / 20)  # LLR = -logit(0.2)
    for s in np.linspace(0.4, 0.7, 31):
        d = bayes(s)
        assert d.accept == (d.p_same >= 0.5 - 1e-12)
    given = DecisionRule.for_model(Model, threshold=0.7)(0.65)
    assert (given.accept, given.explain()) == (False, "threshold 0.7000; LLR 3.00, P(same)=0.953 at prior 0.5")
    with pytest.raises(CalibrationError, match=r"unknown operating point 'far@0.5'; this model has: eer, far@0.01, bayes"):
        DecisionRule.for_model(Model, "far@0.5")
    with pytest.raises(CalibrationError, match="not both"):
        DecisionRule.for_model(Model, "eer", threshold=0.5)

    class Plain:
        calibration = None
        threshold = 0.3

    assert DecisionRule.for_model(Plain)(0.4).explain() == "threshold 0.3000"
    with pytest.raises(CalibrationError, match="needs a calibrated model"):
        DecisionRule.for_model(Plain, "eer")
    for bogus in ("bogus", "far@2", "far@x", "far"):  # not a name at all: said so, calibrated model or not
        with pytest.raises(CalibrationError, match=f"unknown operating point '{bogus}': use eer, far@X.* or bayes$"):
            DecisionRule.for_model(Plain, bogus)
        with pytest.raises(CalibrationError, match=f"'{bogus}': use eer, .*; this model has: eer, far@0.01, bayes$"):
            DecisionRule.for_model(Model, bogus)
    none = DecisionRule.for_model(None)(0.4)
    assert (none.accept, none.explain()) == (None, "")


def test_invalid_stored_calibration():
    with pytest.raises(CalibrationError, match="invalid calibration in the model \\(KeyError"):
        Calibration.from_dict({"b": 1.0})
    with pytest.raises(CalibrationError, match="invalid calibration in the model"):
        Calibration.from_dict({"a": -1.0, "b": 0.0})
    cal = Calibration(12.5, -3.25, 0.1, {"eer": 0.3, "far@0.001": 0.5})
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


# -- stored with the model, used by the CLI --------------------------------------------------------------

@pytest.mark.parametrize("name", ["model", "model.safetensors"])
def test_calibration_is_stored_and_loaded_with_the_model(tmp_path, name):
    model = tiny_model()
    model.calibration = Calibration(12.5, -3.25, 0.1, {"eer": 0.3}).to_dict()
    loaded = load_model(model.save(tmp_path / name))
    assert loaded.calibration == model.calibration and loaded.to_config()["calibration"] == model.calibration
    model.calibration = None
    assert load_model(model.save(tmp_path / name)).calibration is None
