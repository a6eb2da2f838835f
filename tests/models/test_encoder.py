import math
import re

import pytest
import torch

from ghostvlad.models import EncoderConfig, SpeakerEncoder, stack
from ghostvlad.registry import Component
from ghostvlad.schema import ConfigError


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("config", "params"),
    [
        (EncoderConfig(), 7_664_394),  # the released model (original.md §3.5)
        (EncoderConfig(pooling="vlad"), 7_656_200),
        (EncoderConfig(clusters=10), 8_196_876),
        (EncoderConfig(backbone="resnet34l"), 29_456_842),
    ],
)
def test_parameter_counts_match_the_original(config, params):
    assert trainable(SpeakerEncoder(config)) == params


def test_bn_and_shapes_of_released_config():
    enc = SpeakerEncoder().eval()
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 38 and all(m.eps == 1e-3 for m in bns)
    with torch.inference_mode():
        x, steps = enc.backbone(torch.zeros(1, 1, 257, 250), torch.tensor([250]))
    assert x.shape == (1, 512, 7, 16) and int(steps) == 16  # T/16 in time, as the code (not T/32)


def tiny(backbone: str, pooling: str, branches: int = 1, seed: int = 0, freq_bins: int = 257) -> SpeakerEncoder:
    torch.manual_seed(seed)
    enc = SpeakerEncoder(EncoderConfig(backbone=backbone, width=0.125, pooling=pooling, descriptor_dim=16, embed_dim=24,
                                       branches=branches), freq_bins)
    for m in enc.modules():  # non-trivial BatchNorm statistics so padding would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.bias.data.normal_()
    return enc.eval()


@pytest.mark.parametrize(("pooling", "branches"), [("tap", 1), ("tstp", 1), ("astp", 1), ("vlad", 1), ("gvlad", 1),
                                                   ("tap", 2), ("tstp", 2), ("astp", 2)])
@pytest.mark.parametrize("backbone", ["resnet34s", "resnet34l"])
def test_padded_batch_equals_each_clip_alone(backbone, pooling, branches):
    enc = tiny(backbone, pooling, branches)
    lengths = torch.tensor([97, 130, 64, 131, 40])
    feats = torch.zeros(len(lengths), 257, 140)
    for i, n in enumerate(lengths):
        feats[i, :, :n] = torch.randn(257, int(n))
    with torch.inference_mode():
        batched = enc.embed(feats, lengths)
        alone = torch.cat([enc.embed(feats[i : i + 1, :, :n]) for i, n in enumerate(lengths)])
        unmasked = enc.embed(feats)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    assert (unmasked - alone).abs().max() > 1e-3  # without masks the padding would change embeddings
    torch.testing.assert_close(batched.norm(dim=1), torch.ones(len(lengths)))


@pytest.mark.parametrize(("backbone", "bins", "height"), [("resnet34s", 257, 7), ("resnet34s", 129, 3),
                                                          ("resnet34s", 177, 5), ("resnet34l", 129, 3),
                                                          ("resnet34l", 131, 4)])
def test_fewer_frequency_bins_give_a_lower_output_and_stay_exact(backbone, bins, height):
    """A band-limited front-end (frontend.max_freq) feeds fewer rows: the backbone's output height follows them
    (checked against a forward pass) and padded batches still equal each clip alone."""
    enc = tiny(backbone, "astp", freq_bins=bins)
    lengths = torch.tensor([97, 64, 40])
    feats = torch.zeros(len(lengths), bins, 100)
    for i, n in enumerate(lengths):
        feats[i, :, :n] = torch.randn(bins, int(n))
    with torch.inference_mode():
        assert enc.backbone(feats[:, None])[0].shape[2] == enc.backbone.out_height == height
        batched = enc.embed(feats, lengths)
        alone = torch.cat([enc.embed(feats[i : i + 1, :, :n]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_too_few_frequency_bins_and_stacking_other_bins_are_refused():
    with pytest.raises(ConfigError, match="33 frequency bins are too few"):
        SpeakerEncoder(EncoderConfig(width=0.125), freq_bins=33)
    with pytest.raises(ConfigError, match="network 2 reads 129 frequency bins, network 1 257"):
        stack([tiny("resnet34s", "tap"), tiny("resnet34s", "tap", freq_bins=129)])


@pytest.mark.parametrize("backbone", ["resnet34s", "resnet34l"])
@pytest.mark.parametrize("pooling", ["tap", "tstp", "astp"])
def test_branches_are_independent_networks(backbone, pooling):
    """K branches compute exactly what K one-branch encoders holding their slices of the weights compute, and the
    embedding's cosines are the mean of the branches' cosines."""
    wide = tiny(backbone, pooling, branches=2)
    ones = [SpeakerEncoder(EncoderConfig(backbone=backbone, width=0.125, pooling=pooling, descriptor_dim=8,
                                         embed_dim=12)).eval() for _ in range(2)]
    for k, one in enumerate(ones):
        one.load_state_dict({name: t.chunk(2)[k] if t.ndim else t for name, t in wide.state_dict().items()})
    x, lengths = torch.randn(3, 257, 90), torch.tensor([90, 61, 33])
    with torch.inference_mode():
        torch.testing.assert_close(wide(x, lengths), torch.cat([one(x, lengths) for one in ones], 1))
        emb, parts = wide.embed(x, lengths), [one.embed(x, lengths) for one in ones]
        torch.testing.assert_close(emb, torch.cat(parts, 1) / math.sqrt(2))
        torch.testing.assert_close(emb @ emb[0], (parts[0] @ parts[0][0] + parts[1] @ parts[1][0]) / 2)
    wide.train(), [one.train() for one in ones]  # batch statistics; running ones updated as each network's alone
    torch.testing.assert_close(wide(x, lengths), torch.cat([one(x, lengths) for one in ones], 1))
    for k, one in enumerate(ones):
        for name, t in one.state_dict().items():
            got = wide.state_dict()[name]
            torch.testing.assert_close(got.chunk(2)[k] if got.ndim else got, t)  # num_batches_tracked: once
    for k in range(2):  # no gradient crosses from one branch's output to the other branch's weights
        wide.train().zero_grad()
        wide(x)[:, 12 * k : 12 * (k + 1)].sum().backward()
        grads = {name: p.grad.chunk(2) for name, p in wide.named_parameters() if p.grad is not None}
        assert all(g[k].any() for name, g in grads.items() if "stem" in name or "embedding" in name)
        assert not any(g[1 - k].any() for g in grads.values())


def test_stacked_encoders_embed_as_the_mean_of_their_cosines():
    """``stack`` copies separately trained networks into the branches of one encoder, in order."""
    members = [tiny("resnet34s", "astp", seed=seed) for seed in (0, 1)]
    both = stack(members)
    assert both.config == EncoderConfig(width=0.125, pooling="astp", descriptor_dim=32, embed_dim=48, branches=2)
    x, lengths = torch.randn(3, 257, 90), torch.tensor([90, 61, 33])
    with torch.inference_mode():
        emb, parts = both.embed(x, lengths), [m.embed(x, lengths) for m in members]
        torch.testing.assert_close(emb @ emb.T, (parts[0] @ parts[0].T + parts[1] @ parts[1].T) / 2)
        three = stack([both, tiny("resnet34s", "astp", seed=2)])  # a stacked encoder stacks again
        assert three.config.branches == 3 and three.embed(x, lengths).shape == (3, 72)
    with pytest.raises(ConfigError, match=r"stack: network 2 differs from network 1 \(per branch\): pooling "
                                          r"\{'name': 'tstp'\} vs \{'name': 'astp'\}$"):
        stack([members[0], tiny("resnet34s", "tstp")])
    with pytest.raises(ConfigError, match="stack: no encoders given"):
        stack([])


def test_branches_must_divide_the_sizes_and_pool_per_channel():
    with pytest.raises(ConfigError, match=r"branches=3: must be at least 1 and divide descriptor_dim \(16\)"):
        EncoderConfig(descriptor_dim=16, embed_dim=24, branches=3)
    with pytest.raises(ConfigError, match="branches=0"):
        EncoderConfig(branches=0)
    with pytest.raises(ConfigError, match="pooling 'gvlad' assigns all channels to one set of clusters"):
        SpeakerEncoder(EncoderConfig(width=0.125, descriptor_dim=16, embed_dim=24, branches=2))
    cfg = EncoderConfig(width=0.125, pooling="astp", descriptor_dim=16, embed_dim=24, branches=2)
    assert cfg.to_dict()["branches"] == cfg.flat()["branches"] == 2 and EncoderConfig.from_dict(cfg.to_dict()) == cfg
    assert "branches" not in EncoderConfig().to_dict() and "branches" not in EncoderConfig().flat()  # keys unchanged


def test_embeddings_are_non_negative_unit_vectors():
    with torch.inference_mode():
        emb = tiny("resnet34s", "gvlad").embed(torch.randn(3, 257, 50))
    assert emb.min() >= 0
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


def test_ghost_clusters_change_assignment_not_output_size():
    g = SpeakerEncoder(EncoderConfig(width=0.125, pooling="gvlad", clusters=4, ghost_clusters=2, descriptor_dim=8))
    v = SpeakerEncoder(EncoderConfig(width=0.125, pooling="vlad", clusters=4, descriptor_dim=8))
    assert g.pooling.assignment.out_channels == 6 and v.pooling.assignment.out_channels == 4
    assert g.embedding.in_features == v.embedding.in_features == 32
    assert v.config.pooling == Component("vlad", {"clusters": 4})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pooling": "vlad", "ghost_clusters": 2}, "pooling 'vlad' does not take: ghost_clusters"),
    ({"pooling": "tap", "clusters": 8}, "pooling 'tap' does not take: clusters"),
    ({"pooling": Component("tstp", {"clusters": 8})}, "pooling 'tstp' does not take: clusters"),
    ({"backbone": Component("resnet34s", {"depth": 50})}, "backbone 'resnet34s' does not take: depth"),
    ({"pooling": Component("gvlad", {"clusters": "eight"})}, "pooling 'gvlad': clusters expected an integer"),
])
def test_a_parameter_its_component_does_not_take_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        EncoderConfig(**kwargs)


def test_each_slot_gets_its_own_defaults():
    assert EncoderConfig().to_dict() == {"backbone": {"name": "resnet34s", "width": 1.0},
                                         "pooling": {"name": "gvlad", "clusters": 8, "ghost_clusters": 2},
                                         "descriptor_dim": 512, "embed_dim": 512}
    assert EncoderConfig(pooling="tstp").pooling == Component("tstp", {})
    with pytest.raises(ConfigError, match="pooling needs clusters >= 1"):
        SpeakerEncoder(EncoderConfig(pooling="vlad", clusters=0, width=0.125))
    with pytest.raises(ConfigError, match="backbone width must be positive"):
        SpeakerEncoder(EncoderConfig(width=0.0))


# model files written before slots had their own parameters (ghostvlad's encoder JSON up to commit dcf2eec)
LEGACY = [
    {"backbone": "resnet34s", "width": 0.125, "pooling": "gvlad", "clusters": 3, "ghost_clusters": 1,
     "descriptor_dim": 16, "embed_dim": 8},
    {"backbone": "resnet34l", "width": 0.125, "pooling": "vlad", "clusters": 4, "ghost_clusters": 0,
     "descriptor_dim": 16, "embed_dim": 8},
    {"backbone": "resnet34s", "width": 0.25, "pooling": "tstp", "clusters": 0, "ghost_clusters": 0,
     "descriptor_dim": 64, "embed_dim": 64},
]


@pytest.mark.parametrize("legacy", LEGACY)
def test_flat_configs_of_earlier_versions_load_and_keep_their_key(legacy):
    cfg = EncoderConfig.from_dict(legacy)
    assert cfg.backbone == Component(legacy["backbone"], {"width": legacy["width"]})
    assert cfg.pooling.name == legacy["pooling"]
    assert {k: legacy[k] for k in cfg.pooling.args} == dict(cfg.pooling.args)
    assert cfg.flat() == legacy  # what model keys hash: caches and galleries of earlier versions stay valid
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="encoder: pooling 'tstp' does not take: clusters"):
        EncoderConfig.from_dict({**LEGACY[2], "clusters": 8})  # a non-zero value is a real setting: refused


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'.*resnet34l, resnet34s"):
        EncoderConfig(backbone="resnet50")
    with pytest.raises(ValueError, match="unknown pooling 'attention'"):
        EncoderConfig(pooling="attention")
    with pytest.raises(ValueError, match="encoder: pooling 'gvlad' does not take: foo"):
        EncoderConfig.from_dict({"foo": 1})
    with pytest.raises(ValueError, match="encoder.pooling: expected a name or a mapping with a name"):
        EncoderConfig.from_dict({"pooling": {"clusters": 4}})


def test_config_round_trip():
    cfg = EncoderConfig(backbone="resnet34l", width=0.5, pooling="vlad", clusters=12, embed_dim=256)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("pooling", "branches"), [("gvlad", 1), ("astp", 2)])
def test_fused_inference_copy_computes_the_same(pooling, branches):
    enc = tiny("resnet34s", pooling, branches)
    fused = enc.fused()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x, lengths = torch.randn(2, 257, 90), torch.tensor([90, 61])
    with torch.inference_mode():
        torch.testing.assert_close(fused.embed(x, lengths), enc.embed(x, lengths), atol=1e-5, rtol=0)
