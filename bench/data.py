"""Training-data throughput (a benchmark, not a test): crops/s of CropDataset and ShardCropDataset.

Generates a corpus of ``--files`` speech-like clips of 4-8 s (16 kHz, 16-bit) per format in a temporary directory,
then measures, per format: the full-decode baseline ``train_crop(load_audio(path))`` and ``CropDataset`` in this
process, and a torch DataLoader (batch 64) with each of ``--workers`` worker processes; then the same for
``ShardCropDataset`` over FLAC shards of the corpus. One H100 trains on about 4,000 crops/s, so a 16-core machine
needs >= 500 crops/s per worker process. ``--augment CONFIG`` adds rows with that shipped config's simulated-channel
augmentation (``data.augment``) on every crop of the config's length (``data.frames``), and ``--stages`` a breakdown:
each stage alone on every (already read) crop, with what it costs a crop at its probability in the chain, and the
whole chain at the config's probabilities without reading.

    python bench/data.py [--files 200] [--workers 1 2] [--formats wav flac m4a] [--seconds 3] [--augment demo modern]
                         [--stages]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import av
import numpy as np
import scipy.signal as sps
import soundfile as sf
import torch
from torch.utils.data import DataLoader, RandomSampler

from ghostvlad.audio import load_audio
from ghostvlad.data.augment import STAGE_ORDER, STAGES, ChannelAugment
from ghostvlad.data.dataset import CropDataset, ShardCropDataset
from ghostvlad.data.manifest import build_manifest, read_manifest
from ghostvlad.data.shards import write_shards
from ghostvlad.features import train_crop
from ghostvlad.train.config import load_config

BATCH = 64


def speech_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Int16 noise shaped like speech: a low-pass spectral tilt and a ~4 Hz syllable envelope with pauses."""
    noise = sps.lfilter([1.0], [1.0, -0.9], rng.normal(0, 1, n))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * np.arange(n) / 16000 + rng.uniform(0, 6)), 0, None)
    x = noise * envelope**2
    return (x / np.abs(x).max() * 0.5 * 32767).astype(np.int16)


def write_m4a(path: Path, pcm: np.ndarray) -> None:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def make_corpus(root: Path, files: int, fmt: str) -> tuple[list[Path], list[str]]:
    rng = np.random.default_rng(0)
    paths, speakers = [], []
    for k in range(files):
        speaker = f"id{k % 20:05d}"
        path = root / fmt / speaker / f"v{k // 20:03d}" / f"{k:05d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        pcm = speech_like(rng, int(rng.uniform(4, 8) * 16000))
        if fmt == "m4a":
            write_m4a(path, pcm)
        else:
            sf.write(path, pcm, 16000, subtype="PCM_16")
        paths.append(path)
        speakers.append(speaker)
    return paths, speakers


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of processes (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rate(run: Callable[[], int], seconds: float) -> tuple[float, float]:
    """Items per wall second and per CPU second of ``run()`` (returns how many it made), for at least ``seconds``."""
    run()  # warm-up: page cache
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        done += run()
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu)


def steady_rate(loader: DataLoader, batches: Iterable, seconds: float) -> tuple[float, float]:
    """Crops per wall second and per worker-process CPU second of a persistent-worker DataLoader, after one batch."""
    it = iter(batches)
    next(it)
    pids = [w.pid for w in loader._iterator._workers]  # noqa: SLF001 - the worker processes of this iterator
    done, start, cpu = 0, time.perf_counter(), cpu_seconds(pids)
    for x, _ in it:
        done += len(x)
        if time.perf_counter() - start > seconds:
            break
    return done / (time.perf_counter() - start), done / (cpu_seconds(pids) - cpu)


def row(source: str, reader: str, rates: tuple[float, float]) -> None:
    print(f"{source:<14} {reader:<44} {rates[0]:9.0f} {rates[1]:13.0f}", flush=True)


def stage_rows(config: str, dataset: CropDataset, seconds: float) -> None:
    """Crops/s of each stage of ``dataset.augment`` alone on every crop (rooms and babble donors as in training),
    then of the whole chain at its probabilities; crops read beforehand, so reading is not counted."""
    augment = dataset.augment
    crops = [dataset[i][0] for i in range(len(dataset))]
    rngs = [np.random.default_rng([0, i, 1]) for i in range(len(crops))]

    def apply(step: Callable[[np.ndarray, np.random.Generator], np.ndarray]) -> Callable[[], int]:
        def run() -> int:
            for crop, rng in zip(crops, rngs):
                step(crop, rng)
            return len(crops)
        return run

    for stage in STAGE_ORDER:
        if stage in augment.probs:
            fn = STAGES.get(stage)
            rates = rate(apply(lambda x, rng, fn=fn: fn(x, rng, augment.context)), seconds)
            prob = augment.probs[stage]
            row(f"{config} stage", f"{stage} alone; p={prob:g}: {1000 * prob / rates[1]:.2f} ms CPU a crop", rates)
    row(f"{config} stage", "whole chain, crops already read", rate(apply(augment), seconds))


def epochs(loader: DataLoader, dataset) -> Iterable:
    """Batches of epoch after epoch (a shard epoch of a small corpus is short)."""
    for epoch in range(10**6):
        dataset.set_epoch(epoch)
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--formats", nargs="+", default=["wav", "flac"], choices=["wav", "flac", "m4a"])
    parser.add_argument("--seconds", type=float, default=3.0, help="Duration of each measurement.")
    parser.add_argument("--augment", nargs="*", default=[], help="Shipped configs whose augmentation to measure too.")
    parser.add_argument("--stages", action="store_true", help="Also time each augmentation stage alone.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{os.cpu_count()} CPUs, {args.files} clips of 4-8 s per format, DataLoader batch {BATCH}")
    print(f"{'source':<14} {'reader':<44} {'crops/s':>9} {'per CPU-s':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for fmt in args.formats:
            files, speakers = make_corpus(root, args.files, fmt)
            build_manifest(files, speakers, root / f"{fmt}.csv", workers=max(args.workers))
            manifest = read_manifest(root / f"{fmt}.csv")
            waves_rng = np.random.default_rng(0)

            def full_decode() -> int:
                for path in manifest.paths:
                    train_crop(load_audio(path), waves_rng)
                return len(manifest)

            dataset = CropDataset(manifest)

            def in_process() -> int:
                for i in range(len(dataset)):
                    dataset[i]
                return len(dataset)

            source = f"{fmt} files"
            row(source, "train_crop(load_audio()), 1 process", rate(full_decode, args.seconds))
            row(source, "CropDataset, 1 process", rate(in_process, args.seconds))
            for workers in args.workers:
                sampler = RandomSampler(dataset, replacement=True, num_samples=10**7)
                loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers,
                                    persistent_workers=True)
                row(source, f"DataLoader, {workers} worker(s)", steady_rate(loader, loader, args.seconds))
            for name in args.augment:
                data = load_config(name).data
                augmented = CropDataset(manifest, frames=data.frames)
                augmented.augment = ChannelAugment(data.augment, rooms=data.rooms, donor=augmented.donor)
                if args.stages:
                    stage_rows(name, augmented, args.seconds)

                def augmented_in_process() -> int:
                    for i in range(len(augmented)):
                        augmented[i]
                    return len(augmented)

                row(source, f"CropDataset + {name} augmentation, 1 process", rate(augmented_in_process, args.seconds))
                for workers in args.workers:
                    sampler = RandomSampler(augmented, replacement=True, num_samples=10**7)
                    loader = DataLoader(augmented, batch_size=BATCH, sampler=sampler, num_workers=workers,
                                        persistent_workers=True)
                    row(source, f"DataLoader + {name} aug., {workers} worker(s)",
                        steady_rate(loader, loader, args.seconds))
        index = write_shards(manifest, root / "shards", max_count=max(1, args.files // 8), workers=max(args.workers))
        label = f"{len(index.shards)} shards"
        shard_set = ShardCropDataset(index, shuffle_buffer=100)

        def shard_in_process() -> int:
            return sum(1 for _ in shard_set)

        row(label, "ShardCropDataset, 1 process", rate(shard_in_process, args.seconds))
        for workers in args.workers:
            loader = DataLoader(shard_set, batch_size=BATCH, num_workers=workers, persistent_workers=True)
            row(label, f"DataLoader, {workers} worker(s)", steady_rate(loader, epochs(loader, shard_set), args.seconds))


if __name__ == "__main__":
    main()
