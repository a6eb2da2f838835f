"""Aggregation of frame-level descriptors into one utterance vector: TAP, TSTP, ASTP, NetVLAD, GhostVLAD.

Every pooling takes the backbone output ``x (B, C, H, T')``, the descriptors ``f (B, D, T')`` (the
``x_fc`` output) and an optional validity mask ``(B, T')``; padded steps contribute nothing.
Each is a function of sums over time (:class:`Pooling`), so the statistics of consecutive chunks of a long
recording merge into those of the whole. The sums are fp32 whatever the autocast precision: a variance, and a
VLAD residual, are differences of nearly equal sums.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry
from ..schema import ConfigError

Stats = tuple[Tensor, ...]


class Pooling(nn.Module):
    """The pooling slot's interface. A pooling is a function of sums over time: :meth:`statistics` of the steps
    seen, :meth:`merge` of the statistics of two stretches of time, :meth:`finish` into the pooled vector of
    :attr:`out_dim` values. ``forward(x, f, mask)`` is ``finish`` of ``statistics``; chunked and streaming
    inference merge the statistics of consecutive chunks.

    Registered factories take the encoder's sizes, ``in_channels`` and ``height`` of the backbone output, the
    descriptor size ``dim`` of one branch and the number of ``branches`` (the descriptors are ``branches`` blocks
    of ``dim`` channels, one per independent branch of the backbone), then their own config parameters (with
    defaults). The pooled vector holds ``branches`` equal blocks in the same order, each computed from its own
    branch's channels only.
    """

    out_dim: int  # size of the pooled vector

    def statistics(self, x: Tensor, f: Tensor, mask: Tensor | None = None) -> Stats:
        raise NotImplementedError

    def finish(self, stats: Stats) -> Tensor:
        raise NotImplementedError

    def merge(self, a: Stats, b: Stats) -> Stats:
        """Statistics of the steps of ``a`` and of ``b`` (sums add)."""
        return tuple(u + v for u, v in zip(a, b))

    def forward(self, x: Tensor, f: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.finish(self.statistics(x, f, mask))


def _valid(f: Tensor, mask: Tensor | None) -> Tensor:
    """The mask as ``(B, 1, T)`` in ``f``'s dtype (all ones without one)."""
    if mask is None:
        return torch.ones_like(f[:, :1, :])
    return mask.to(f.dtype)[:, None, :]


def _moments(f: Tensor, weights: Tensor) -> Stats:
    """Total weight ``(B, *)``, weighted mean and weighted sum of squared deviations ``(B, D)`` over time.

    Centred (two passes over the chunk) rather than a difference of sums of squares, which loses the
    variance of near-constant channels to rounding.
    """
    mass = weights.sum(-1)
    mean = (f * weights).sum(-1) / mass.clamp(min=1e-30)
    return mass, mean, ((f - mean[..., None]).square() * weights).sum(-1)


def _merge_moments(a: Stats, b: Stats) -> Stats:
    """:func:`_moments` of two stretches of time combined (Chan, Golub and LeVeque's pairwise update)."""
    (wa, ma, sa), (wb, mb, sb) = a, b
    mass = wa + wb
    share = wb / mass.clamp(min=1e-30)
    delta = mb - ma
    return mass, ma + delta * share, sa + sb + delta.square() * wa * share


def _mean_std(stats: Stats, branches: int) -> Tensor:
    """Mean and standard deviation from :func:`_moments` of ``branches`` blocks of D channels: ``(B, 2D)`` per
    branch (mean, then standard deviation), the branches' blocks concatenated."""
    mass, mean, squares = stats
    std = (squares / mass.clamp(min=1e-30)).clamp(min=1e-6).sqrt()
    return torch.cat([mean.unflatten(-1, (branches, -1)), std.unflatten(-1, (branches, -1))], dim=-1).flatten(1)


class TemporalAveragePooling(Pooling):
    """Mean of the descriptors over the valid time steps (a correct TAP; the original's was broken).

    Statistics: the sum of the descriptors (fp32) and the step count.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def statistics(self, x: Tensor, f: Tensor, mask: Tensor | None = None) -> Stats:
        f = f.float()
        m = _valid(f, mask)
        return (f * m).sum(-1), m.sum(-1)

    def finish(self, stats: Stats) -> Tensor:
        total, count = stats
        return total / count.clamp(min=1)


class TemporalStatisticsPooling(Pooling):
    """Mean and standard deviation of the descriptors over the valid time steps (x-vector statistics pooling).

    Statistics (fp32): the step count, the mean and the sum of squared deviations from it.
    """

    def __init__(self, dim: int, branches: int = 1) -> None:
        super().__init__()
        self.branches = branches
        self.out_dim = 2 * dim * branches

    def statistics(self, x: Tensor, f: Tensor, mask: Tensor | None = None) -> Stats:
        f = f.float()
        return _moments(f, _valid(f, mask))

    def merge(self, a: Stats, b: Stats) -> Stats:
        return _merge_moments(a, b)

    def finish(self, stats: Stats) -> Tensor:
        return _mean_std(stats, self.branches)


class AttentiveStatisticsPooling(Pooling):
    """Attentive statistics pooling (Okabe et al., 2018) with channel-wise attention.

    A small 1x1-conv network scores every step for every channel; a softmax over the valid steps weighs the
    mean and standard deviation. Padded steps get zero weight, so a padded batch equals each clip alone.
    Statistics (fp32), per channel: the largest score ``m``, then with ``w = exp(score - m)`` (the softmax's
    numerator) the sum of ``w``, the ``w``-weighted mean and the weighted sum of squared deviations. With
    ``branches``, each branch has its own attention network (grouped convs).
    """

    def __init__(self, dim: int, branches: int = 1, bottleneck: int = 128) -> None:
        super().__init__()
        k = branches
        self.attention = nn.Sequential(nn.Conv1d(k * dim, k * bottleneck, 1, groups=k), nn.Tanh(),
                                       nn.Conv1d(k * bottleneck, k * dim, 1, groups=k))
        self.branches = branches
        self.out_dim = 2 * dim * branches

    def statistics(self, x: Tensor, f: Tensor, mask: Tensor | None = None) -> Stats:
        f = f.float()
        with torch.autocast(f.device.type, enabled=False):
            scores = self.attention(f)
            if mask is not None:
                scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
            top = scores.amax(dim=-1, keepdim=True)
            return (top.squeeze(-1), *_moments(f, (scores - top).exp()))

    def merge(self, a: Stats, b: Stats) -> Stats:
        """Both sets of weights rescaled to the larger maximum score, then combined."""
        top = torch.maximum(a[0], b[0])
        scaled = [(s[1] * (s[0] - top).exp(), s[2], s[3] * (s[0] - top).exp()) for s in (a, b)]
        return (top, *_merge_moments(*scaled))

    def finish(self, stats: Stats) -> Tensor:
        return _mean_std(stats[1:], self.branches)


class NetVLAD(Pooling):
    """NetVLAD / GhostVLAD exactly as the original ``VladPooling``.

    Soft-assignment over ``clusters + ghost_clusters`` (a (H, 1) conv on the backbone output), residuals of
    the descriptors against the centers, ghost clusters dropped, per-cluster L2 normalisation, cluster-major
    flattening. No input or global normalisation (as the original).
    Statistics: the residual sums ``(B, K, D)`` (fp32): the assignment-weighted sums of the descriptors less
    the assignment masses times the centers.
    """

    def __init__(self, in_channels: int, dim: int, clusters: int, ghost_clusters: int = 0, height: int = 7) -> None:
        super().__init__()
        if clusters < 1 or ghost_clusters < 0:
            raise ConfigError(f"pooling needs clusters >= 1 and ghost_clusters >= 0, got {clusters} and {ghost_clusters}")
        self.clusters = clusters
        self.assignment = nn.Conv2d(in_channels, clusters + ghost_clusters, (height, 1))
        self.centers = nn.Parameter(torch.empty(clusters + ghost_clusters, dim))
        nn.init.orthogonal_(self.centers)
        self.out_dim = clusters * dim

    def statistics(self, x: Tensor, f: Tensor, mask: Tensor | None = None) -> Stats:
        a = self.assignment(x).squeeze(2).softmax(dim=1)[:, : self.clusters]  # (B, K, T)
        if mask is not None:
            a = a * mask.to(a.dtype)[:, None, :]
        with torch.autocast(f.device.type, enabled=False):
            a = a.float()
            centers = self.centers[: self.clusters].float()
            return (torch.einsum("bkt,bdt->bkd", a, f.float()) - a.sum(-1, keepdim=True) * centers,)

    def finish(self, stats: Stats) -> Tensor:
        return F.normalize(stats[0], dim=-1, eps=1e-6).flatten(1)  # eps 1e-6 on the norm = TF's 1e-12 on its square


POOLINGS: Registry[Pooling] = Registry("pooling", base=Pooling, context=("in_channels", "height", "dim", "branches"))


def _one_branch(name: str, branches: int) -> None:
    if branches != 1:
        raise ConfigError(f"pooling {name!r} assigns all channels to one set of clusters: it takes one branch, "
                          f"not {branches} (use tap, tstp or astp)")


@POOLINGS.register("tap")
def tap(in_channels: int, height: int, dim: int, branches: int) -> TemporalAveragePooling:
    """Temporal average pooling: the mean of the descriptors (dim values)."""
    return TemporalAveragePooling(dim * branches)


@POOLINGS.register("tstp")
def tstp(in_channels: int, height: int, dim: int, branches: int) -> TemporalStatisticsPooling:
    """Temporal statistics pooling: mean and standard deviation (2 dim values)."""
    return TemporalStatisticsPooling(dim, branches)


@POOLINGS.register("astp")
def astp(in_channels: int, height: int, dim: int, branches: int) -> AttentiveStatisticsPooling:
    """Attentive statistics pooling: attention-weighted mean and standard deviation (2 dim values)."""
    return AttentiveStatisticsPooling(dim, branches)


@POOLINGS.register("vlad")
def vlad(in_channels: int, height: int, dim: int, branches: int, clusters: int = 8) -> NetVLAD:
    """NetVLAD: residuals to `clusters` centers (clusters x dim values)."""
    _one_branch("vlad", branches)
    return NetVLAD(in_channels, dim, clusters, 0, height)


@POOLINGS.register("gvlad")
def gvlad(in_channels: int, height: int, dim: int, branches: int, clusters: int = 8,
          ghost_clusters: int = 2) -> NetVLAD:
    """GhostVLAD: NetVLAD with `ghost_clusters` more clusters whose residuals are dropped (the paper's)."""
    _one_branch("gvlad", branches)
    return NetVLAD(in_channels, dim, clusters, ghost_clusters, height)
