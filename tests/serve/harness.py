"""Test harness (fixtures imported by the tests): the service on a free loopback port, run by uvicorn in a
thread, with a tiny calibrated random model."""
import io
import socket
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import calibrated_tiny_model

from ghostvlad.serve import ServeConfig, create_app, make_server

VOICES = {"alice": 220.0, "bob": 700.0, "carol": 2100.0}  # one tone (plus harmonics) per "speaker"


def voice(freq: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = sum(0.2 / k * np.sin(2 * np.pi * k * freq * t + rng.uniform(0, 6)) for k in (1, 2, 3))
    return (x + rng.normal(0, 0.01, t.size)).astype(np.float32)


def wav_bytes(x: np.ndarray, rate: int = 16000, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, x, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def model():
    return calibrated_tiny_model([voice(f, 0.5, seed=9) for f in VOICES.values()], seed=1)


@pytest.fixture
def serve():
    """``serve(model, db=None, **config) -> base URL``; every server started is stopped at the end."""
    servers = []

    def start(model, db=None, **config) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        cfg = ServeConfig(**{"host": "127.0.0.1", "port": port, **config})
        server = make_server(create_app(model, db, cfg), cfg, log_level="warning")
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread, sock))
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread, sock in servers:
        server.should_exit = True
        thread.join(10)
        sock.close()
