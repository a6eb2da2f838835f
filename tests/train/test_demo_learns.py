"""The shipped `demo` config learns: held-out synthetic speakers are verified far better than chance."""
from pathlib import Path

from ghostvlad import load_model
from ghostvlad.data.manifest import build_manifest, scan_voxceleb, speaker_of
from ghostvlad.data.synth import SynthConfig, synthesize_corpus
from ghostvlad.evaluate import evaluate
from ghostvlad.train.config import load_config
from ghostvlad.train.loop import Trainer


def test_demo_config_learns_held_out_speakers(tmp_path: Path):
    corpus = tmp_path / "corpus"
    synthesize_corpus(corpus, SynthConfig(speakers=24, test_speakers=6, sessions=6, utterances=2,
                                          min_duration=1.5, max_duration=3.0, trials=400, seed=1), workers=2)
    files = scan_voxceleb(corpus / "dev")
    manifest = build_manifest(files, [speaker_of(f, corpus / "dev") for f in files], corpus / "dev.csv", workers=2)
    config = load_config("demo", ["train.epochs=25", "data.frames=120", "data.workers=0", "train.batch_size=24",
                                  "train.checkpoint_every=1000"])
    Trainer(config, manifest.manifest, tmp_path / "run", progress=False).run()
    result = evaluate(load_model(tmp_path / "run"), corpus / "trials.txt", corpus / "test", cache_dir=tmp_path / "cache")
    assert result.summary["n_skipped"] == 0
    assert result.summary["eer"] < 0.3, result.summary
