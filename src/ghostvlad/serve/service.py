"""What the service's endpoints share: its settings (:class:`ServeConfig`) and state (:class:`Service`: model,
dynamic batcher, gallery on its own thread, token checks)."""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from fastapi import HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as Upload

from ..audio import SAMPLE_RATE, load_audio_bytes
from ..embedding import Embedder
from ..gallery import Gallery, GalleryError, describe_model
from ..scoring.calibration import CalibrationError, DecisionRule
from .batcher import DynamicBatcher

T = TypeVar("T")


@dataclass(frozen=True)
class ServeConfig:
    """Where the service listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    """Bearer token: required for every request when ``host`` is not loopback, for enrol/delete always."""
    max_upload_bytes: int = 25 * 2**20
    max_duration: float = 60.0
    """Longest recording accepted, in seconds."""
    read_timeout: float = 30.0
    """Seconds within which a request body must arrive in full."""
    max_wait: float = 0.005
    """Seconds the batcher waits after a request for others to join its batch."""
    batch_frames: int | None = None
    """Padded frames per batch (default: the model's)."""
    max_queue: int = 256
    """Waveforms waiting for the model beyond which requests are refused (503)."""
    max_files: int = 16
    """Recordings per enrolment request."""
    max_connections: int = 256
    """Open connections and requests in flight beyond which a request gets 503."""
    max_streams: int = 16
    """Concurrent WebSocket streams."""
    stream_idle_timeout: float = 30.0
    """Seconds a WebSocket stream may stay silent before it is closed."""

    @property
    def exposed(self) -> bool:
        return not is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Service:
    """What the endpoints share: model, batcher, gallery (on its own thread) and limits."""

    def __init__(self, model: Embedder, db: Path | None, config: ServeConfig) -> None:
        self.model = model
        self.config = config
        self.batcher = DynamicBatcher(model, max_wait=config.max_wait, batch_frames=config.batch_frames,
                                      max_queue=config.max_queue)
        key, identity = model.identity()
        self.description = describe_model(identity, key)
        self._gallery_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ghostvlad-gallery")
        # sqlite3 connections belong to the thread that made them: the gallery lives on its thread
        self.gallery = None if db is None else self._gallery_thread.submit(Gallery, db, model).result()
        self.streams = 0  # live WebSocket streams

    def close(self) -> None:
        if self.gallery is not None:
            self._gallery_thread.submit(self.gallery.close).result()
        self._gallery_thread.shutdown(wait=True)

    async def decode(self, upload: Upload | bytes, source: str) -> np.ndarray:
        data = await upload.read() if isinstance(upload, Upload) else upload
        wave = await run_in_threadpool(load_audio_bytes, data, source, SAMPLE_RATE, self.model.min_duration,
                                       self.config.max_duration)
        return self.model.check_length(wave, source)

    async def decode_all(self, uploads: list[UploadFile], fields: list[str]) -> list[np.ndarray]:
        """Decode uploads concurrently; the first bad one raises its :class:`AudioError`."""
        return list(await asyncio.gather(*(self.decode(u, upload_name(u, f)) for u, f in zip(uploads, fields))))

    async def on_gallery_thread(self, fn: Callable[[Gallery], T]) -> T:
        """``fn(gallery)``, run on the gallery's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._gallery_thread, fn, self.gallery)

    async def in_gallery(self, fn: Callable[[Gallery], T]) -> T:
        """:meth:`on_gallery_thread` for a request: 409 without a gallery, 400 for a :class:`GalleryError`."""
        if self.gallery is None:
            raise HTTPException(409, "this server has no speaker gallery (start it with --db)")
        try:
            return await self.on_gallery_thread(fn)
        except GalleryError as exc:
            raise HTTPException(400, self.gallery_message(exc)) from None

    def gallery_message(self, exc: GalleryError) -> str:
        """The error without the server-side path of the gallery file."""
        return str(exc).removeprefix(f"{self.gallery.path}: ")

    def token_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), (self.config.token or "").encode())

    def needs_token(self, always: bool) -> bool:
        """Whether a request must carry the token: enrol/delete (``always``) when there is one, all when exposed."""
        return self.config.token is not None and (always or self.config.exposed)

    def rule(self, operating_point: str | None, threshold: float | None, prior: float) -> DecisionRule:
        try:
            return DecisionRule.for_model(self.model, operating_point, threshold=threshold, prior=prior)
        except CalibrationError as exc:
            raise HTTPException(400, str(exc)) from None


def upload_name(upload: UploadFile, field: str) -> str:
    """How an upload is named in errors: its client-side file name (only a label: one line, at most 100
    characters), else the field."""
    return " ".join((upload.filename or "").split())[:100] or field
