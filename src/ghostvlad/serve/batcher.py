"""Dynamic batching: embedding requests that arrive together run as one exact padded batch.

Requests queue waveforms; a worker task waits up to ``max_wait`` seconds after the first one for others to
join (less when the queue already fills the frame budget), groups everything queued by length into batches
of at most ``batch_frames`` padded frames (:func:`ghostvlad.inference.length_batches`, the offline
bucketing) and runs each through :meth:`~ghostvlad.inference.Embedder.embed_waveforms` on one model thread.
Masking makes each batched embedding equal to the one computed alone. The queue is bounded: past
``max_queue`` waiting waveforms, :meth:`DynamicBatcher.embed` raises :class:`QueueFull` at once.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ..embedding import Embedder, length_batches
from ..errors import GhostvladError


T = TypeVar("T")


class QueueFull(GhostvladError, RuntimeError):
    """The batcher holds ``max_queue`` waveforms already; try again later."""


@dataclass
class _Job:
    wave: np.ndarray
    frames: int
    future: asyncio.Future


@dataclass
class BatchStats:
    """Counters since start: batches run, waveforms embedded, the largest batch."""

    batches: int = 0
    embedded: int = 0
    largest: int = 0


class DynamicBatcher:
    """Gathers concurrent :meth:`embed` calls into padded batches run on one model thread.

    Use inside a running event loop: ``await start()`` before the first call, ``await close()`` at the end.
    """

    def __init__(self, model: Embedder, *, max_wait: float = 0.005, batch_frames: int | None = None,
                 max_queue: int = 256) -> None:
        if max_wait < 0 or max_queue < 1:
            raise ValueError("max_wait must be >= 0 and max_queue >= 1")
        self.model = model
        self.max_wait = max_wait
        self.batch_frames = batch_frames or model.batch_frames
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._jobs: list[_Job] = []
        self._queued = 0  # waveforms accepted and not yet answered
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ghostvlad-model")

    @property
    def queued(self) -> int:
        """Waveforms waiting or being embedded."""
        return self._queued

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name="ghostvlad-batcher")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(QueueFull("the server is shutting down"))
        self._jobs.clear()
        self._pool.shutdown(wait=True)

    async def on_model_thread(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` run on the model thread, between batches (streams use it: no two model runs at once)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings ``(len(waves), D)`` of validated 16 kHz waveforms, equal to embedding each alone."""
        if self._worker is None:
            raise RuntimeError("DynamicBatcher.start() was not awaited")
        if self._queued + len(waves) > self.max_queue:
            raise QueueFull(f"the embedding queue is full ({self._queued} of {self.max_queue} waiting); "
                            "try again shortly")
        loop = asyncio.get_running_loop()
        num_frames = self.model.frontend_config.num_frames
        jobs = [_Job(w, num_frames(len(w)), loop.create_future()) for w in waves]
        self._jobs.extend(jobs)
        self._queued += len(jobs)
        self._arrived.set()
        return np.stack(await asyncio.gather(*(job.future for job in jobs)))

    def _padded_frames(self) -> int:
        return max(job.frames for job in self._jobs) * len(self._jobs)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            deadline = loop.time() + self.max_wait
            while self._padded_frames() < self.batch_frames and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            jobs, self._jobs = self._jobs, []
            self._arrived.clear()
            for batch in length_batches([len(job.wave) for job in jobs], self.model.frontend_config,
                                        self.batch_frames):
                await self._embed_batch([jobs[i] for i in batch])

    async def _embed_batch(self, jobs: list[_Job]) -> None:
        live = [job for job in jobs if not job.future.done()]  # a cancelled request costs nothing
        try:
            if live:
                emb = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self.model.embed_waveforms, [job.wave for job in live])
                self.stats.batches += 1
                self.stats.embedded += len(live)
                self.stats.largest = max(self.stats.largest, len(live))
                for job, e in zip(live, emb):
                    if not job.future.done():
                        job.future.set_result(e)
        except Exception as exc:  # noqa: BLE001 - handed to every request of the batch
            for job in live:
                if not job.future.done():
                    job.future.set_exception(exc)
        finally:
            self._queued -= len(jobs)
