"""Deterministic, resumable batch order: the same batches for any number of workers, exactly continued after a restart.

Samplers by name (``train.sampler``, :data:`SAMPLERS`): ``random`` (:class:`EpochBatches`) permutes the utterances;
``sessions`` (:class:`SessionBatches`) groups several utterances of a speaker from different sessions in each batch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import GhostvladError
from ..registry import Registry


class SamplerError(GhostvladError, ValueError):
    """Batches that cannot be drawn from the data (batch size, ranks, speakers)."""


class EpochBatches:
    """Global batches of an epoch drawn from a permutation seeded by ``(seed, epoch)``; each rank takes its slice.

    ``steps`` batches per epoch (default: one pass, last partial batch dropped); more steps than one pass
    continue with further permutations. ``batches(epoch, start)`` skips the first ``start`` steps (resume).
    """

    def __init__(self, size: int, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0,
                 steps: int | None = None) -> None:
        if batch_size % world:
            raise SamplerError(f"batch size {batch_size} is not divisible by {world} ranks")
        if size < 1:
            raise SamplerError("no training data")
        self.size, self.batch_size, self.rank, self.world, self.seed = size, batch_size, rank, world, seed
        self.steps = steps or max(1, size // batch_size)

    def batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        need = self.steps * self.batch_size
        passes = -(-need // self.size)
        order = np.concatenate(
            [np.random.default_rng([self.seed, epoch, k]).permutation(self.size) for k in range(passes)]
        )[:need].reshape(self.steps, self.batch_size)
        per_rank = self.batch_size // self.world
        mine = order[start:, self.rank * per_rank : (self.rank + 1) * per_rank]
        return mine.tolist()


class SessionBatches:
    """Batches of ``per_speaker`` utterances of each of ``batch_size / per_speaker`` speakers, drawn from different
    recording sessions where the speaker has them, so that the loss sees one voice through several channels.

    Same interface and guarantees as :class:`EpochBatches`: batches come from ``(seed, epoch)`` alone, a rank
    takes its slice (whole speaker groups when the per-rank batch is a multiple of ``per_speaker``), ``start``
    skips steps on resume. ``steps`` defaults to one pass's worth of batches. Speakers are drawn in proportion to
    their utterances, without repetition within a batch.
    """

    def __init__(self, speakers: np.ndarray, sessions: np.ndarray, batch_size: int, per_speaker: int = 2,
                 rank: int = 0, world: int = 1, seed: int = 0, steps: int | None = None) -> None:
        if batch_size % world:
            raise SamplerError(f"batch size {batch_size} is not divisible by {world} ranks")
        if per_speaker < 1 or batch_size % per_speaker:
            raise SamplerError(f"batch size {batch_size} is not a multiple of per_speaker={per_speaker}")
        speakers, sessions = np.asarray(speakers), np.asarray(sessions)
        if len(speakers) < 1:
            raise SamplerError("no training data")
        ids, speaker_index = np.unique(speakers, return_inverse=True)
        if len(ids) < batch_size // per_speaker:
            raise SamplerError(f"{len(ids)} speakers cannot fill a batch of {batch_size // per_speaker} speakers "
                             f"x {per_speaker}; lower train.batch_size or raise train.per_speaker")
        # utterances of each speaker grouped by session: groups[s] = list of arrays of utterance indices
        self.groups = []
        for s in range(len(ids)):
            mine = np.flatnonzero(speaker_index == s)
            self.groups.append([mine[sessions[mine] == v] for v in np.unique(sessions[mine])])
        counts = np.array([sum(len(g) for g in groups) for groups in self.groups], dtype=np.float64)
        self.weights = counts / counts.sum()
        self.size, self.batch_size, self.per_speaker = len(speakers), batch_size, per_speaker
        self.rank, self.world, self.seed = rank, world, seed
        self.steps = steps or max(1, self.size // batch_size)

    def _pick(self, speaker: int, rng: np.random.Generator) -> list[int]:
        groups = self.groups[speaker]
        k = self.per_speaker
        chosen = rng.permutation(len(groups))[:k] if len(groups) >= k else rng.integers(len(groups), size=k)
        return [int(groups[g][rng.integers(len(groups[g]))]) for g in chosen]

    def batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch, 3])
        per_batch = self.batch_size // self.per_speaker
        order = []
        for _ in range(self.steps):
            chosen = rng.choice(len(self.groups), per_batch, replace=False, p=self.weights)
            order.append([u for s in chosen for u in self._pick(int(s), rng)])
        per_rank = self.batch_size // self.world
        return [batch[self.rank * per_rank : (self.rank + 1) * per_rank] for batch in order[start:]]


Batches = EpochBatches | SessionBatches
# a factory draws a run's batches over the ``size`` utterances of ``dataset`` (a CropDataset or ShardCropDataset)
SAMPLERS: Registry[Batches] = Registry("sampler", context=(
    "dataset", "size", "batch_size", "per_speaker", "rank", "world", "seed", "steps"))


@SAMPLERS.register("random")
def random_batches(dataset: Any, size: int, batch_size: int, per_speaker: int, rank: int, world: int, seed: int,
                   steps: int | None) -> EpochBatches:
    """Permutations of all utterances (the original)."""
    return EpochBatches(size, batch_size, rank, world, seed, steps)


@SAMPLERS.register("sessions")
def session_batches(dataset: Any, size: int, batch_size: int, per_speaker: int, rank: int, world: int, seed: int,
                    steps: int | None) -> SessionBatches:
    """train.per_speaker utterances of each speaker in a batch, from different sessions where it has them."""
    if not hasattr(dataset, "sessions"):
        raise SamplerError("needs a manifest CSV (shards are read in stream order)")
    return SessionBatches(dataset.labels, dataset.sessions(), batch_size, per_speaker, rank, world, seed, steps)
