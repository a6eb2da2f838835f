"""Load on the HTTP service (``ghostvlad serve``) from concurrent clients on loopback (a benchmark, not a test).

Starts ``ghostvlad serve`` in a subprocess on a free loopback port with the released configuration (random
weights), then for each client count sends WAV uploads to ``/v1/embed`` from that many concurrent clients
(each waits for its answer before sending the next) and reports embeddings/s and p50 / p99 latency. Every
level is bounded in requests (``--requests``, at least 2 per client) and in time (``--level-seconds``). Every
answer is checked against the offline embedding of the same clip (cosine >= 0.9999). The baseline is
offline batched ``embed_batch`` over the same clips on the same CPU (best of ``--repeat`` after a warm-up),
measured before the server starts. Rates are given per wall-clock second and per CPU-second of the process
doing the work (the server's, from ``/proc``; Linux), which other load on a shared machine disturbs less.

    python bench/serve.py [--clients 1 4 16 64] [--seconds 4] [--requests 64] [--precision fp32] [--no-mirror]

Traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import torch
from _runtime import add_runtime_options, apply_runtime_options

from ghostvlad.audio import load_audio_bytes
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.loading import load_model
from ghostvlad.models import EncoderConfig, SpeakerEncoder

MIN_COSINE = 0.9999


def wav_bytes(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, x, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(model_dir: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    server = subprocess.Popen(
        [sys.executable, "-m", "ghostvlad", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
         "--port", str(port), "--precision", args.precision, "--max-queue", "1024",
         "--max-wait-ms", str(args.max_wait_ms)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start within 120 s")


async def load_level(base: str, clients: int, uploads: list[bytes], requests: int, seconds: float):
    """``(answers [(clip, embedding)], latencies, elapsed, errors)`` for ``clients`` concurrent clients."""
    answers, latencies, errors = [], [], []
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=300) as http:
        start = time.perf_counter()

        async def client() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() - start < seconds:
                clip = sent % len(uploads)
                sent += 1
                t0 = time.perf_counter()
                r = await http.post("/v1/embed", content=uploads[clip], headers={"Content-Type": "audio/wav"})
                latencies.append(time.perf_counter() - t0)
                if r.status_code == 200:
                    answers.append((clip, np.asarray(r.json()["embedding"], np.float32)))
                else:
                    errors.append(f"{r.status_code} {r.text}")

        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return answers, np.array(latencies), elapsed, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=4.0, help="Length of each clip.")
    parser.add_argument("--clips", type=int, default=32, help="Distinct clips (sent round-robin).")
    parser.add_argument("--requests", type=int, default=64, help="Requests per level (at least 2 per client).")
    parser.add_argument("--level-seconds", type=float, default=120.0, help="Time limit of each level.")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--no-mirror", action="store_true", help="Without the 'wav + reversed wav' extension.")
    parser.add_argument("--repeat", type=int, default=2, help="Offline runs (the best counts) after a warm-up.")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="The server's batching wait.")
    add_runtime_options(parser)
    args = parser.parse_args()
    apply_runtime_options(args)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = SpeakerModel(SpeakerEncoder(EncoderConfig()), FrontEndConfig(mirror=not args.no_mirror)).save(
            Path(tmp) / "model")
        model = load_model(model_dir, precision=args.precision)
        uploads = [wav_bytes(rng.normal(0, 0.1, int(args.seconds * 16000)).astype(np.float32))
                   for _ in range(args.clips)]
        waves = [load_audio_bytes(u) for u in uploads]
        model.embed_batch(waves)  # warm-up: oneDNN prepares each batch shape once
        times, cpu = [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            offline = model.embed_batch(waves)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        offline_rate, offline_cpu_rate = len(waves) / min(times), len(waves) / min(cpu)
        print(f"torch {torch.__version__}, {args.threads} threads, {args.seconds:g} s clips, {args.precision}, "
              f"mirror {'off' if args.no_mirror else 'on'}, batching wait {args.max_wait_ms:g} ms")
        print(f"offline embed_batch over {len(waves)} clips: {offline_rate:.2f} emb/s, "
              f"{offline_cpu_rate:.2f} emb per CPU-s")
        del model
        port = free_port()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # so that the server is stopped too
        server = start_server(model_dir, port, args)
        base = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(load_level(base, 1, uploads, 2, 60))  # warm-up
            print(f"{'clients':>7} {'requests':>8} {'emb/s':>7} {'x offline':>9} {'per CPU-s':>9} {'x offline':>9} "
                  f"{'p50 ms':>8} {'p99 ms':>8} {'min cos':>8} {'errors':>6}")
            for clients in args.clients:
                requests = max(args.requests, 2 * clients)
                c0 = cpu_seconds(server.pid)
                answers, lat, elapsed, errors = asyncio.run(
                    load_level(base, clients, uploads, requests, args.level_seconds))
                rate, cpu_rate = len(answers) / elapsed, len(answers) / (cpu_seconds(server.pid) - c0)
                cos = min((float(e @ offline[clip]) for clip, e in answers), default=float("nan"))
                print(f"{clients:7d} {len(lat):8d} {rate:7.2f} {rate / offline_rate:9.2f} {cpu_rate:9.2f} "
                      f"{cpu_rate / offline_cpu_rate:9.2f} "
                      f"{1000 * np.percentile(lat, 50):8.0f} {1000 * np.percentile(lat, 99):8.0f} {cos:8.5f} "
                      f"{len(errors):6d}")
                if errors:
                    print(f"  first error: {errors[0]}")
                if cos < MIN_COSINE:
                    print(f"  server embeddings differ from offline ones (cosine {cos:.5f} < {MIN_COSINE})")
            health = httpx.get(f"{base}/healthz").json()
            print(f"server: {health['embedded']} embeddings in {health['batches']} batches "
                  f"(largest {health['largest_batch']})")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


if __name__ == "__main__":
    main()
