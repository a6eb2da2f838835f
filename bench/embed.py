"""Embedding speed of the released configuration on this machine (a benchmark, not a test).

Reports embeddings/s, real-time factor and achieved GFLOP/s for 4 s and 8 s clips, batch 1 and batched,
with and without the mirror extension, in FP32 and bf16, front-end included (decoding excluded).

    python bench/embed.py [--threads 2] [--batch 8] [--seconds 4 8] [--repeat 3]

``--api-vs-cli`` instead embeds ``--files`` 4 s wav files (FP32, mirror on, random weights of the released
configuration) side by side, ``--rounds`` times in turn, each in a fresh process:
  API       ``load_model(...).embed_batch(paths)`` (best of ``--repeat`` after a warm-up)
  API+env   the same under the glibc tunables the CLI used to re-execute itself with (``GLIBC_TUNABLES``)
  CLI       ``ghostvlad embed`` on ``--files`` and on twice as many files: files / difference in wall time
            (start-up and warm-up cancel)
and prints embeddings per wall-second and per CPU-second of the process (steadier on a shared machine) and the
ratios to the API; with ``--reference EMB_PER_S`` (the original framework's rate, measured separately on this
machine) also the API's ratio to it.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from _runtime import FORMER_CLI_TUNABLES, add_runtime_options, apply_runtime_options
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


API_CHILD = """
import sys, time
import torch
torch.set_num_threads({threads})
from ghostvlad.inference import load_model
paths = sys.argv[1:]
model = load_model({model!r}, precision="fp32", mirror=True)
model.embed_batch(paths)  # warm-up
wall, cpu = float("inf"), float("inf")
for _ in range({repeat}):
    t0, c0 = time.perf_counter(), time.process_time()
    model.embed_batch(paths)
    wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
print(len(paths) / wall, len(paths) / cpu)
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def api_vs_cli(args: argparse.Namespace) -> None:
    """Embeddings/s through the API and through the CLI on the same files, in turns (see the module doc)."""
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "GHOSTVLAD_NO_MALLOPT")}
    base["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        SpeakerModel(SpeakerEncoder(EncoderConfig()), FrontEndConfig(mirror=True)).save(folder / "model")
        rng = np.random.default_rng(0)
        paths = []
        for i in range(2 * args.files):
            paths.append(str(folder / f"{i:03d}.wav"))
            sf.write(paths[-1], rng.normal(0, 0.1, 4 * 16000).astype(np.float32), 16000)
        code = API_CHILD.format(threads=args.threads, model=str(folder / "model"), repeat=args.repeat)

        def api(env: dict) -> tuple[float, float]:
            done = subprocess.run([sys.executable, "-c", code, *paths[:args.files]], env=env, check=True,
                                  capture_output=True, text=True)
            wall, cpu = done.stdout.split()[-2:]
            return float(wall), float(cpu)

        def cli(n: int) -> tuple[float, float]:
            t0, c0 = time.perf_counter(), _children_cpu()
            subprocess.run([sys.executable, "-m", "ghostvlad", "embed", "--model", str(folder / "model"),
                            "--device", "cpu", "--precision", "fp32", "--mirror", "--out", str(folder / "e.npz"),
                            *paths[:n]], env=base, check=True, capture_output=True)
            return time.perf_counter() - t0, _children_cpu() - c0

        print(f"torch {torch.__version__}, {args.threads} threads, {args.files} x 4 s wav files, fp32, mirror on; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start")
        print("embeddings per wall-second / per CPU-second of the process")
        print(f"{'round':>5} {'API':>11} {'API+env':>11} {'CLI':>11} {'API+env/API':>11} {'CLI/API':>11}"
              + ("  API/reference" if args.reference else ""))
        for k in range(args.rounds):
            plain = api(base)
            tuned = api({**base, "GLIBC_TUNABLES": FORMER_CLI_TUNABLES})
            (w1, c1), (w2, c2) = cli(args.files), cli(2 * args.files)
            line = [plain, tuned, (args.files / (w2 - w1), args.files / (c2 - c1))]
            ratios = [(x[0] / plain[0], x[1] / plain[1]) for x in line[1:]]
            print(f"{k + 1:5d} " + " ".join(f"{w:5.2f}/{c:5.2f}" for w, c in line + ratios)
                  + (f"  {plain[0] / args.reference:14.2f}" if args.reference else ""), flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, nargs="+", default=[4.0, 8.0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--api-vs-cli", action="store_true", help="Compare the API and the CLI (see above).")
    parser.add_argument("--files", type=int, default=20, help="With --api-vs-cli: clips per timing.")
    parser.add_argument("--rounds", type=int, default=2, help="With --api-vs-cli: turns of the three timings.")
    parser.add_argument("--reference", type=float, help="With --api-vs-cli: the original framework's embeddings/s.")
    add_runtime_options(parser)
    args = parser.parse_args()
    apply_runtime_options(args)
    if args.api_vs_cli:
        api_vs_cli(args)
        return
    torch.manual_seed(0)
    encoder = SpeakerEncoder(EncoderConfig())
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {args.threads} threads")
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
