"""The training build's choices that need no data: the memory layout a network trains in."""
import pytest
import torch
from torch import nn

from ghostvlad.train.build import training_layout
from ghostvlad.train.config import load_config


def convs(*channels: int) -> nn.Sequential:
    pairs = zip((1, *channels), channels)
    return nn.Sequential(*(nn.Conv2d(a, b, 3, padding=1) for a, b in pairs))


@pytest.mark.parametrize("setting, channels, last", [
    ("true", (8, 16), True),
    ("false", (8, 16), False),
    ("true", (4, 16), False),  # a layer under 8 channels stays channels-first (oneDNN's backward crashes there)
])
def test_training_layout(setting, channels, last):
    net = training_layout(convs(*channels), load_config("demo", [f"train.channels_last={setting}"]))
    weight = net[1].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) is last
    assert weight.is_contiguous() is not last
    out = net(torch.randn(2, 1, 5, 6))
    assert out.is_contiguous(memory_format=torch.channels_last) is last
