"""Classification heads for training: softmax, AM-softmax, AAM-softmax (ArcFace); the angular prototypical loss.

A head maps encoder outputs ``(B, E)`` and integer labels ``(B,)`` to logits ``(B, classes)`` for a
cross-entropy loss; margins are applied to the target logit during training only. The angular prototypical
loss works on the batch alone (no classes), on groups of utterances of one speaker. Heads and the prototypical
loss always compute in fp32, with autocast switched off: in bf16 a cosine of 0.998 or more rounds to 1, where
``acos`` has an infinite derivative (non-finite gradients once the target cosines of a margin head get there).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry

HEADS: Registry[nn.Module] = Registry("head", base=nn.Module, context=("embed_dim", "classes"))


class SoftmaxHead(nn.Module):
    """The original ``prediction`` layer: a bias-free linear classifier on ``fc6``."""

    def __init__(self, embed_dim: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float())


class CosineMarginHead(nn.Module):
    """Cosine logits ``s * cos(theta)`` with an additive (AM) or angular (AAM) margin on the target class."""

    def __init__(self, embed_dim: int, classes: int, margin: float, scale: float, angular: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin, self.scale, self.angular = margin, scale, angular

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self._logits(x, labels)

    def _logits(self, x: Tensor, labels: Tensor | None) -> Tensor:
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
    """Softmax over the speakers (the paper's), no margin."""
    return SoftmaxHead(embed_dim, classes)


@HEADS.register("amsoftmax")
def amsoftmax(embed_dim: int, classes: int, margin: float = 0.35, scale: float = 30.0) -> CosineMarginHead:
    """AM-softmax (CosFace); defaults m = 0.35, s = 30 as the original code."""
    return CosineMarginHead(embed_dim, classes, margin, scale, angular=False)


@HEADS.register("aamsoftmax")
def aamsoftmax(embed_dim: int, classes: int, margin: float = 0.2, scale: float = 30.0) -> CosineMarginHead:
    """AAM-softmax (ArcFace), the modern choice."""
    return CosineMarginHead(embed_dim, classes, margin, scale, angular=True)


class AngularPrototypicalLoss(nn.Module):
    """Angular prototypical loss (Chung et al., *In defence of metric learning*, 2020) over speaker groups.

    The batch ``(N * M, E)`` holds ``M`` consecutive utterances of each of ``N`` speakers (the sessions sampler's
    layout). Each speaker's last utterance is scored against every speaker's prototype (the mean of their other
    utterances) by a learnable affine map of the cosine, ``w * cos + b``; cross-entropy makes the own speaker's
    prototype win. With utterances from different sessions, it pulls one voice together across channels. Computed
    in fp32 outside autocast.
    """

    def __init__(self, per_speaker: int) -> None:
        super().__init__()
        if per_speaker < 2:
            raise ValueError(f"the prototypical loss needs at least 2 utterances a speaker, got {per_speaker}")
        self.per_speaker = per_speaker
        self.w = nn.Parameter(torch.tensor(10.0))
        self.b = nn.Parameter(torch.tensor(-5.0))

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            groups = F.normalize(x.float(), dim=-1).reshape(-1, self.per_speaker, x.shape[-1])
            anchor = groups[:, -1]
            prototype = F.normalize(groups[:, :-1].mean(dim=1), dim=-1)
            logits = self.w.clamp(min=1e-6) * anchor @ prototype.T + self.b
            return F.cross_entropy(logits, torch.arange(len(groups), device=x.device))
