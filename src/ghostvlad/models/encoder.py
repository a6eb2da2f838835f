"""The speaker encoder: backbone -> ``x_fc`` descriptors -> pooling -> ``fc6`` -> (L2-normalised) embedding."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import BACKBONES, ConvBN
from .pooling import POOLINGS, Stats

CLUSTERED_POOLINGS = frozenset({"vlad", "gvlad"})  # the poolings that take ``clusters``


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to rebuild a :class:`SpeakerEncoder` (defaults: the released model)."""

    backbone: str = "resnet34s"
    width: float = 1.0
    pooling: str = "gvlad"
    clusters: int = 8
    ghost_clusters: int = 2
    descriptor_dim: int = 512  # x_fc filters ("bottleneck_dim" of the original)
    embed_dim: int = 512  # fc6 units

    def __post_init__(self) -> None:
        BACKBONES.get(self.backbone)
        POOLINGS.get(self.pooling)
        if self.pooling not in CLUSTERED_POOLINGS:
            object.__setattr__(self, "clusters", 0)
        if self.pooling != "gvlad":
            object.__setattr__(self, "ghost_clusters", 0)
        if self.pooling in CLUSTERED_POOLINGS and self.clusters < 1:
            raise ValueError(f"{self.pooling} needs clusters >= 1, got {self.clusters}")
        if min(self.descriptor_dim, self.embed_dim) < 1 or self.width <= 0:
            raise ValueError("descriptor_dim, embed_dim and width must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown encoder config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


class SpeakerEncoder(nn.Module):
    """Spectrogram ``(B, 257, T)`` (+ frame counts) -> ``fc6`` output ``(B, embed_dim)``.

    ``forward`` returns the (ReLU) ``fc6`` activations that the classification heads train on;
    :meth:`embed` returns the L2-normalised speaker embedding.
    """

    def __init__(self, config: EncoderConfig = EncoderConfig()) -> None:
        super().__init__()
        self.config = config
        self.backbone = BACKBONES.build(config.backbone, width=config.width)
        c, h = self.backbone.out_channels, self.backbone.out_height
        self.descriptor = nn.Conv2d(c, config.descriptor_dim, (h, 1))
        self.pooling = POOLINGS.build(
            config.pooling,
            in_channels=c,
            dim=config.descriptor_dim,
            clusters=config.clusters,
            ghost_clusters=config.ghost_clusters,
            height=h,
        )
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
