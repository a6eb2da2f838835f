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
     ("optimizer.lr=1", "unknown config sections: optimizer"), ("model.pooling=attn", "unknown pooling"),
     ("train.ema=1", "train.ema=1.*strictly between 0 and 1"), ("optim.lr=-1", r"optim.lr=-1.0: must be > 0"),
     ("optim.lr=0", r"optim.lr=0.0: must be > 0"), ("data.frames=0", r"data.frames=0: must be >= 1"),
     ("data.workers=-1", r"data.workers=-1: must be >= 0"), ("train.epochs=0", r"train.epochs=0: must be >= 1"),
     ("schedule.warmup_ratio=5", r"schedule.warmup_ratio=5.0: must be in \(0, 1\]"),
     ("optim.weight_decay=-5", r"optim.weight_decay=-5.0: must be >= 0"), ("optim.lr=1e400", "expected a number"),
     ("model.branches=2", "model.branches=2: a run trains one network; .* 'ghostvlad ensemble'"),
     ("valid.select=first", "valid.select='first': choose one of: best, last"),
     ("frontend.max_freq=9000", r"frontend.max_freq 9000.0: must lie between one bin \(31.25 Hz\) and 8000 Hz"),
     ("frontend.mirror=true", "frontend.mirror: training uses the original front-end .*only frontend.max_freq"),
     ("frontend.n_fft=1024", "frontend.n_fft: training uses the original front-end")],
)
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("demo", [override])


def test_unknown_config_name():
    with pytest.raises(ValueError, match="unknown config 'papr'; shipped: demo, modern, paper, paper-amsoftmax"):
        load_config("papr")


def test_numbers_in_scientific_notation_are_numbers():  # YAML 1.1 reads "1e-3" (no dot) as a string
    assert load_config("demo", ["optim.lr=1e-3"]).optim.lr == 0.001
    assert load_config("demo", ["finetune.lr=2.5E-6"]).finetune.lr == 2.5e-6


def test_parse_override_types():
    assert parse_override("train.epochs=3") == {"train": {"epochs": 3}}
    assert parse_override("data.musan=null") == {"data": {"musan": None}}


@pytest.mark.parametrize(("overrides", "message"), [
    (["head.margin=0.3"], "head 'softmax' does not take: margin"),
    (["head.scale=30"], "head 'softmax' does not take: scale"),
    (["finetune.margin=0.5"], "finetune.margin: head 'softmax' has no margin"),
    (["optim.name=sgd"], "optimiser 'sgd' does not take: eps"),  # demo sets the eps of its adam
    (["optim.eps=0.1", "optim.name=adamw", "optim.momentum=0.9"], "optimiser 'adamw' does not take: momentum"),
    (["train.precision=fp8"], "unknown precision 'fp8'; choose one of: bf16, fp16, fp32, or auto"),
    (["train.vlad_init=random"], "unknown vlad_init 'random'; choose one of: kmeans, orthogonal"),
    (["model.clusters=4"], "model: pooling 'astp' does not take: clusters"),
    (["model.pooling={name: tap, bottleneck: 3}"], "model: pooling 'tap' does not take: bottleneck"),
])
def test_arguments_a_component_does_not_take_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config("demo", overrides)


def test_each_slot_takes_its_own_arguments():
    cfg = load_config("demo", ["head.name=aamsoftmax", "head.margin=0.3", "finetune.margin=0.5",
                               "optim.name=sgd", "optim.eps=null", "optim.momentum=0.8"])
    assert cfg.head.args() == {"margin": 0.3} and cfg.optim.args() == {"momentum": 0.8}
    cfg = load_config("paper", ["model.pooling=tap"])  # a name alone replaces the whole slot, clusters and all
    assert cfg.model.pooling == Component("tap", {})
    cfg = load_config("paper", ["model.pooling={name: vlad, clusters: 4}", "model.width=0.5"])
    assert (cfg.model.pooling, cfg.model.backbone) == (Component("vlad", {"clusters": 4}),
                                                       Component("resnet34s", {"width": 0.5}))


def test_flat_model_section_of_earlier_versions_loads(tmp_path):
    """Config files (and run folders' config.yaml) of earlier versions had one flat model section."""
    path = tmp_path / "old.yaml"
    path.write_text("base: paper\nmodel: {backbone: resnet34s, width: 1.0, pooling: gvlad, clusters: 8, "
                    "ghost_clusters: 2, descriptor_dim: 512, embed_dim: 512}\n")
    assert load_config(path) == load_config("paper")
    path.write_text("base: demo\nmodel: {backbone: resnet34s, width: 0.25, pooling: astp, clusters: 0, "
                    "ghost_clusters: 0, descriptor_dim: 64, embed_dim: 64}\n")
    assert load_config(path) == load_config("demo")
