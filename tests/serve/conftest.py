"""The service's fixtures: a tiny calibrated random model, and the service on a free loopback port, run by uvicorn
in a thread."""
import socket
import threading
import time

import pytest
from support.models import calibrated_tiny_model
from support.serve import VOICES, voice

from ghostvlad.serve import ServeConfig, create_app, make_server


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
