"""End-to-end training throughput (a benchmark, not a test): crops/s and the fraction of time waiting for data.

Writes ``--files`` wav clips (4-8 s of noise, ``--speakers`` labels) and their manifest, then trains a config on
them for ``--steps`` steps, all in one epoch, with the real loop (DataLoader workers, front-end, forward, backward,
optimiser) and prints the ``crops_per_s`` and ``data_wait`` columns of ``metrics.csv`` (the first log interval,
warm-up, dropped).

    python bench/train_pipeline.py [--config paper] [--batch 160] [--steps 60] [--workers 8] [--device cuda]
                                   [--precision bf16] [--compile] [--files 2000]
"""
from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ghostvlad.data.manifest import build_manifest
from ghostvlad.train.config import load_config
from ghostvlad.train.loop import Trainer
from ghostvlad.train.run_folder import METRICS_NAME


def write_corpus(folder: Path, files: int, speakers: int) -> Path:
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(files):
        path = folder / f"id{i % speakers:05d}" / f"{i:06d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, rng.normal(0, 0.1, int(rng.uniform(4, 8) * 16000)).astype(np.float32), 16000)
        paths.append(path)
        labels.append(path.parent.name)
    return Path(build_manifest(paths, labels, folder / "train.csv", workers=4).manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="paper")
    parser.add_argument("--batch", type=int, default=160)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--speakers", type=int, default=200)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_corpus(folder / "wav", args.files, args.speakers)
        cfg = load_config(args.config, [f"train.batch_size={args.batch}", f"data.workers={args.workers}",
                                        f"train.precision={args.precision}", f"train.log_every={args.log_every}",
                                        f"train.compile={str(args.compile).lower()}",
                                        f"train.checkpoint_every={10 * args.steps}",
                                        # one epoch, as on VoxCeleb2 (6,700 steps): the loader's workers start once
                                        f"train.steps_per_epoch={args.steps}"])
        trainer = Trainer(cfg, manifest, folder / "run", device=args.device)
        for note in trainer.notices:
            print(f"note: {note}")
        trainer.run(max_steps=args.steps)
        rows = [r for r in csv.DictReader((folder / "run" / METRICS_NAME).open()) if r["step"]][1:]
    speed = [float(r["crops_per_s"]) for r in rows]
    wait = [float(r["data_wait"]) for r in rows]
    print(f"config {args.config}, batch {args.batch} on {args.device}, {args.precision}, {args.workers} workers"
          f"{', compiled' if args.compile else ''}: {np.mean(speed):.0f} crops/s (min {min(speed):.0f}), "
          f"data_wait {np.mean(wait):.3f} (max {max(wait):.3f}) over {len(rows)} log intervals after warm-up")


if __name__ == "__main__":
    main()
