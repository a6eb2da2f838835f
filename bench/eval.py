"""Evaluation throughput of the released configuration (random weights) on this machine (a benchmark, not a test).

Generates ``--files`` wav files cycling through ``--seconds`` lengths and a trial list over them, then times
``ghostvlad.evaluate.evaluate`` (metadata, decoding, batched embedding, caching and scoring included) with an
empty cache, and again with the cache filled, in FP32 and bf16. Prints embeddings/s, seconds of audio per
second and real-time factor.

    python bench/eval.py [--files 16] [--seconds 4 6 8] [--threads 2] [--no-mirror] [--device cuda]
                         [--precision bf16] [--batch-frames 3200] [--workers 2]

"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from _runtime import add_runtime_options, apply_runtime_options

from ghostvlad.evaluate import evaluate
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.models import EncoderConfig, SpeakerEncoder


def write_corpus(folder: Path, files: int, seconds: list[float]) -> tuple[Path, float]:
    """``files`` noise clips and a trial list pairing neighbours (alternating labels); returns (trials, audio s)."""
    rng = np.random.default_rng(0)
    lengths = [seconds[i % len(seconds)] for i in range(files)]
    for i, s in enumerate(lengths):
        sf.write(folder / f"{i:04d}.wav", rng.normal(0, 0.1, int(s * 16000)).astype(np.float32), 16000)
    trials = folder / "trials.txt"
    trials.write_text("".join(f"{i % 2} {i:04d}.wav {(i + 1) % files:04d}.wav\n" for i in range(files)))
    return trials, sum(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--seconds", type=float, nargs="+", default=[4.0, 6.0, 8.0])
    parser.add_argument("--no-mirror", action="store_true", help="Without the 'wav + reversed wav' extension.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch-frames", type=int, default=3200)
    parser.add_argument("--workers", type=int, default=2, help="Decoding threads.")
    add_runtime_options(parser)
    args = parser.parse_args()
    apply_runtime_options(args)
    torch.manual_seed(0)
    encoder = SpeakerEncoder(EncoderConfig())
    print(f"torch {torch.__version__}, {args.threads} threads, mirror {not args.no_mirror}, "
          f"{args.files} files of {'/'.join(f'{s:g}' for s in args.seconds)} s")
    print(f"{'prec':>5} {'files':>5} {'audio s':>7} {'time s':>7} {'emb/s':>6} {'audio s/s':>9} {'RTF':>7} "
          f"{'cached s':>8}  (device {args.device}, batch frames {args.batch_frames}, {args.workers} workers)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        trials, audio = write_corpus(folder, args.files, args.seconds)
        for precision in args.precision:
            model = SpeakerModel(encoder, FrontEndConfig(mirror=not args.no_mirror), precision=precision,
                                 device=args.device, batch_frames=args.batch_frames)
            model.embed_waveforms([np.zeros(16000, np.float32)])  # warm-up
            cache = folder / f"cache-{precision}"
            t0 = time.perf_counter()
            result = evaluate(model, trials, folder, cache_dir=cache, workers=args.workers)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            evaluate(model, trials, folder, cache_dir=cache)
            warm = time.perf_counter() - t0
            print(f"{precision:>5} {result.computed:5d} {audio:7.0f} {cold:7.2f} {result.computed / cold:6.2f} "
                  f"{audio / cold:9.1f} {cold / audio:7.4f} {warm:8.3f}")


if __name__ == "__main__":
    main()
