"""The demo recipe learns: held-out synthetic speakers are verified far better than chance, in-domain and
cross-domain (another synthesiser through unseen channel types)."""
from pathlib import Path

import pytest

from ghostvlad import load_model
from ghostvlad.recipes import CROSS_DOMAIN, DEMO_CORPUS, run_demo
from ghostvlad.scoring.calibration import DecisionRule


@pytest.mark.slow
def test_demo_recipe_learns_voices_that_transfer(tmp_path: Path, monkeypatch):
    from dataclasses import replace

    import ghostvlad.recipes as recipes

    # a smaller corpus and cross-domain set, shorter crops: the recipe as `make demo` runs it, in four minutes
    monkeypatch.setattr(recipes, "DEMO_CORPUS", replace(DEMO_CORPUS, speakers=60, test_speakers=8, trials=360,
                                                        min_duration=1.5, max_duration=3.0, seed=1))
    monkeypatch.setattr(recipes, "CROSS_DOMAIN", replace(CROSS_DOMAIN, speakers=9, test_speakers=8, utterances=2,
                                                         trials=180, min_duration=1.5, max_duration=3.0))
    stages = []
    result = run_demo(tmp_path, seed=1, overrides=["data.frames=120", "train.batch_size=24", "train.epochs=8",
                                                   "data.rooms=8", "train.checkpoint_every=1000"],
                      on_stage=stages.append)
    assert len(stages) == 3 and (tmp_path / f"run-{recipes.DEMO_MEMBERS - 1}" / "model").exists()  # stacked
    model = load_model(result.model)
    assert model.config.branches == recipes.DEMO_MEMBERS == 3
    assert model.frontend_config.n_freq == 129  # demo.yaml's frontend.max_freq: 4000
    assert result.in_domain.eer < 0.3, result.in_domain
    assert result.cross_domain.eer < 0.4, result.cross_domain
    assert result.in_domain.cos_cross_session > result.in_domain.cos_nontarget
    assert (result.model / "config.json").exists() and (tmp_path / "eval" / "cross-domain" / "summary.json").exists()
    # calibrated on the in-domain trials: an open-set gallery can ask for the stricter far@0.01 point
    assert set(result.operating_points) == {"eer", "far@0.01"}
    assert result.operating_points["eer"] == pytest.approx(result.in_domain.threshold)
    assert result.operating_points["far@0.01"] > result.operating_points["eer"]
    strict = DecisionRule.for_model(model, "far@0.01").point.threshold
    assert strict == pytest.approx(result.operating_points["far@0.01"])
