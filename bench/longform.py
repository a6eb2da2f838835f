"""Peak memory and time of embedding long recordings (a benchmark, not a test).

Writes a PCM16 wav of each ``--minutes`` duration (noise), then embeds it with ``SpeakerModel.embed`` (decoding
included) in a fresh process per run, with the released configuration (random weights), and reports the peak
resident memory of that process (and the peak before the embedding: torch, the model, a warm-up), the wall
and CPU time and the real-time factor. Clips over ``--chunk-frames`` frames go
through the exact chunked path; ``--whole`` also runs the one-pass path (``chunk_frames`` unlimited) for
comparison, and reports the cosine between the two embeddings.

    python bench/longform.py [--minutes 1 10 60] [--precision fp32] [--no-mirror] [--whole] [--threads 2]

"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from _runtime import add_runtime_options, apply_runtime_options


def write_noise(path: Path, minutes: float) -> None:
    """Noise in one-minute blocks (the writer never holds the whole recording)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
        left = round(minutes * 60 * 16000)
        while left > 0:
            block = min(left, 60 * 16000)
            f.write(rng.normal(0, 0.1, block).astype(np.float32))
            left -= block


def run_one(args: argparse.Namespace) -> None:
    """Child process: load the model, embed ``args.one``, print a JSON line."""
    import torch

    from ghostvlad.features import FrontEndConfig
    from ghostvlad.inference import SpeakerModel
    from ghostvlad.models import EncoderConfig, SpeakerEncoder

    torch.manual_seed(0)
    chunk = 10**12 if args.whole_run else args.chunk_frames
    model = SpeakerModel(SpeakerEncoder(EncoderConfig()), FrontEndConfig(mirror=args.mirror),
                         precision=args.precision, chunk_frames=chunk)
    model.embed_waveforms([np.random.default_rng(1).normal(0, 0.1, 32000).astype(np.float32)])  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    emb = model.embed(args.one)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_mb": after.ru_maxrss / 1024,
                      "base_mb": before.ru_maxrss / 1024, "embedding": emb.tolist()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--chunk-frames", type=int, default=3200)
    parser.add_argument("--whole", action="store_true", help="Also run the one-pass path, for comparison.")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: the wav to embed
    parser.add_argument("--whole-run", action="store_true", help=argparse.SUPPRESS)
    add_runtime_options(parser)
    args = parser.parse_args()
    apply_runtime_options(args)
    if args.one:
        run_one(args)
        return
    print(f"{args.threads} threads, {args.precision}, mirror {'on' if args.mirror else 'off'}, "
          f"chunk {args.chunk_frames} frames")
    print(f"{'audio':>8} {'path':>7} {'peak RSS MB':>11} {'before MB':>9} {'time s':>8} {'CPU s':>8} {'RTF':>7}")
    common = [f"--precision={args.precision}", "--mirror" if args.mirror else "--no-mirror",
              f"--chunk-frames={args.chunk_frames}", f"--threads={args.threads}"]
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            path = Path(tmp) / f"{minutes:g}min.wav"
            write_noise(path, minutes)
            results = {}
            for path_kind in ("chunked", "whole") if args.whole else ("chunked",):
                cmd = [sys.executable, __file__, f"--one={path}", *common] + (["--whole-run"] if path_kind == "whole" else [])
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    print(f"{minutes:6g} m {path_kind:>7} failed: {done.stderr.strip().splitlines()[-1:]}")
                    continue
                r = results[path_kind] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{minutes:6g} m {path_kind:>7} {r['peak_mb']:11.0f} {r['base_mb']:9.0f} "
                      f"{r['seconds']:8.1f} {r['cpu_s']:8.1f} {r['seconds'] / (minutes * 60):7.4f}", flush=True)
            if len(results) == 2:
                cos = float(np.dot(results["chunked"]["embedding"], results["whole"]["embedding"]))
                print(f"{'':>8} cosine chunked vs whole: {cos:.7f}")
            path.unlink()


if __name__ == "__main__":
    main()
