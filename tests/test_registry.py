"""Registries: a component gets only the arguments it takes (others refused, named), products of the slot's type,
and a listing of every slot's choices with their parameters and defaults."""
import pytest
import torch
from torch import nn

from ghostvlad.components import component_slots
from ghostvlad.models import BACKBONES, HEADS, POOLINGS
from ghostvlad.models.backbones import Backbone
from ghostvlad.models.pooling import Pooling
from ghostvlad.precision import get_precision
from ghostvlad.registry import Component, Param, Registry
from ghostvlad.schema import ConfigError
from ghostvlad.train.optim import OPTIMIZERS


def things() -> Registry:
    reg = Registry("thing", base=nn.Module, context=("size",))

    @reg.register("linear")
    def linear(size: int, bias: bool = True, scale: float = 1.0) -> nn.Linear:
        """A linear layer.

        More text."""
        return nn.Linear(size, size, bias=bias)

    @reg.register("text")
    def text(size: int) -> str:
        return "not a module"

    @reg.register("open")
    def open_(size: int, **anything) -> nn.Identity:
        return nn.Identity()

    return reg


def test_build_refuses_an_argument_the_component_does_not_take_naming_it():
    reg = things()
    assert isinstance(reg.build("linear", size=3, bias=False), nn.Linear)
    with pytest.raises(ConfigError, match=r"^thing 'linear' does not take: margin, depth \(it takes: bias, scale\)$"):
        reg.build("linear", size=3, margin=0.3, depth=2)
    with pytest.raises(ConfigError, match="head 'softmax' does not take: margin"):
        HEADS.build("softmax", embed_dim=4, classes=3, margin=0.3)
    with pytest.raises(ConfigError, match="unknown thing 'conv'; choose one of: linear, open, text"):
        reg.build("conv", size=3)
    assert isinstance(reg.build("open", size=3, whatever=1), nn.Identity)  # it declares **anything


def test_build_checks_the_product_type():
    with pytest.raises(TypeError, match="thing 'text' built a str, not a Module"):
        things().build("text", size=3)


def test_register_refuses_a_factory_without_the_context():
    reg = Registry("thing", context=("size",))
    with pytest.raises(TypeError, match="thing 'bad' must take size"):
        reg.register("bad")(lambda width: None)
    with pytest.raises(KeyError, match="already registered"):
        things().register("linear")(lambda size: None)


def test_resolve_checks_types_and_fills_defaults():
    reg = things()
    assert reg.resolve("linear", {"scale": 2}) == Component("linear", {"bias": True, "scale": 2.0})
    assert reg.params("linear") == (Param("bias", True, False, "bool"), Param("scale", 1.0, False, "float"))
    with pytest.raises(ConfigError, match="thing 'linear': scale expected a number, got 'big'"):
        reg.resolve("linear", {"scale": "big"})
    with pytest.raises(ConfigError, match="thing 'linear' does not take: size"):  # context is not config
        reg.resolve("linear", {"size": 3})
    needs = Registry("thing")
    needs.register("k")(lambda k: k)
    with pytest.raises(ConfigError, match="thing 'k' needs: k"):
        needs.resolve("k", {})


def test_every_registered_backbone_and_pooling_is_of_its_slot_type():
    for name in BACKBONES.names():
        backbone = BACKBONES.build(name, branches=1, freq_bins=257, width=0.125)
        assert isinstance(backbone, Backbone) and backbone.out_channels > 0 and backbone.out_height == 7
        for pooling_name in POOLINGS.names():
            pooling = POOLINGS.build(pooling_name, in_channels=backbone.out_channels, height=7, dim=4, branches=1)
            assert isinstance(pooling, Pooling)
            x = torch.randn(2, backbone.out_channels, 7, 5)
            assert pooling(x, torch.rand(2, 4, 5)).shape == (2, pooling.out_dim)


def test_component_listing_covers_every_registry():
    slots = {slot.name: slot for slot in component_slots()}
    assert {c.name for c in slots["pooling"].choices} == set(POOLINGS.names())
    gvlad = next(c for c in slots["pooling"].choices if c.name == "gvlad")
    assert [(p.name, p.default) for p in gvlad.params] == [("clusters", 8), ("ghost_clusters", 2)]
    assert {c.name for c in slots["optimiser"].choices} == {"adam", "adamw", "sgd"}
    assert {c.name for c in slots["precision"].choices} == {"fp32", "bf16", "fp16"}
    assert {c.name for c in slots["vlad_init"].choices} == {"orthogonal", "kmeans"}
    assert all(c.summary for slot in slots.values() for c in slot.choices)


def test_one_precision_table_for_inference_and_training():
    with pytest.raises(ConfigError, match="unknown precision 'fp8'; choose one of: bf16, fp16, fp32"):
        get_precision("fp8")
    a = torch.randn(4, 4)
    with get_precision("bf16").autocast("cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with get_precision("fp32").autocast("cpu"):
        assert (a @ a).dtype == torch.float32
    with pytest.raises(ConfigError, match="fp16 mixed precision needs a GPU; use bf16 on CPU"):
        get_precision("fp16").check_device("cpu")
    get_precision("bf16").check_device("cpu")
    assert get_precision("fp16").scaled and not get_precision("bf16").scaled


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    import ghostvlad.precision as precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for native, on_cpu, on_gpu, embed_gpu in ((True, "bf16", "bf16", "bf16"), (False, "fp32", "fp16", "fp32")):
        monkeypatch.setattr(precision, "native_bf16", lambda device, native=native: native)
        assert precision.resolve_precision("auto", cpu).name == on_cpu
        assert precision.resolve_precision("auto", gpu).name == on_gpu
        assert precision.resolve_precision("auto", cpu, training=False).name == "fp32"  # embedding: fp32 on CPUs
        assert precision.resolve_precision("auto", gpu, training=False).name == embed_gpu
        assert [precision.resolve_precision(n, cpu).name for n in ("fp32", "bf16")] == ["fp32", "bf16"]
    assert precision.resolve_precision("auto", gpu).scaled  # fp16 trains with its gradient scaler
    precision.check_training_precision("auto")
    with pytest.raises(ConfigError, match="unknown precision 'half'; choose one of: bf16, fp16, fp32, or auto"):
        precision.check_training_precision("half")


def test_optimisers_get_their_own_arguments():
    params = [nn.Parameter(torch.zeros(2))]
    sgd = OPTIMIZERS.build("sgd", params=params, lr=0.1, fused=False, momentum=0.5)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.5 and sgd.defaults["nesterov"]
    assert OPTIMIZERS.build("adam", params=params, lr=0.1, fused=False).defaults["eps"] == 1e-7
    with pytest.raises(ConfigError, match="optimiser 'adam' does not take: momentum"):
        OPTIMIZERS.build("adam", params=params, lr=0.1, fused=False, momentum=0.9)
