"""Latency and real-time factor of streaming embeddings (a benchmark, not a test).

Streams ``--seconds`` of noise through ``SpeakerModel.stream()`` with the released configuration (random
weights; streaming runs without the mirror extension) in updates of ``--updates`` seconds: each update is one
``push`` plus one ``embedding()``. Reports the median and 95th-percentile update latency (after the first
``--warmup`` seconds) and the real-time factor (compute time / audio time; below 1 keeps up with a live
stream), in wall time and in CPU time of the process (the latter is what one update costs on a machine shared
with other work; with one thread, CPU RTF below 1 means one core keeps up), for each thread count and precision, and the cosine between the final running embedding and the
offline embedding of the whole stream.

    python bench/stream.py [--seconds 60] [--updates 0.2 0.5 1] [--thread-counts 1 2] [--precisions fp32 bf16]

"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _runtime import add_runtime_options, apply_runtime_options

from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.models import EncoderConfig, SpeakerEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--updates", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    add_runtime_options(parser)
    args = parser.parse_args()
    apply_runtime_options(args)
    torch.manual_seed(0)
    encoder = SpeakerEncoder(EncoderConfig())
    wave = np.random.default_rng(0).normal(0, 0.1, round(args.seconds * 16000)).astype(np.float32)
    print(f"torch {torch.__version__}, {args.seconds:g} s stream")
    print(f"{'threads':>7} {'prec':>5} {'update s':>8} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'RTF':>6} "
          f"{'CPU p50 ms':>10} {'CPU RTF':>7} {'cos offline':>11}")
    for precision in args.precisions:
        model = SpeakerModel(encoder, FrontEndConfig(mirror=False), precision=precision)
        offline = model.embed_waveforms([wave])[0]
        for threads in args.thread_counts:
            torch.set_num_threads(threads)
            for update in args.updates:
                block = round(update * 16000)
                stream = model.stream()
                latencies = []
                for start in range(0, len(wave), block):
                    t0, c0 = time.perf_counter(), time.process_time()
                    stream.push(wave[start : start + block])
                    emb = stream.embedding()
                    latencies.append((start + block, time.perf_counter() - t0, time.process_time() - c0))
                kept = np.array([(t, c) for end, t, c in latencies if end > args.warmup * 16000]) * 1000
                wall, cpu = kept[:, 0], kept[:, 1]
                audio = len(kept) * update * 1000
                print(f"{threads:7d} {precision:>5} {update:8.1f} {np.median(wall):7.1f} {np.percentile(wall, 95):7.1f} "
                      f"{wall.max():7.1f} {wall.sum() / audio:6.3f} {np.median(cpu):10.1f} {cpu.sum() / audio:7.3f} "
                      f"{float(emb @ offline):11.6f}", flush=True)


if __name__ == "__main__":
    main()
