"""The WebSocket /v1/stream over real loopback: running embeddings equal offline ones, matches, bad input, auth."""
import json

import httpx
import numpy as np
import pytest
from support.serve import VOICES, voice, wav_bytes
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

TOKEN = "tok-123"


def ws_url(base: str, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return base.replace("http://", "ws://") + "/v1/stream" + (f"?{query}" if query else "")


def pcm16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1, 1) * 32767).astype("<i2")


def closed_with(ws) -> tuple[dict, int]:
    """The error message the server sends before closing, and its close code."""
    message = json.loads(ws.recv(timeout=10))
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=10)
    return message, info.value.rcvd.code


def test_running_embedding_equals_offline_prefix_and_matches_the_gallery(model, serve, tmp_path):
    db = tmp_path / "speakers.db"
    base = serve(model, db)
    for name in ("alice", "bob"):
        httpx.post(f"{base}/v1/enroll", data={"name": name},
                   files={"file": ("x.wav", wav_bytes(voice(VOICES[name], 1.5, seed=1)))}).raise_for_status()
    samples = pcm16(voice(VOICES["bob"], 2.0, seed=4))
    answers = []
    with connect(ws_url(base, top=2, update=0.5)) as ws:
        for start in range(0, len(samples), 1000):  # 62.5 ms messages
            ws.send(samples[start:start + 1000].tobytes())
            if (start + 1000) % 8000 == 0:  # an answer after every 0.5 s of audio
                answers.append(json.loads(ws.recv(timeout=30)))
    assert [a["seconds"] for a in answers] == [0.5, 1.0, 1.5, 2.0]
    from ghostvlad.gallery import Gallery

    with Gallery(db, model) as gallery:
        for a in answers:
            prefix = samples[: int(a["seconds"] * 16000)].astype(np.float32) / 32768
            offline = model.embed(prefix)  # the tiny model's mirror is off, as streaming's
            assert float(np.dot(a["embedding"], offline)) >= 0.9999
            expected = gallery.identify_embedding(offline, 2)
            assert [m["name"] for m in a["matches"]] == [m.name for m in expected]
            assert [m["score"] for m in a["matches"]] == pytest.approx([m.score for m in expected], abs=1e-4)
            assert a["identified"] is None and a["matches"][0]["accepted"] is None  # no threshold known


def test_reset_short_audio_and_no_gallery(model, serve):
    base = serve(model)
    samples = pcm16(voice(VOICES["alice"], 1.0))
    with connect(ws_url(base, update=0.25)) as ws:
        ws.send(samples[:4000].tobytes())  # 0.25 s: below the model's minimum duration
        first = json.loads(ws.recv(timeout=30))
        assert first == {"seconds": 0.25, "embedding": None, "matches": [], "identified": None}
        ws.send(samples[4000:].tobytes())
        full = json.loads(ws.recv(timeout=30))
        assert full["seconds"] == 1.0 and len(full["embedding"]) == model.embed_dim and full["matches"] == []
        ws.send(json.dumps({"reset": True}))
        assert json.loads(ws.recv(timeout=30))["seconds"] == 0.0


@pytest.mark.parametrize(("message", "reason"), [
    (b"\x01\x02\x03", "binary message: odd number of bytes (3): 16-bit PCM has 2 bytes per sample"),
    ("hello", "text messages must be JSON commands"),
    ('{"volume": 11}', "text messages must be JSON commands"),
])
def test_bad_messages_close_with_4400_and_the_server_keeps_serving(model, serve, message, reason):
    base = serve(model)
    with connect(ws_url(base)) as ws:
        ws.send(pcm16(voice(VOICES["alice"], 0.2)).tobytes())
        ws.send(message)
        error, code = closed_with(ws)
    assert code == 4400 and error["error"].startswith(reason)
    assert httpx.get(f"{base}/healthz").status_code == 200
    with connect(ws_url(base, update=0.1)) as ws:
        ws.send(pcm16(voice(VOICES["alice"], 0.6)).tobytes())
        assert len(json.loads(ws.recv(timeout=30))["embedding"]) == model.embed_dim


def test_bad_parameters_idle_clients_and_too_many_streams(model, serve):
    base = serve(model, max_streams=1, stream_idle_timeout=0.5)
    with connect(ws_url(base, top=0)) as ws:
        error, code = closed_with(ws)
    assert code == 4400 and error["error"].startswith("query parameters")
    with connect(ws_url(base)) as first:
        with connect(ws_url(base)) as second:
            error, code = closed_with(second)
        assert code == 4503 and "limit is 1" in error["error"]
        error, code = closed_with(first)  # sends nothing: closed after the idle timeout
    assert code == 4408 and error["error"] == "no message for 0.5 s"


def test_token_when_exposed_by_header_or_first_message(model, serve):
    base = serve(model, token=TOKEN, host="0.0.0.0")  # the policy of a public address; listening on loopback
    audio = pcm16(voice(VOICES["alice"], 0.6)).tobytes()
    with connect(ws_url(base, update=0.1)) as ws:
        ws.send(audio)
        error, code = closed_with(ws)
    assert code == 4401 and "needs a bearer token" in error["error"]
    with connect(ws_url(base, update=0.1)) as ws:
        ws.send(json.dumps({"token": "wrong"}))
        assert closed_with(ws)[1] == 4401
    with connect(ws_url(base, update=0.1), additional_headers={"Authorization": "Bearer wrong"}) as ws:
        assert closed_with(ws)[1] == 4401
    with connect(ws_url(base, update=0.1)) as ws:
        ws.send(json.dumps({"token": TOKEN}))
        ws.send(audio)
        assert json.loads(ws.recv(timeout=30))["seconds"] == pytest.approx(0.6)
    with connect(ws_url(base, update=0.1), additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        ws.send(audio)
        assert json.loads(ws.recv(timeout=30))["seconds"] == pytest.approx(0.6)


def test_other_sample_rates_are_resampled(model, serve):
    base = serve(model)
    x = voice(VOICES["carol"], 1.0)
    import soxr

    x48 = soxr.resample(x, 16000, 48000)
    with connect(ws_url(base, update=0.9, sample_rate=48000)) as ws:
        for start in range(0, len(x48), 4800):
            ws.send(pcm16(x48[start:start + 4800]).tobytes())
        answer = json.loads(ws.recv(timeout=30))
    assert answer["seconds"] >= 0.9
    prefix = soxr.resample(pcm16(x48).astype(np.float32) / 32768, 48000, 16000)[: int(answer["seconds"] * 16000)]
    assert float(np.dot(answer["embedding"], model.embed(prefix))) > 0.99


def test_an_onnx_model_refuses_streams_with_4501_and_still_serves_requests(model, serve, tmp_path):
    from ghostvlad.export import export_onnx
    from ghostvlad.loading import load_model

    onnx = load_model(export_onnx(model, tmp_path / "model.onnx"))
    base = serve(onnx)
    with connect(ws_url(base)) as ws:
        message, code = closed_with(ws)
    assert code == 4501 and message == {"error": "live streams need a PyTorch model; this server runs an ONNX model"}
    response = httpx.post(f"{base}/v1/embed", files={"file": ("x.wav", wav_bytes(voice(VOICES["bob"], 1.0)))})
    assert response.status_code == 200 and len(response.json()["embedding"]) == onnx.embed_dim
