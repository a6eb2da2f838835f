"""glibc allocator settings for CPU inference (a benchmark, not a test): page faults and speed per embedding.

Embeds batches of 4 s clips (released configuration, random weights, bf16, mirror off) in fresh processes under
three settings, alternating them ``--rounds`` times (fairer on a shared machine):
  tunables  GLIBC_TUNABLES (mmap/trim thresholds and transparent huge pages) set before the process starts, as
            the CLI once did by re-executing itself, plus mallopt
  mallopt   what the API and the CLI do: ``ghostvlad.allocator.keep_freed_memory`` (mallopt, in-process)
  none      glibc's defaults
and prints minor page faults, embeddings per CPU-second and per wall-second.

    python bench/allocator.py [--rounds 2] [--threads 1] [--batches 5]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from _runtime import FORMER_CLI_TUNABLES

CHILD = """
import resource, sys, time
import numpy as np, torch
torch.set_num_threads({threads})
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.models import EncoderConfig, SpeakerEncoder
torch.manual_seed(0)
model = SpeakerModel(SpeakerEncoder(EncoderConfig()), FrontEndConfig(mirror=False), precision="bf16")
waves = [np.random.default_rng(i).normal(0, 0.1, 64000).astype(np.float32) for i in range(4)]
model.embed_waveforms(waves)  # warm-up
faults, cpu, wall = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time(), time.perf_counter()
for _ in range({batches}):
    model.embed_waveforms(waves)
n = 4 * {batches}
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(f"{{faults / n:.0f}} {{n / (time.process_time() - cpu):.2f}} {{n / (time.perf_counter() - wall):.2f}}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "GHOSTVLAD_NO_MALLOPT")}
    settings = {"tunables": {**base, "GLIBC_TUNABLES": FORMER_CLI_TUNABLES}, "mallopt": base,
                "none": {**base, "GHOSTVLAD_NO_MALLOPT": "1"}}
    code = CHILD.format(threads=args.threads, batches=args.batches)
    print(f"{'setting':>9} {'faults/emb':>10} {'emb/CPU-s':>9} {'emb/s':>6}   (4 s clips, batch 4, bf16, "
          f"{args.threads} thread(s))")
    for _ in range(args.rounds):
        for name, env in settings.items():
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            faults, per_cpu, per_wall = done.stdout.split()
            print(f"{name:>9} {faults:>10} {per_cpu:>9} {per_wall:>6}")


if __name__ == "__main__":
    main()
