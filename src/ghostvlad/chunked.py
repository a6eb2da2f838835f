"""Exact embeddings of recordings of any length in memory bounded by a chunk, not by the duration.

The backbone is a stack of convolutions and pools whose reach in time is bounded
(:attr:`~ghostvlad.models.backbones.ThinResNet.time_context` frames each side), and every pooling is a function
of sums over time (:class:`~ghostvlad.models.pooling.Pooling`). So a long clip is cut into spans of output
steps; each span's spectrogram frames are computed from the samples alone (STFT framing, reflect padding at the
clip's ends, the mirror extension, per-frame normalisation: :meth:`~ghostvlad.features.Spectrogram.span`) with
``time_context`` frames of context each side, the backbone runs on them with the whole clip's time masks and
stem offset, the steps whose reach stays inside the span are kept, and their pooling statistics are merged
(in float64). The result equals whole-clip inference up to rounding (cosine > 0.99999).

:class:`~ghostvlad.streaming.EmbeddingStream` uses the same pieces on audio that arrives over time.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from .features import Spectrogram
from .models import SpeakerEncoder
from .models.pooling import Stats


def steps_per_chunk(network: SpeakerEncoder, chunk_frames: int) -> int:
    """Output steps one chunk of ``chunk_frames`` frames (context included) yields; ValueError if none."""
    backbone = network.backbone
    steps = (chunk_frames - 2 * backbone.time_context) // backbone.time_stride
    if steps < 1:
        least = 2 * backbone.time_context + backbone.time_stride
        raise ValueError(f"chunk_frames must be at least {least} for this backbone, got {chunk_frames}")
    return steps


def span_statistics(
    frontend: Spectrogram,
    network: SpeakerEncoder,
    wave: Tensor,
    num_samples: int,
    first_step: int,
    stops: tuple[int, ...],
    *,
    offset: int = 0,
    total_frames: int | None = None,
    autocast: AbstractContextManager | None = None,
) -> list[Stats]:
    """Pooling statistics of the output steps ``[first_step, stops[0])``, ``[stops[0], stops[1])``, ... of a clip
    of ``num_samples`` samples, from one backbone run (float64 statistics).

    ``wave`` holds the samples ``[offset, offset + len(wave))`` of the clip (see ``Spectrogram.span``);
    ``total_frames`` (default: the clip's) sets the time masks and, for a stride-2 stem, its 'SAME' offset.
    The run covers the frames of those steps plus ``time_context`` frames each side (none past the clip's end).
    """
    backbone = network.backbone
    stride, context = backbone.time_stride, backbone.time_context
    frames = frontend.config.num_frames(num_samples)
    total = frames if total_frames is None else total_frames
    first = stride * first_step - context
    stop = min(stride * stops[-1] + context, -(-max(frames, total) // stride) * stride)
    feats = frontend.span(wave, num_samples, first, stop - first, offset)
    with autocast or nullcontext():
        steps = network.span_steps(feats, total, first)
        out, begin = [], context // stride
        for end in stops:
            part = network.statistics(steps[..., begin : begin + end - first_step])
            out.append(tuple(t.double() for t in part))
            begin += end - first_step
            first_step = end
    return out


def merge(network: SpeakerEncoder, acc: Stats | None, stats: Stats) -> Stats:
    """``acc`` and ``stats`` merged (``stats`` when ``acc`` is None)."""
    return stats if acc is None else network.pooling.merge(acc, stats)


@torch.inference_mode()
def embed_chunked(
    frontend: Spectrogram,
    network: SpeakerEncoder,
    wave: Tensor,
    chunk_frames: int,
    *,
    autocast: AbstractContextManager | None = None,
) -> Tensor:
    """Unit-norm embedding ``(1, D)`` of one validated clip ``wave`` (1-D, 16 kHz), chunk by chunk.

    Each backbone run sees at most ``chunk_frames`` frames, context included.
    """
    num_samples = len(wave)
    step = steps_per_chunk(network, chunk_frames)
    frames = frontend.config.num_frames(num_samples)
    n_out = int(network.backbone.out_lengths(torch.tensor([frames])))
    acc: Stats | None = None
    for start in range(0, n_out, step):
        stop = min(start + step, n_out)
        stats = span_statistics(frontend, network, wave, num_samples, start, (stop,), autocast=autocast)[0]
        acc = merge(network, acc, stats)
    return network.embed_statistics(acc)
