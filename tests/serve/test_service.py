"""The HTTP service over real HTTP on loopback: endpoints, bad input, limits, auth, batching exactness."""
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from support.serve import VOICES, voice, wav_bytes

from ghostvlad.audio import AudioError, load_audio
from ghostvlad.gallery import Gallery
from ghostvlad.serve import ServeConfig, create_app

TOKEN = "s3cret-token"


def files(**named: bytes) -> list:
    return [(field, (f"{field}.wav", data, "audio/wav")) for field, data in named.items()]


def enrol(base: str, name: str, *clips: bytes, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{base}/v1/enroll", data={"name": name}, headers=headers,
                      files=[("file", (f"{name}{i}.wav", c, "audio/wav")) for i, c in enumerate(clips)])


def test_embed_as_raw_body_and_multipart_equals_offline(model, serve, tmp_path):
    base = serve(model)
    x = voice(VOICES["alice"], 1.3)
    data = wav_bytes(x)
    (tmp_path / "a.wav").write_bytes(data)
    offline = model.embed(tmp_path / "a.wav")
    raw = httpx.post(f"{base}/v1/embed", content=data, headers={"Content-Type": "audio/wav"})
    multi = httpx.post(f"{base}/v1/embed", files=files(file=data))
    for r in (raw, multi):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["duration"] == pytest.approx(1.3, abs=1e-4)
        np.testing.assert_allclose(body["embedding"], offline, atol=1e-5)
    (tmp_path / "a.flac").write_bytes(wav_bytes(x, fmt="FLAC"))
    flac = httpx.post(f"{base}/v1/embed", content=(tmp_path / "a.flac").read_bytes())  # format found from content
    np.testing.assert_allclose(flac.json()["embedding"], model.embed(tmp_path / "a.flac"), atol=1e-5)


def test_verify_scores_decides_and_reports_the_operating_point(model, serve):
    base = serve(model)
    a1, a2 = wav_bytes(voice(VOICES["alice"], 1.0, seed=1)), wav_bytes(voice(VOICES["alice"], 1.2, seed=2))
    b = wav_bytes(voice(VOICES["bob"], 1.0, seed=3))
    same = httpx.post(f"{base}/v1/verify", files=files(a=a1, b=a2)).json()
    other = httpx.post(f"{base}/v1/verify", files=files(a=a1, b=b)).json()
    ea, ea2, eb = (model.embed(load_bytes(d)) for d in (a1, a2, b))
    assert same["score"] == pytest.approx(float(ea @ ea2), abs=1e-5)
    assert other["score"] == pytest.approx(float(ea @ eb), abs=1e-5)
    assert same["decision"] is None and same["operating_point"] is None  # the tiny model stores no threshold
    threshold = (same["score"] + other["score"]) / 2
    given = [httpx.post(f"{base}/v1/verify", files=files(a=a1, b=x), data={"threshold": threshold}).json()
             for x in (a2, b)]
    assert [g["decision"] for g in given] == [("same" if g["score"] >= threshold else "different") for g in given]
    assert {g["decision"] for g in given} == {"same", "different"}
    assert given[0]["operating_point"] == {"name": "given", "threshold": pytest.approx(threshold)}
    bad = httpx.post(f"{base}/v1/verify", files=files(a=a1, b=b), data={"operating_point": "far@0.01"})
    assert bad.status_code == 400 and "needs a calibrated model" in bad.json()["detail"]


def load_bytes(data: bytes) -> np.ndarray:
    from ghostvlad.audio import load_audio_bytes

    return load_audio_bytes(data)


def test_enrol_identify_list_delete(model, serve, tmp_path):
    db = tmp_path / "speakers.db"
    base = serve(model, db)
    assert httpx.get(f"{base}/v1/speakers").json() == {"speakers": []}
    empty = httpx.post(f"{base}/v1/identify", files=files(file=wav_bytes(voice(VOICES["bob"]))))
    assert empty.status_code == 409 and "empty" in empty.json()["detail"]
    for name, freq in VOICES.items():
        r = enrol(base, name, wav_bytes(voice(freq, 1.0, seed=1)), wav_bytes(voice(freq, 0.8, seed=2)))
        assert r.status_code == 200, r.text
        assert r.json()["name"] == name and r.json()["added"] == 2 and r.json()["utterances"] == 2
    assert enrol(base, "alice", wav_bytes(voice(VOICES["alice"], 0.9, seed=3))).json()["utterances"] == 3
    listed = httpx.get(f"{base}/v1/speakers").json()["speakers"]
    assert [(s["name"], s["utterances"]) for s in listed] == [("alice", 3), ("bob", 2), ("carol", 2)]
    query = wav_bytes(voice(VOICES["bob"], 1.1, seed=7))
    found = httpx.post(f"{base}/v1/identify", files=files(file=query), data={"top": "2", "threshold": "-1"}).json()
    with Gallery(db, model) as gallery:  # the same answer as the library's, from the file the server wrote
        expected = gallery.identify(load_bytes(query), 2, threshold=-1)
    assert [(m["name"], m["score"]) for m in found["matches"]] == [(m.name, pytest.approx(m.score, abs=1e-5))
                                                                    for m in expected]
    assert found["identified"] == expected[0].name
    assert found["operating_point"]["name"] == "given"
    assert httpx.delete(f"{base}/v1/speakers/bob").json() == {"name": "bob", "removed": 2}
    missing = httpx.delete(f"{base}/v1/speakers/bob")
    assert missing.status_code == 404 and missing.json()["detail"] == "no speaker named 'bob'"
    assert [s["name"] for s in httpx.get(f"{base}/v1/speakers").json()["speakers"]] == ["alice", "carol"]


def test_bad_audio_gets_the_cli_line_and_nothing_changes(model, serve, tmp_path):
    db = tmp_path / "speakers.db"
    base = serve(model, db, max_duration=3.0)
    good = wav_bytes(voice(VOICES["alice"]))
    assert enrol(base, "alice", good).status_code == 200
    before = db.read_bytes()
    cases = {"garbage.wav": b"this is not audio at all" * 20, "truncated.wav": good[: len(good) // 2],
             "short.wav": wav_bytes(voice(VOICES["alice"], 0.2)), "silent.wav": wav_bytes(np.zeros(16000, np.float32)),
             "empty.wav": b""}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(AudioError) as cli:  # what the CLI prints for the same file
            load_audio(path, min_duration=model.min_duration)
        r = httpx.post(f"{base}/v1/embed", files=[("file", (name, data, "audio/wav"))])
        assert r.status_code == 400 and r.json() == {"detail": f"{name}: {cli.value.reason}"}
        r = httpx.post(f"{base}/v1/enroll", data={"name": "bob"},
                       files=[("file", ("ok.wav", good, "audio/wav")), ("file", (name, data, "audio/wav"))])
        assert r.status_code == 400 and r.json()["detail"].startswith(f"{name}: ")
    long = httpx.post(f"{base}/v1/embed", content=wav_bytes(voice(VOICES["bob"], 4.0)))
    assert long.status_code == 400 and long.json()["detail"] == "body: too long: 4 s, maximum is 3 s"
    assert db.read_bytes() == before or Gallery(db).speakers()[0].utterances == 1
    assert [(s.name, s.utterances) for s in Gallery(db).speakers()] == [("alice", 1)]
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_malformed_requests_are_clear_4xx(model, serve, tmp_path):
    db = tmp_path / "speakers.db"
    base = serve(model, db)
    good = wav_bytes(voice(VOICES["alice"]))
    enrol(base, "alice", good)
    r = httpx.post(f"{base}/v1/embed", content=b"--x\r\nnot a part", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400 and r.json()["detail"].startswith("malformed multipart body: ")
    r = httpx.post(f"{base}/v1/verify", content=b"garbage", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400 and r.json()["detail"].startswith("malformed multipart body: ")
    r = httpx.post(f"{base}/v1/verify", files=files(a=good))
    assert r.status_code == 422 and r.json() == {"detail": "b: Field required"}
    r = httpx.post(f"{base}/v1/identify", files=files(file=good), data={"top": "0"})
    assert r.status_code == 422 and r.json()["detail"].startswith("top: ")
    r = httpx.post(f"{base}/v1/embed", data={"file": str(tmp_path / "a.wav")})  # a path is never opened
    assert r.status_code == 422 and r.json()["detail"].startswith("file: "), r.text
    r = httpx.post(f"{base}/v1/embed", data={"other": "x"})
    assert r.status_code == 415 and "raw request body" in r.json()["detail"]
    r = httpx.post(f"{base}/v1/enroll", data={"name": " alice"}, files=files(file=good))
    assert r.status_code == 400 and "invalid speaker name" in r.json()["detail"]
    r = httpx.post(f"{base}/v1/enroll", data={"name": "zed"}, files=[("file", ("x.wav", good, "audio/wav"))] * 17)
    assert r.status_code == 400 and "limit is 16" in r.json()["detail"]
    assert [(s["name"], s["utterances"]) for s in httpx.get(f"{base}/v1/speakers").json()["speakers"]] == [("alice", 1)]


def test_body_limits_and_slow_uploads(model, serve):
    base = serve(model, max_upload_bytes=50_000, read_timeout=0.5)
    big = wav_bytes(voice(VOICES["alice"], 2.0))  # 64 kB
    r = httpx.post(f"{base}/v1/embed", content=big)
    assert r.status_code == 413 and r.json()["detail"] == "request body over the limit of 50000 bytes"
    r = httpx.post(f"{base}/v1/embed", content=iter([big[:30_000], big[30_000:]]))  # chunked: no Content-Length
    assert r.status_code == 413
    host, port = urlparse(base).hostname, urlparse(base).port
    t0 = time.monotonic()
    with socket.create_connection((host, port)) as slow:  # declares 40 kB, sends 10 bytes, then stalls
        slow.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n0123456789")
        slow.settimeout(10)
        answer = b""
        while chunk := slow.recv(65536):  # until the server closes the connection
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 408") and "request body not complete within 0.5 s (10 bytes received)" in answer
    assert time.monotonic() - t0 < 5
    for first in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):  # a head that never ends, on a new connection
        t0 = time.monotonic()                                            # or after a first request (keep-alive)
        with socket.create_connection((host, port)) as slow:
            slow.sendall(first + b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: b")
            slow.settimeout(10)
            answer = b""
            while chunk := slow.recv(65536):  # until the server closes the connection
                answer += chunk
        assert answer.count(b"HTTP/1.1 200") == (1 if first else 0) and time.monotonic() - t0 < 5
    ok = httpx.post(f"{base}/v1/embed", content=wav_bytes(voice(VOICES["alice"], 1.0)))
    assert ok.status_code == 200


def test_auth_on_loopback_guards_enrol_and_delete(model, serve, tmp_path):
    base = serve(model, tmp_path / "g.db", token=TOKEN)
    good = wav_bytes(voice(VOICES["alice"]))
    for r in (enrol(base, "alice", good), enrol(base, "alice", good, token="wrong"),
              httpx.delete(f"{base}/v1/speakers/alice")):
        assert r.status_code == 401 and r.json() == {"detail": "missing or wrong bearer token"}
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{base}/v1/speakers").json() == {"speakers": []}
    assert enrol(base, "alice", good, token=TOKEN).status_code == 200
    assert httpx.post(f"{base}/v1/embed", content=good).status_code == 200  # reading needs no token on loopback
    assert httpx.delete(f"{base}/v1/speakers/alice", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_auth_when_exposed_guards_every_endpoint(model, serve, tmp_path):
    with pytest.raises(ValueError, match="needs a bearer token"):
        create_app(model, None, ServeConfig(host="0.0.0.0"))
    # the policy follows the configured address; the test itself only ever listens on loopback
    base = serve(model, tmp_path / "g.db", token=TOKEN, host="0.0.0.0")
    good = wav_bytes(voice(VOICES["alice"]))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    requests = [("GET", "/healthz", {}), ("GET", "/v1/speakers", {}), ("POST", "/v1/embed", {"content": good}),
                ("POST", "/v1/verify", {"files": files(a=good, b=good)}),
                ("POST", "/v1/enroll", {"files": files(file=good), "data": {"name": "x"}}),
                ("POST", "/v1/identify", {"files": files(file=good)}),
                ("DELETE", "/v1/speakers/x", {})]
    for method, path, kwargs in requests:
        assert httpx.request(method, base + path, **kwargs).status_code == 401, path
    for method, path, kwargs in requests:
        assert httpx.request(method, base + path, headers=auth, **kwargs).status_code == 200, path
    assert httpx.get(f"{base}/").status_code == 200  # the page and docs are static and hold no data


def test_concurrent_requests_are_batched_and_exact(model, serve):
    base = serve(model, max_wait=0.5)
    clips = [wav_bytes(voice(f, 0.6 + 0.25 * k, seed=k)) for k, f in enumerate([220.0, 700.0, 2100.0, 300.0] * 3)]
    with ThreadPoolExecutor(len(clips)) as pool:
        answers = list(pool.map(lambda c: httpx.post(f"{base}/v1/embed", content=c, timeout=30), clips))
    health = httpx.get(f"{base}/healthz").json()
    assert health["embedded"] == len(clips) and health["largest_batch"] > 1 and health["batches"] < len(clips)
    for clip, r in zip(clips, answers):  # each equals its embedding computed alone
        np.testing.assert_allclose(r.json()["embedding"], model.embed(load_bytes(clip)), atol=2e-5)


def test_a_full_queue_answers_503_and_recovers(model, serve):
    base = serve(model, max_wait=1.5, max_queue=2, batch_frames=100_000)
    clip = wav_bytes(voice(VOICES["bob"]))
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(httpx.post, f"{base}/v1/embed", content=clip, timeout=30) for _ in range(2)]
        deadline = time.monotonic() + 5
        while httpx.get(f"{base}/healthz").json()["queued"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        refused = httpx.post(f"{base}/v1/embed", content=clip)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "queue is full" in refused.json()["detail"]
        assert all(f.result().status_code == 200 for f in waiting)
    assert httpx.post(f"{base}/v1/embed", content=clip).status_code == 200


def test_connections_beyond_the_limit_get_a_json_503_and_the_server_recovers(model, serve):
    base = serve(model, max_connections=2, read_timeout=30)
    host, port = urlparse(base).hostname, urlparse(base).port
    idle = [socket.create_connection((host, port))]
    try:
        time.sleep(0.2)  # the server has accepted it
        assert httpx.get(f"{base}/healthz").status_code == 200  # this request's connection is the second of two
        idle.append(socket.create_connection((host, port)))  # two open connections fill the limit
        time.sleep(0.2)
        refused = httpx.get(f"{base}/healthz")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json() == {"detail": "the server is at its limit of 2 connections; retry later"}
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while (answer := httpx.get(f"{base}/healthz")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.05)  # the server notices the closed connections
    assert answer.status_code == 200


def test_concurrent_enrolments_keep_the_gallery_consistent(model, serve, tmp_path):
    db = tmp_path / "speakers.db"
    base = serve(model, db)
    clips = [voice(VOICES["carol"], 0.7 + 0.1 * k, seed=k) for k in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: enrol(base, "carol", wav_bytes(c)), clips))
        others = list(pool.map(lambda k: enrol(base, f"s{k}", wav_bytes(clips[k])), range(4)))
    assert all(r.status_code == 200 for r in answers + others)
    assert sorted(r.json()["utterances"] for r in answers) == list(range(1, 9))
    with Gallery(db, model) as gallery:
        assert gallery.speaker("carol").utterances == 8 and len(gallery) == 5
        mean = np.mean([model.embed(c) for c in clips], axis=0)
        match = gallery.identify_embedding(mean / np.linalg.norm(mean), 1)[0]
        assert match.name == "carol" and match.score == pytest.approx(1.0, abs=1e-5)


def test_health_docs_and_page(model, serve):
    base = serve(model)
    health = httpx.get(f"{base}/healthz").json()
    assert health["status"] == "ok" and health["embed_dim"] == model.embed_dim and health["gallery"] is False
    spec = httpx.get(f"{base}/openapi.json").json()
    assert {"/v1/embed", "/v1/verify", "/v1/identify", "/v1/enroll", "/v1/speakers", "/v1/speakers/{name}",
            "/healthz"} <= set(spec["paths"])
    assert httpx.get(f"{base}/docs").status_code == 200
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert httpx.get(f"{base}/v1/speakers").status_code == 409  # no gallery
    assert httpx.get(f"{base}/static/../app.py").status_code == 404


def test_a_clip_too_short_for_the_front_end_fails_alone(model, serve):
    from ghostvlad.inference import SpeakerModel

    lenient = SpeakerModel(model.saved_encoder, model.frontend_config, min_duration=0.0)  # `serve --min-duration 0`
    base = serve(lenient, max_wait=0.5)
    clips = [wav_bytes(voice(VOICES["alice"], 0.6, seed=k)) for k in range(6)]
    clips.insert(3, wav_bytes(voice(VOICES["bob"], 10 / 16000)))  # 10 samples
    with ThreadPoolExecutor(len(clips)) as pool:
        answers = list(pool.map(lambda c: httpx.post(f"{base}/v1/embed", content=c, timeout=30), clips))
    assert [r.status_code for r in answers] == [200, 200, 200, 400, 200, 200, 200]
    assert answers[3].json() == {"detail": "body: too short for the front-end: 10 samples, needs at least 257"}
