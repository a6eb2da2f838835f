"""Embedding speed of the ONNX export (onnxruntime, CPU) against PyTorch, for the released configuration.

Random weights, batch 1, front-end included (decoding excluded), with and without the mirror extension;
each time is the best of ``--repeat`` runs after a warm-up, the backends taking turns, both with
``--threads`` threads.

    python bench/export.py [--threads 2] [--seconds 4] [--repeat 3]

"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _runtime import add_runtime_options, apply_runtime_options

from ghostvlad.export import OnnxSpeakerModel, export_onnx
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.models import EncoderConfig, SpeakerEncoder


def best_times(fns: list, repeat: int) -> list[float]:
    """Best of ``repeat`` runs of each function after a warm-up, taking turns so that both see the same load."""
    best = [float("inf")] * len(fns)
    for r in range(repeat + 1):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if r:  # run 0 is the warm-up
                best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    add_runtime_options(parser)
    args = parser.parse_args()
    apply_runtime_options(args)
    torch.manual_seed(0)
    encoder = SpeakerEncoder(EncoderConfig())
    wave = np.random.default_rng(0).normal(0, 0.1, int(args.seconds * 16000)).astype(np.float32)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads, "
          f"{args.seconds:g} s clip, batch 1, best of {args.repeat}")
    print(f"{'mirror':>6} {'backend':>11} {'ms/emb':>8} {'emb/s':>7} {'RTF':>7} {'speed-up':>8} {'cos':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for mirror in (True, False):
            model = SpeakerModel(encoder, FrontEndConfig(mirror=mirror))
            t0 = time.perf_counter()
            path = export_onnx(model, Path(tmp) / f"mirror-{mirror}.onnx")
            exported = time.perf_counter() - t0
            onnx_model = OnnxSpeakerModel(path, threads=args.threads)
            backends = {"pytorch": model, "onnxruntime": onnx_model}
            times = best_times([lambda b=b: b.embed_waveforms([wave]) for b in backends.values()], args.repeat)
            reference = model.embed_waveforms([wave])[0]
            for (name, backend), t in zip(backends.items(), times):
                cos = float(backend.embed_waveforms([wave])[0] @ reference)
                print(f"{str(mirror):>6} {name:>11} {1000 * t:8.1f} {1 / t:7.2f} {t / args.seconds:7.4f} "
                      f"{times[0] / t:7.2f}x {cos:8.5f}")
            print(f"{'':>6} (export {exported:.1f} s, {path.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
