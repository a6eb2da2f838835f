"""``ghostvlad serve``: refuses unsafe or bad setups with one line, serves over loopback, stops on SIGTERM."""
import io
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import soundfile as sf
import torch
from typer.testing import CliRunner

from ghostvlad.cli import app
from ghostvlad.features import FrontEndConfig
from ghostvlad.inference import SpeakerModel
from ghostvlad.models import EncoderConfig, SpeakerEncoder

runner = CliRunner()


def model_dir(tmp_path):
    torch.manual_seed(0)
    enc = SpeakerEncoder(EncoderConfig(width=0.125, clusters=4, ghost_clusters=2, descriptor_dim=16, embed_dim=12))
    return SpeakerModel(enc, FrontEndConfig()).save(tmp_path / "model")


def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "nowhere"), "--host", "0.0.0.0"],
                           env={"GHOSTVLAD_TOKEN": ""})
    assert result.exit_code == 1
    assert "listening on 0.0.0.0 (not loopback) needs a bearer token" in result.output
    assert "Traceback" not in result.output


def test_refuses_a_file_that_is_not_a_gallery(tmp_path):
    db = tmp_path / "notes.db"
    db.write_text("hello")
    result = runner.invoke(app, ["serve", "--model", str(model_dir(tmp_path)), "--db", str(db), "--port", "0"])
    assert result.exit_code == 1 and "not a ghostvlad gallery" in result.output


def test_serves_on_loopback_and_stops_on_sigterm(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "GHOSTVLAD_TOKEN": "tok", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "ghostvlad", "serve", "--model", str(model_dir(tmp_path)),
                               "--db", str(tmp_path / "g.db"), "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120  # start-up (torch, the model) on a loaded 2-core machine
        while True:
            assert server.poll() is None, server.stdout.read()  # exited: its output says why
            assert time.monotonic() < deadline, "no answer on /healthz"  # still running: reading would block
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        wav = io.BytesIO()
        sf.write(wav, np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000, format="WAV")
        assert len(httpx.post(f"{base}/v1/embed", content=wav.getvalue()).json()["embedding"]) == 12
        enrol = {"data": {"name": "x"}, "files": {"file": ("x.wav", wav.getvalue())}}
        assert httpx.post(f"{base}/v1/enroll", **enrol).status_code == 401  # the token came from the environment
        assert httpx.post(f"{base}/v1/enroll", headers={"Authorization": "Bearer tok"}, **enrol).status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert server.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal once shut down
    assert "Application shutdown complete" in output
    assert f"serving {tmp_path / 'model'} on http://127.0.0.1:{port}/" in output and "Traceback" not in output


def test_a_port_in_use_is_one_line_before_loading_anything(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--model", str(tmp_path / "nowhere"), "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.output
