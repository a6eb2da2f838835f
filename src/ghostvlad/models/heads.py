"""Classification heads for training: softmax, AM-softmax, AAM-softmax (ArcFace).

A head maps encoder outputs ``(B, E)`` and integer labels ``(B,)`` to logits ``(B, classes)`` for a
cross-entropy loss; margins are applied to the target logit during training only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry

HEADS: Registry[nn.Module] = Registry("head")


class SoftmaxHead(nn.Module):
    """The original ``prediction`` layer: a bias-free linear classifier on ``fc6``."""

    def __init__(self, embed_dim: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return F.linear(x, self.weight)


class CosineMarginHead(nn.Module):
    """Cosine logits ``s * cos(theta)`` with an additive (AM) or angular (AAM) margin on the target class."""

    def __init__(self, embed_dim: int, classes: int, margin: float, scale: float, angular: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin, self.scale, self.angular = margin, scale, angular

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        cos = F.linear(F.normalize(x.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))
        if labels is None or not self.training or self.margin == 0:
            return self.scale * cos
        target = cos.gather(1, labels[:, None])
        if self.angular:
            theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
            # cos(theta + m) where theta + m < pi, else the CosFace-style fallback keeps it monotonic
            shifted = torch.where(
                theta + self.margin < math.pi,
                torch.cos(theta + self.margin),
                target - self.margin * math.sin(self.margin),
            )
        else:
            shifted = target - self.margin
        return self.scale * cos.scatter(1, labels[:, None], shifted)


@HEADS.register("softmax")
def softmax(embed_dim: int, classes: int) -> SoftmaxHead:
    return SoftmaxHead(embed_dim, classes)


@HEADS.register("amsoftmax")
def amsoftmax(embed_dim: int, classes: int, margin: float = 0.35, scale: float = 30.0) -> CosineMarginHead:
    """AM-softmax (CosFace); defaults m = 0.35, s = 30 as the original code."""
    return CosineMarginHead(embed_dim, classes, margin, scale, angular=False)


@HEADS.register("aamsoftmax")
def aamsoftmax(embed_dim: int, classes: int, margin: float = 0.2, scale: float = 30.0) -> CosineMarginHead:
    """AAM-softmax (ArcFace), the modern choice."""
    return CosineMarginHead(embed_dim, classes, margin, scale, angular=True)
