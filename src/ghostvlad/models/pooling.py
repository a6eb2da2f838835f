"""Aggregation of frame-level descriptors into one utterance vector: TAP, TSTP, ASTP, NetVLAD, GhostVLAD.

Every pooling takes the backbone output ``x (B, C, H, T')``, the descriptors ``f (B, D, T')`` (the
``x_fc`` output) and an optional validity mask ``(B, T')``; padded steps contribute nothing.
The statistics poolings (TSTP, ASTP) compute in fp32 whatever the autocast precision: a variance is a
difference of nearly equal sums.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry

POOLINGS: Registry[nn.Module] = Registry("pooling")


class TemporalAveragePooling(nn.Module):
    """Mean of the descriptors over the valid time steps (a correct TAP; the original's was broken)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def forward(self, x: Tensor, f: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            return f.mean(dim=-1)
        m = mask.to(f.dtype)[:, None, :]
        return (f * m).sum(-1) / m.sum(-1).clamp(min=1)


def _masked_moments(f: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean and standard deviation over time, concatenated: ``(B, 2D)``.

    ``weights`` (broadcastable to ``f``) sum to one over the valid steps and are zero on padded ones.
    """
    mean = (f * weights).sum(-1)
    var = (f.square() * weights).sum(-1) - mean.square()
    return torch.cat([mean, var.clamp(min=1e-6).sqrt()], dim=-1)


def _valid(f: Tensor, mask: Tensor | None) -> Tensor:
    """The mask as fp32 ``(B, 1, T)`` (all ones without one)."""
    if mask is None:
        return torch.ones_like(f[:, :1, :])
    return mask.to(f.dtype)[:, None, :]


class TemporalStatisticsPooling(nn.Module):
    """Mean and standard deviation of the descriptors over the valid time steps (x-vector statistics pooling)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = 2 * dim

    def forward(self, x: Tensor, f: Tensor, mask: Tensor | None = None) -> Tensor:
        f = f.float()
        m = _valid(f, mask)
        return _masked_moments(f, m / m.sum(-1, keepdim=True).clamp(min=1))


class AttentiveStatisticsPooling(nn.Module):
    """Attentive statistics pooling (Okabe et al., 2018) with channel-wise attention.

    A small 1x1-conv network scores every step for every channel; a softmax over the valid steps weighs the
    mean and standard deviation. Padded steps get zero weight, so a padded batch equals each clip alone.
    """

    def __init__(self, dim: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(dim, bottleneck, 1), nn.Tanh(), nn.Conv1d(bottleneck, dim, 1))
        self.out_dim = 2 * dim

    def forward(self, x: Tensor, f: Tensor, mask: Tensor | None = None) -> Tensor:
        f = f.float()
        with torch.autocast(f.device.type, enabled=False):
            scores = self.attention(f)
            if mask is not None:
                scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
            return _masked_moments(f, scores.softmax(dim=-1))


class NetVLAD(nn.Module):
    """NetVLAD / GhostVLAD exactly as the original ``VladPooling``.

    Soft-assignment over ``clusters + ghost_clusters`` (a (H, 1) conv on the backbone output), residuals of
    the descriptors against the centers, ghost clusters dropped, per-cluster L2 normalisation, cluster-major
    flattening. No input or global normalisation (as the original).
    """

    def __init__(self, in_channels: int, dim: int, clusters: int, ghost_clusters: int = 0, height: int = 7) -> None:
        super().__init__()
        self.clusters = clusters
        self.assignment = nn.Conv2d(in_channels, clusters + ghost_clusters, (height, 1))
        self.centers = nn.Parameter(torch.empty(clusters + ghost_clusters, dim))
        nn.init.orthogonal_(self.centers)
        self.out_dim = clusters * dim

    def forward(self, x: Tensor, f: Tensor, mask: Tensor | None = None) -> Tensor:
        a = self.assignment(x).squeeze(2).softmax(dim=1)[:, : self.clusters]  # (B, K, T)
        if mask is not None:
            a = a * mask.to(a.dtype)[:, None, :]
        v = torch.einsum("bkt,bdt->bkd", a, f) - a.sum(-1, keepdim=True) * self.centers[: self.clusters]
        return F.normalize(v, dim=-1, eps=1e-6).flatten(1)  # eps 1e-6 on the norm = TF's 1e-12 on its square


@POOLINGS.register("tap")
def tap(dim: int) -> TemporalAveragePooling:
    return TemporalAveragePooling(dim)


@POOLINGS.register("tstp")
def tstp(dim: int) -> TemporalStatisticsPooling:
    return TemporalStatisticsPooling(dim)


@POOLINGS.register("astp")
def astp(dim: int) -> AttentiveStatisticsPooling:
    return AttentiveStatisticsPooling(dim)


@POOLINGS.register("vlad")
def vlad(in_channels: int, dim: int, clusters: int, height: int = 7) -> NetVLAD:
    return NetVLAD(in_channels, dim, clusters, 0, height)


@POOLINGS.register("gvlad")
def gvlad(in_channels: int, dim: int, clusters: int, ghost_clusters: int, height: int = 7) -> NetVLAD:
    return NetVLAD(in_channels, dim, clusters, ghost_clusters, height)
