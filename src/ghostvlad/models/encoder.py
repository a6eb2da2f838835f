"""The speaker encoder: backbone -> ``x_fc`` descriptors -> pooling -> ``fc6`` -> (L2-normalised) embedding."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Component
from ..schema import ConfigError, checked
from .backbones import BACKBONES, ConvBN
from .pooling import POOLINGS, Stats

SLOTS = {"backbone": BACKBONES, "pooling": POOLINGS}
DEFAULTS = {"backbone": "resnet34s", "pooling": "gvlad"}  # the released model's
# the flat layout of earlier versions' model files, where 0 stood for a parameter the pooling has not
FLAT_KEYS = ("width", "clusters", "ghost_clusters")


@dataclass(frozen=True, init=False)
class EncoderConfig:
    """Everything needed to rebuild a :class:`SpeakerEncoder` (defaults: the released model).

    ``backbone`` and ``pooling`` are components, each with its own parameters, defaults filled in from the
    component's signature. Keyword parameters go to the component that takes them:
    ``EncoderConfig(pooling="gvlad", clusters=8, ghost_clusters=2, width=0.5)``; one that neither takes is a
    :class:`ConfigError` naming it (``pooling 'tap' does not take: clusters``).
    """

    backbone: Component
    pooling: Component
    descriptor_dim: int  # x_fc filters ("bottleneck_dim" of the original)
    embed_dim: int  # fc6 units

    def __init__(self, backbone: Component | str = DEFAULTS["backbone"], pooling: Component | str = DEFAULTS["pooling"],
                 descriptor_dim: int = 512, embed_dim: int = 512, **params: Any) -> None:
        chosen = {"backbone": backbone, "pooling": pooling}
        for slot, registry in SLOTS.items():
            component = Component(chosen[slot]) if isinstance(chosen[slot], str) else chosen[slot]
            takes = {p.name for p in registry.params(component.name)}
            args = {**component.args, **{k: params.pop(k) for k in list(params) if k in takes}}
            object.__setattr__(self, slot, registry.resolve(component.name, args))
        if params:
            raise ConfigError(f"pooling {self.pooling.name!r} does not take: {', '.join(params)} "
                              f"(nor does backbone {self.backbone.name!r})")
        if min(descriptor_dim, embed_dim) < 1:
            raise ConfigError("descriptor_dim and embed_dim must be positive")
        object.__setattr__(self, "descriptor_dim", descriptor_dim)
        object.__setattr__(self, "embed_dim", embed_dim)

    def to_dict(self) -> dict:
        return {"backbone": self.backbone.to_dict(), "pooling": self.pooling.to_dict(),
                "descriptor_dim": self.descriptor_dim, "embed_dim": self.embed_dim}

    def flat(self) -> dict:
        """The flat view of earlier versions' model files: ``{backbone, width, pooling, clusters, ghost_clusters,
        descriptor_dim, embed_dim}``, 0 for a parameter the pooling has not. Model keys hash it, so caches and
        galleries made by earlier versions stay valid; ``from_dict`` reads it back."""
        return {"backbone": self.backbone.name, **dict.fromkeys(FLAT_KEYS, 0), **self.backbone.args,
                "pooling": self.pooling.name, **self.pooling.args,
                "descriptor_dim": self.descriptor_dim, "embed_dim": self.embed_dim}

    @classmethod
    def from_dict(cls, data: dict, where: str = "encoder") -> "EncoderConfig":
        """From a mapping (a model file's ``encoder``, a config's ``model`` section), every value type-checked
        (:class:`ConfigError` naming the key). A slot is a name or ``{name: ..., param: value, ...}``; other keys
        are parameters for the slot that takes them (the flat layout of earlier versions, or an override such as
        ``model.clusters=10``)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__} {data!r}")
        known = {"backbone", "pooling", "descriptor_dim", "embed_dim"}
        params = {str(k): v for k, v in data.items() if k not in known}
        slots = {}
        for slot in SLOTS:
            value = data.get(slot, DEFAULTS[slot])
            args = {}
            if isinstance(value, dict):
                args = {str(k): v for k, v in value.items() if k != "name"}
                value = value.get("name")
            if not isinstance(value, str):
                raise ConfigError(f"{where}.{slot}: expected a name or a mapping with a name, got {value!r}")
            slots[slot] = Component(value, args)
        takes = {p.name for slot, c in slots.items() for p in SLOTS[slot].params(c.name)}
        params = {k: v for k, v in params.items() if k in takes or not (k in FLAT_KEYS and v == 0)}
        values = checked(cls, {k: v for k, v in data.items() if k in known - set(SLOTS)}, where)
        try:
            return cls(**slots, **values, **params)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


class SpeakerEncoder(nn.Module):
    """Spectrogram ``(B, 257, T)`` (+ frame counts) -> ``fc6`` output ``(B, embed_dim)``.

    ``forward`` returns the (ReLU) ``fc6`` activations that the classification heads train on;
    :meth:`embed` returns the L2-normalised speaker embedding.
    """

    def __init__(self, config: EncoderConfig = EncoderConfig()) -> None:
        super().__init__()
        self.config = config
        self.backbone = BACKBONES.build(config.backbone.name, **config.backbone.args)
        c, h = self.backbone.out_channels, self.backbone.out_height  # the backbone's output size, for the pooling
        self.descriptor = nn.Conv2d(c, config.descriptor_dim, (h, 1))
        self.pooling = POOLINGS.build(config.pooling.name, in_channels=c, height=h, dim=config.descriptor_dim,
                                      **config.pooling.args)
        self.embedding = nn.Linear(self.pooling.out_dim, config.embed_dim)

    def forward(self, feats: Tensor, frames: Tensor | None = None) -> Tensor:
        x, steps = self.backbone(feats.unsqueeze(1), frames)
        mask = None
        if steps is not None:
            mask = torch.arange(x.shape[-1], device=x.device)[None, :] < steps[:, None]
        return F.relu(self.embedding(self.pooling(x, self._descriptors(x), mask)))

    def _descriptors(self, x: Tensor) -> Tensor:
        return F.relu(self.descriptor(x)).squeeze(2)  # (B, D, T')

    # -- chunked inference (see ghostvlad.chunked): pooling statistics of stretches of time, merged ----------
    def span_steps(self, feats: Tensor, total: int, start: int) -> Tensor:
        """Backbone output steps of a clip of ``total`` frames from its spectrogram frames ``[start, start + W)``
        ``(B, 257, W)``; see :meth:`ThinResNet.forward_span` for which steps are exact."""
        return self.backbone.forward_span(feats.unsqueeze(1), total, start)

    def statistics(self, steps: Tensor) -> Stats:
        """Pooling statistics of backbone output steps ``(B, C, H, T')`` (all valid)."""
        return self.pooling.statistics(steps, self._descriptors(steps))

    def embed_statistics(self, stats: Stats) -> Tensor:
        """Unit-norm embeddings from (merged) pooling statistics."""
        pooled = self.pooling.finish(stats).to(self.embedding.weight.dtype)
        return F.normalize(F.relu(self.embedding(pooled)), dim=-1, eps=1e-6)

    def fused(self) -> "SpeakerEncoder":
        """An inference copy with every BatchNorm folded into its conv (same outputs, faster)."""
        clone = copy.deepcopy(self).eval()
        for module in clone.modules():
            if isinstance(module, ConvBN):
                module.fuse()
        return clone

    def embed(self, feats: Tensor, frames: Tensor | None = None) -> Tensor:
        """Unit-norm embeddings (the original's final ``l2_normalize``)."""
        return F.normalize(self(feats, frames), dim=-1, eps=1e-6)
