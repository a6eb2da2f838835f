"""Speaker gallery speed on this machine (a benchmark, not a test): identification and enrolment.

With the released model configuration (512-d embeddings, random weights) and galleries of random speakers:

* identification latency with the embedding excluded (speaker matrix already loaded: ``M @ q`` + top-k),
  and the one-off load of the matrix from SQLite when a process first searches;
* the embedding of one 4 s query alone, and identification of a 4 s recording (embedding included);
* enrolment throughput: one transaction per speaker (3 recordings each, embeddings given), the bulk build
  (all speakers in one transaction), and ``enroll`` from audio (embedding included).

    python bench/gallery.py [--sizes 1000 100000] [--queries 50] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from _runtime import add_runtime_options, apply_runtime_options

from ghostvlad.features import FrontEndConfig
from ghostvlad.gallery import Gallery
from ghostvlad.inference import SpeakerModel
from ghostvlad.models import EncoderConfig, SpeakerEncoder


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def latencies(fn, n: int) -> np.ndarray:
    fn()  # warm-up
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def row(what: str, size: str, values_ms: np.ndarray | float, unit_name: str = "ms") -> None:
    values = np.atleast_1d(values_ms)
    print(f"{what:<44} {size:>8} {np.median(values):10.2f} {np.percentile(values, 95):10.2f} {unit_name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--queries", type=int, default=50)
    add_runtime_options(parser)
    args = parser.parse_args()
    apply_runtime_options(args)
    torch.manual_seed(0)
    model = SpeakerModel(SpeakerEncoder(EncoderConfig()), FrontEndConfig())
    dim = model.embed_dim
    rng = np.random.default_rng(0)
    query_wave = rng.normal(0, 0.1, 4 * 16000).astype(np.float32)
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, {dim}-d embeddings")
    print(f"{'':<44} {'speakers':>8} {'median':>10} {'p95':>10}")
    embed_ms = 1000 * latencies(lambda: model.embed(query_wave), 5)
    row("embed one 4 s query (full model, fp32)", "-", embed_ms)

    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"g{size}.db"
            speakers = unit(rng.standard_normal((size, dim), dtype=np.float32))
            t0 = time.perf_counter()
            with Gallery(path, model) as gallery:
                gallery.add_embeddings({f"spk{i:07d}": e for i, e in enumerate(speakers)})
            build = time.perf_counter() - t0
            row("enrol, bulk (one transaction)", f"{size}", size / build, "spk/s")
            queries = unit(speakers[rng.integers(0, size, args.queries)] + 0.5 * unit(
                rng.standard_normal((args.queries, dim), dtype=np.float32)))
            with Gallery(path) as gallery:
                t0 = time.perf_counter()
                gallery.identify_embedding(queries[0], top=5)
                row("first search: load matrix from SQLite", f"{size}", 1000 * (time.perf_counter() - t0))
                it = iter(np.tile(queries, (2, 1)))
                search_ms = 1000 * latencies(lambda: gallery.identify_embedding(next(it), top=5), args.queries)
            row("identify, embedding excluded (top 5)", f"{size}", search_ms)
            with Gallery(path, model) as gallery:
                total_ms = 1000 * latencies(lambda: gallery.identify(query_wave, top=5), 5)
            row("identify a 4 s query, embedding included", f"{size}", total_ms)
            print(f"{'':<44} {'':>8} gallery file {path.stat().st_size / 1e6:.0f} MB")

        path = Path(tmp) / "enrol.db"
        with Gallery(path, model) as gallery:
            batches = unit(rng.standard_normal((300, 3, dim), dtype=np.float32))
            t0 = time.perf_counter()
            for i, emb in enumerate(batches):
                gallery.add_embeddings({f"spk{i}": emb})
            rate = len(batches) / (time.perf_counter() - t0)
            row("enrol, one transaction per speaker (3 rec.)", f"{len(batches)}", rate, "spk/s")
            wavs = []
            for k in range(6):
                wavs.append(Path(tmp) / f"{k}.wav")
                sf.write(wavs[-1], rng.normal(0, 0.1, 4 * 16000).astype(np.float32), 16000)
            t0 = time.perf_counter()
            for k in range(2):
                gallery.enroll(f"audio{k}", wavs[3 * k:3 * k + 3])
            rate = len(wavs) / (time.perf_counter() - t0)
            row("enrol from audio (4 s files, embedding incl.)", "2", rate, "rec/s")


if __name__ == "__main__":
    main()
