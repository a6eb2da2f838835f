"""Embedding speed of the released configuration on this machine (a benchmark, not a test).

Reports embeddings/s, real-time factor and achieved GFLOP/s for 4 s and 8 s clips, batch 1 and batched,
with and without the mirror extension, in FP32 and bf16, front-end included (decoding excluded).

    python bench/embed.py [--threads 2] [--batch 8] [--seconds 4 8] [--repeat 3]

Runs under the same glibc malloc tunables as the CLI (``--no-tunables`` to compare without them).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from _runtime import add_runtime_options, apply_runtime_options
from torch.utils.flop_counter import FlopCounterMode

from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.models import EncoderConfig, SpeakerEncoder


def network_gflop(model: SpeakerModel, frames: int) -> float:
    """FLOPs (2 per multiply-add) of one forward pass of the encoder on ``frames`` frames."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.fused_encoder.embed(torch.zeros(1, 257, frames))
    return counter.get_total_flops() / 1e9


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, nargs="+", default=[4.0, 8.0])
    parser.add_argument("--repeat", type=int, default=3)
    add_runtime_options(parser)
    args = parser.parse_args()
    apply_runtime_options(args)
    torch.manual_seed(0)
    encoder = SpeakerEncoder(EncoderConfig())
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {args.threads} threads, GLIBC_TUNABLES={'set' if 'GLIBC_TUNABLES' in os.environ else 'unset'}")
    print(f"{'clip':>5} {'mirror':>6} {'prec':>5} {'batch':>5} {'emb/s':>7} {'RTF':>7} {'GFLOP/emb':>9} {'GFLOP/s':>8}")
    for seconds in args.seconds:
        waves = [rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32) for _ in range(args.batch)]
        for mirror in (True, False):
            reference = None
            for precision in ("fp32", "bf16"):
                model = SpeakerModel(encoder, FrontEndConfig(mirror=mirror), precision=precision)
                gflop = network_gflop(model, model.frontend.config.num_frames(len(waves[0])))
                emb = model.embed_waveforms(waves)
                if reference is None:
                    reference = emb
                cos = float((emb * reference).sum(1).min())
                for batch in (1, args.batch):
                    t = timed(lambda: model.embed_waveforms(waves[:batch]), args.repeat)
                    rate = batch / t
                    print(f"{seconds:4.0f}s {str(mirror):>6} {precision:>5} {batch:5d} {rate:7.2f} "
                          f"{t / (batch * seconds):7.4f} {gflop:9.1f} {rate * gflop:8.0f}"
                          + (f"   (min cos to fp32 {cos:.5f})" if precision != "fp32" and batch == 1 else ""))


if __name__ == "__main__":
    main()
