"""DET curve plots (false-alarm vs miss rate on normal-deviate axes)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm

from ..fileio import atomic_write
from .metrics import det_points, eer

_TICKS = np.array([1e-4, 1e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99])


def _probit(rate: np.ndarray | float) -> np.ndarray:
    """Normal deviate of a rate; 0 and 1 land far outside the plotted range instead of at -inf/inf."""
    return norm.ppf(np.clip(rate, 1e-12, 1.0 - 1e-12))


def _spread(ticks: np.ndarray) -> np.ndarray:
    """Ticks whose labels do not collide: gaps of at least 7 % of the axis span on the probit scale."""
    z = _probit(ticks)
    kept = [0]
    for i in range(1, len(ticks)):
        if z[i] - z[kept[-1]] >= 0.07 * (z[-1] - z[0]):
            kept.append(i)
    return ticks[kept]


def plot_det(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | os.PathLike, title: str | None = None
) -> None:
    """Write a PNG of one DET curve per (scores, labels) entry, each with its EER point marked.

    Axes run from about the finest rate the lists resolve (1 / smallest class count, clipped to
    0.01 %..5 %) to 40 % (99 % when some EER exceeds 30 %). The file is written atomically.
    """
    if not curves:
        raise ValueError("plot_det needs at least one curve")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finest, worst = 1.0, 0.0
    for name, (scores, labels) in curves.items():
        fa, miss = det_points(scores, labels)
        rate, _ = eer(scores, labels)
        n_target = int(np.sum(labels))
        finest = min(finest, 1.0 / min(n_target, np.size(labels) - n_target))
        worst = max(worst, rate)
        (line,) = ax.plot(_probit(fa), _probit(miss), label=f"{name} (EER {100 * rate:.2f}%)")
        ax.plot(_probit(rate), _probit(rate), "o", color=line.get_color())
    low = _TICKS[_TICKS <= np.clip(finest, 1e-4, 0.05)].max()
    ticks = _TICKS[(_TICKS >= low) & (_TICKS <= (0.99 if worst > 0.3 else 0.4))]
    lim = _probit(ticks[[0, -1]])
    ax.plot(lim, lim, ":", color="0.6", linewidth=1)
    shown = _spread(ticks)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(_probit(shown), [f"{100 * t:g}%" for t in shown])
    ax.set(xlim=lim, ylim=lim, xlabel="False alarm rate", ylabel="Miss rate", aspect="equal")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.4)
    ax.legend(loc="upper right")
    fig.tight_layout()

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
