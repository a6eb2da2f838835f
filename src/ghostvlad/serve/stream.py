"""The WebSocket ``/v1/stream``: live PCM16 audio in, the running embedding and best matches out.

Protocol (query parameters ``top`` (default 3), ``update`` (seconds of audio between answers, default 0.5) and
``sample_rate`` (of the PCM sent, default 16000; other rates are resampled with soxr)):

* binary messages: little-endian 16-bit mono PCM of any length (an even number of bytes);
* text messages: JSON commands, ``{"token": "..."}`` (first, when the server needs a token and the handshake
  carried no ``Authorization`` header: browsers cannot set one) and ``{"reset": true}`` (start over);
* answers, after every ``update`` seconds of audio and after a reset: ``{"seconds": s, "embedding": [...] | null,
  "matches": [{"name", "score", "accepted"}, ...], "identified": name | null}`` (``embedding`` is null while
  the audio is shorter than the model's minimum or silent; ``matches`` are empty without a gallery).

Bad input (odd-length PCM, text that is not a command, a wrong token, silence from the client for
``idle_timeout``) gets ``{"error": "one line"}`` and the connection is closed with an application code that
mirrors HTTP: 4400 bad input, 4401 token, 4408 idle, 4501 a model that cannot stream (ONNX), 4503 too many
streams. Each stream runs its model work
on the batcher's model thread, between batches; its memory is bounded whatever its length.
"""
from __future__ import annotations

import asyncio
import json
import soxr
from fastapi import WebSocket, WebSocketDisconnect

from ..audio import SAMPLE_RATE, AudioError
from ..errors import GhostvladError
from ..gallery import GalleryError
from ..inference import SpeakerModel
from ..streaming import pcm16_samples
from .service import Service


BAD_INPUT, UNAUTHORIZED, UNSUPPORTED, IDLE, BUSY = 4400, 4401, 4501, 4408, 4503


async def serve_stream(websocket: WebSocket, service: Service) -> None:
    """Handle one ``/v1/stream`` connection (see the module docstring)."""
    await websocket.accept()
    try:
        if not isinstance(service.model, SpeakerModel):
            raise StreamClosed(UNSUPPORTED, "live streams need a PyTorch model; this server runs an ONNX model")
        if service.streams >= service.config.max_streams:
            raise StreamClosed(BUSY, f"{service.streams} live streams already; the limit is {service.config.max_streams}")
        params = websocket.query_params
        try:
            top, update, rate = int(params.get("top", 3)), float(params.get("update", 0.5)), int(
                params.get("sample_rate", SAMPLE_RATE))
        except ValueError:
            top = 0
        if not (1 <= top <= 100 and 0.05 <= update <= 60 and 8000 <= rate <= 192000):
            raise StreamClosed(BAD_INPUT, "query parameters: top 1-100, update 0.05-60 s, sample_rate 8000-192000 Hz")
        header = websocket.headers.get("authorization", "")
        authorized = not service.needs_token(always=False)
        if header:
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not service.token_matches(given.strip()):
                raise StreamClosed(UNAUTHORIZED, "missing or wrong bearer token")
            authorized = True
    except StreamClosed as closed:
        await closed.send(websocket)
        return
    service.streams += 1
    try:
        await LiveStream(websocket, service, top=top, update=update, sample_rate=rate).run(authorized)
    finally:
        service.streams -= 1


class StreamClosed(GhostvladError):
    """Ends a stream with an error message and a close code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    async def send(self, websocket: WebSocket) -> None:
        try:
            await websocket.send_json({"error": str(self)})
            await websocket.close(self.code, str(self)[:120])  # a close reason holds at most 123 bytes
        except WebSocketDisconnect:  # the client left first
            pass


class LiveStream:
    """One client's stream: authenticate, then PCM in and answers out until either side stops."""

    def __init__(self, websocket: WebSocket, service: Service, *, top: int, update: float, sample_rate: int) -> None:
        self.ws = websocket
        self.service = service
        self.top = top
        self.update_samples = max(1, round(update * SAMPLE_RATE))
        self.resampler = None if sample_rate == SAMPLE_RATE else soxr.ResampleStream(
            sample_rate, SAMPLE_RATE, 1, dtype="float32")
        self.stream = service.model.stream()
        self.since_update = 0

    async def run(self, authorized: bool) -> None:
        config = self.service.config
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), config.stream_idle_timeout)
                except TimeoutError:
                    raise StreamClosed(IDLE, f"no message for {config.stream_idle_timeout:g} s") from None
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    authorized = await self._command(message["text"], authorized)
                elif not authorized:
                    raise StreamClosed(UNAUTHORIZED, "send {\"token\": ...} first: this server needs a bearer token")
                else:
                    await self._audio(message.get("bytes") or b"")
        except StreamClosed as closed:
            await closed.send(self.ws)
        except WebSocketDisconnect:
            return

    async def _command(self, text: str, authorized: bool) -> bool:
        try:
            command = json.loads(text)
        except ValueError:
            command = None
        if not isinstance(command, dict) or not set(command) <= {"token", "reset"} or not command:
            raise StreamClosed(BAD_INPUT, "text messages must be JSON commands: {\"token\": \"...\"} or "
                                          "{\"reset\": true}; audio goes in binary messages (PCM16)")
        if "token" in command:
            if not self.service.token_matches(str(command["token"])):
                raise StreamClosed(UNAUTHORIZED, "wrong bearer token")
            authorized = True
        if command.get("reset"):
            if not authorized:
                raise StreamClosed(UNAUTHORIZED, "send {\"token\": ...} first: this server needs a bearer token")
            await self.service.batcher.on_model_thread(self.stream.reset)
            self.since_update = 0
            await self._answer()
        return authorized

    async def _audio(self, data: bytes) -> None:
        try:
            samples = pcm16_samples(data, "binary message")
        except AudioError as exc:
            raise StreamClosed(BAD_INPUT, str(exc)) from None
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        try:
            await self.service.batcher.on_model_thread(self.stream.push, samples)
        except AudioError as exc:
            raise StreamClosed(BAD_INPUT, str(exc)) from None
        self.since_update += len(samples)
        if self.since_update >= self.update_samples:
            self.since_update = 0
            await self._answer()

    async def _answer(self) -> None:
        emb = await self.service.batcher.on_model_thread(self.stream.embedding)
        matches = []
        if emb is not None and self.service.gallery is not None:
            def search(gallery):
                return gallery.identify_embedding(emb, self.top) if len(gallery) else []
            try:
                matches = await self.service.on_gallery_thread(search)
            except GalleryError:
                matches = []
        best = matches[0] if matches else None
        await self.ws.send_json({
            "seconds": self.stream.duration,
            "embedding": None if emb is None else emb.tolist(),
            "matches": [{"name": m.name, "score": m.score, "accepted": m.decision.accept} for m in matches],
            "identified": best.name if best is not None and best.decision.accept else None,
        })
