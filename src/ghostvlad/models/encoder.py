"""The speaker encoder: backbone -> ``x_fc`` descriptors -> pooling -> ``fc6`` -> (L2-normalised) embedding.

With ``branches=K`` the encoder is K independent networks side by side (grouped weights, one module): each branch
has its own backbone, descriptors, pooling and ``fc6``, and the embedding is the K branches' unit-norm embeddings
concatenated and scaled by ``1/sqrt(K)``, so a cosine of two embeddings is the mean of the branches' cosines: an
ensemble of K separately trained networks (:func:`stack`) that embeds, chunks, streams and exports as one model.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Component
from ..schema import ConfigError, checked, differences
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
    :class:`ConfigError` naming it (``pooling 'tap' does not take: clusters``). ``branches`` independent
    networks share ``descriptor_dim`` and ``embed_dim`` equally (module docstring).
    """

    backbone: Component
    pooling: Component
    descriptor_dim: int  # x_fc filters ("bottleneck_dim" of the original), all branches together
    embed_dim: int  # fc6 units = the embedding's size, all branches together
    branches: int

    def __init__(self, backbone: Component | str = DEFAULTS["backbone"], pooling: Component | str = DEFAULTS["pooling"],
                 descriptor_dim: int = 512, embed_dim: int = 512, branches: int = 1, **params: Any) -> None:
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
        if branches < 1 or descriptor_dim % branches or embed_dim % branches:
            raise ConfigError(f"branches={branches}: must be at least 1 and divide descriptor_dim ({descriptor_dim}) "
                              f"and embed_dim ({embed_dim})")
        object.__setattr__(self, "descriptor_dim", descriptor_dim)
        object.__setattr__(self, "embed_dim", embed_dim)
        object.__setattr__(self, "branches", branches)

    def branch(self) -> "EncoderConfig":
        """The config of one branch alone (``branches=1``, its share of the sizes)."""
        k = self.branches
        return EncoderConfig(self.backbone, self.pooling, self.descriptor_dim // k, self.embed_dim // k)

    def _branches(self) -> dict:
        """``{"branches": K}`` for more than one branch (one-branch files and keys stay those of earlier versions)."""
        return {} if self.branches == 1 else {"branches": self.branches}

    def to_dict(self) -> dict:
        return {"backbone": self.backbone.to_dict(), "pooling": self.pooling.to_dict(),
                "descriptor_dim": self.descriptor_dim, "embed_dim": self.embed_dim, **self._branches()}

    def flat(self) -> dict:
        """The flat view of earlier versions' model files: ``{backbone, width, pooling, clusters, ghost_clusters,
        descriptor_dim, embed_dim}``, 0 for a parameter the pooling has not. Model keys hash it, so caches and
        galleries made by earlier versions stay valid; ``from_dict`` reads it back."""
        return {"backbone": self.backbone.name, **dict.fromkeys(FLAT_KEYS, 0), **self.backbone.args,
                "pooling": self.pooling.name, **self.pooling.args,
                "descriptor_dim": self.descriptor_dim, "embed_dim": self.embed_dim, **self._branches()}

    @classmethod
    def from_dict(cls, data: dict, where: str = "encoder") -> "EncoderConfig":
        """From a mapping (a model file's ``encoder``, a config's ``model`` section), every value type-checked
        (:class:`ConfigError` naming the key). A slot is a name or ``{name: ..., param: value, ...}``; other keys
        are parameters for the slot that takes them (the flat layout of earlier versions, or an override such as
        ``model.clusters=10``)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__} {data!r}")
        known = {"backbone", "pooling", "descriptor_dim", "embed_dim", "branches"}
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


class BranchLinear(nn.Linear):
    """``branches`` independent linear layers side by side: input and output are ``branches`` equal blocks, output
    block k a function of input block k only. One branch is exactly ``nn.Linear(in_features, out_features)``."""

    def __init__(self, in_features: int, out_features: int, branches: int = 1) -> None:
        super().__init__(in_features, branches * out_features)  # nn.Linear's initialisation, fan-in in_features
        self.branches = branches

    def forward(self, x: Tensor) -> Tensor:
        if self.branches == 1:
            return super().forward(x)
        k, n = self.branches, self.out_features
        y = torch.einsum("bki,koi->bko", x.unflatten(-1, (k, self.in_features)), self.weight.view(k, n // k, -1))
        return y.reshape(-1, n) + self.bias  # sizes from the layer: an exported graph keeps a static width


class SpeakerEncoder(nn.Module):
    """Spectrogram ``(B, freq_bins, T)`` (+ frame counts) -> ``fc6`` output ``(B, embed_dim)``.

    ``freq_bins`` is the front-end's bin count (:attr:`ghostvlad.features.FrontEndConfig.n_freq`: 257 in the original).
    ``forward`` returns the (ReLU) ``fc6`` activations that the classification heads train on (``branches``
    blocks, one per branch); :meth:`embed` returns the L2-normalised speaker embedding.
    """

    def __init__(self, config: EncoderConfig = EncoderConfig(), freq_bins: int = 257) -> None:
        super().__init__()
        self.config, self.freq_bins = config, freq_bins
        k = config.branches
        self.backbone = BACKBONES.build(config.backbone.name, branches=k, freq_bins=freq_bins, **config.backbone.args)
        c, h = self.backbone.out_channels, self.backbone.out_height  # the backbone's output size, for the pooling
        self.descriptor = nn.Conv2d(c, config.descriptor_dim, (h, 1), groups=k)
        self.pooling = POOLINGS.build(config.pooling.name, in_channels=c, height=h, dim=config.descriptor_dim // k,
                                      branches=k, **config.pooling.args)
        self.embedding = BranchLinear(self.pooling.out_dim // k, config.embed_dim // k, k)

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
        ``(B, freq_bins, W)``; see :meth:`ThinResNet.forward_span` for which steps are exact."""
        return self.backbone.forward_span(feats.unsqueeze(1), total, start)

    def statistics(self, steps: Tensor) -> Stats:
        """Pooling statistics of backbone output steps ``(B, C, H, T')`` (all valid)."""
        return self.pooling.statistics(steps, self._descriptors(steps))

    def embed_statistics(self, stats: Stats) -> Tensor:
        """Unit-norm embeddings from (merged) pooling statistics."""
        pooled = self.pooling.finish(stats).to(self.embedding.weight.dtype)
        return self.unit(F.relu(self.embedding(pooled)))

    def fused(self) -> "SpeakerEncoder":
        """An inference copy with every BatchNorm folded into its conv (same outputs, faster)."""
        clone = copy.deepcopy(self).eval()
        for module in clone.modules():
            if isinstance(module, ConvBN):
                module.fuse()
        return clone

    def embed(self, feats: Tensor, frames: Tensor | None = None) -> Tensor:
        """Unit-norm embeddings (the original's final ``l2_normalize``; per branch, see :meth:`unit`)."""
        return self.unit(self(feats, frames))

    def unit(self, x: Tensor) -> Tensor:
        """``fc6`` outputs ``(B, embed_dim)`` at unit length: each branch's block at unit length, scaled by
        ``1/sqrt(branches)``, so that dot products are the means of the branches' cosines. Sizes come from the
        config, so an exported graph keeps a static embedding width."""
        k = self.config.branches
        if k == 1:
            return F.normalize(x, dim=-1, eps=1e-6)
        width = self.config.embed_dim // k
        return (F.normalize(x.reshape(-1, k, width), dim=-1, eps=1e-6) / math.sqrt(k)).reshape(-1, k * width)


def stack(encoders: Sequence[SpeakerEncoder]) -> SpeakerEncoder:
    """One encoder whose branches are those of ``encoders`` in order (a copy of their weights): the ensemble of
    separately trained networks, as one model. They must have the same network per branch (:class:`ConfigError`)."""
    if not encoders:
        raise ConfigError("stack: no encoders given")
    one = encoders[0].config.branch()
    for i, enc in enumerate(encoders[1:], 2):
        if enc.config.branch() != one:
            raise ConfigError(f"stack: network {i} differs from network 1 (per branch): "
                              f"{differences(one.to_dict(), enc.config.branch().to_dict())}")
        if enc.freq_bins != encoders[0].freq_bins:
            raise ConfigError(f"stack: network {i} reads {enc.freq_bins} frequency bins, network 1 "
                              f"{encoders[0].freq_bins}")
    k = sum(enc.config.branches for enc in encoders)
    stacked = SpeakerEncoder(EncoderConfig(one.backbone, one.pooling, one.descriptor_dim * k, one.embed_dim * k, k),
                             encoders[0].freq_bins)
    states = [{name: t.cpu() for name, t in enc.state_dict().items()} for enc in encoders]
    stacked.load_state_dict({name: torch.cat([s[name] for s in states]) if t.ndim else t  # BN step counts: unused
                             for name, t in states[0].items()})
    return stacked.eval()
