import pytest

from ghostvlad.registry import Component
from ghostvlad.train.config import TrainConfig, dump_config, load_config, parse_override, shipped_configs


def test_shipped_configs_load():
    assert shipped_configs() == ["demo", "modern", "paper", "paper-amsoftmax"]
    for name in shipped_configs():
        assert isinstance(load_config(name), TrainConfig)


def test_paper_config_is_the_original_recipe():
    cfg = load_config("paper")
    m = cfg.model
    assert m.flat() == {"backbone": "resnet34s", "width": 1.0, "pooling": "gvlad", "clusters": 8,
                        "ghost_clusters": 2, "descriptor_dim": 512, "embed_dim": 512}
    assert (cfg.head.name, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("softmax", "adam", 1e-3, 2e-4)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.schedule.name, cfg.schedule.warmup_ratio) == (128, 160, "paper", 0.1)


def test_base_inheritance_and_overrides():
    cfg = load_config("paper-amsoftmax", ["optim.lr=0.01", "model.clusters=10", "valid.trials=a b.txt"])
    assert cfg.head.name == "amsoftmax" and cfg.head.margin == 0.35
    assert cfg.model.pooling == Component("gvlad", {"clusters": 10, "ghost_clusters": 2})  # from paper, overridden
    assert cfg.optim.lr == 0.01 and cfg.valid.trials == "a b.txt"


def test_dump_round_trips(tmp_path):
    cfg = load_config("modern", ["train.epochs=3"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [("optim.lr", "bad override"), ("lr=1", "bad override"), ("optim.lrate=1", "optim: unknown key\\(s\\) lrate"),
     ("optimizer.lr=1", "unknown config sections: optimizer"), ("model.pooling=attn", "unknown pooling")],
)
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("demo", [override])


def test_unknown_config_name():
    with pytest.raises(ValueError, match="unknown config 'papr'; shipped: demo, modern, paper, paper-amsoftmax"):
        load_config("papr")


def test_parse_override_types():
    assert parse_override("train.epochs=3") == {"train": {"epochs": 3}}
    assert parse_override("data.musan=null") == {"data": {"musan": None}}
