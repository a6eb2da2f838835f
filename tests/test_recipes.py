"""The demo's networks trained side by side: each in its own process, progress reported, errors after the rest."""
from pathlib import Path

import pytest

from ghostvlad import load_model
from ghostvlad.data.synth import SynthConfig, synthesize_corpus
from ghostvlad.errors import GhostvladError
from ghostvlad.recipes import train_side_by_side

TINY = ["train.epochs=1", "train.min_steps=3", "train.batch_size=4", "data.frames=60", "data.rooms=2",
        "data.workers=0", "model.backbone={width: 0.125}", "train.log_every=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("side") / "corpus"
    synthesize_corpus(root, SynthConfig(speakers=6, test_speakers=2, sessions=2, utterances=2, min_duration=1.0,
                                        max_duration=1.5, trials=8, seed=5), workers=1)
    return root


def test_runs_side_by_side_report_each_network(corpus: Path, tmp_path: Path):
    rows = []
    runs = [tmp_path / "a", tmp_path / "b"]
    train_side_by_side(corpus, runs, [[*TINY, "train.seed=0"], [*TINY, "train.seed=1"]],
                       on_log=lambda row, steps: rows.append((row["network"], row["global_step"], steps)))
    models = [load_model(run) for run in runs]
    assert all(m.config.embed_dim == models[0].config.embed_dim for m in models)
    assert {n for n, _, _ in rows} == {1, 2}
    steps = rows[0][2]  # an epoch's steps, the run's all
    for network in (1, 2):  # every logged step of each network, in order
        assert [s for n, s, _ in rows if n == network] == list(range(1, steps + 1))
    a, b = (next(iter(m.saved_encoder.state_dict().values())) for m in models)
    assert not (a == b).all()  # other seeds, other networks
    train_side_by_side(corpus, runs, [[*TINY, "train.seed=0"], [*TINY, "train.seed=1"]])  # finished: resumes to no-op


def test_a_bad_run_fails_after_the_others_finish(corpus: Path, tmp_path: Path):
    with pytest.raises(GhostvladError, match="train.batch_size"):
        train_side_by_side(corpus, [tmp_path / "good", tmp_path / "bad"],
                           [[*TINY, "train.seed=0"], [*TINY, "train.batch_size=-1"]])
    assert load_model(tmp_path / "good").config is not None
    assert not (tmp_path / "bad" / "model").exists()
