"""Deterministic, resumable batch order: the same batches for any number of workers, exactly continued after a restart."""
from __future__ import annotations

import numpy as np


class EpochBatches:
    """Global batches of an epoch drawn from a permutation seeded by ``(seed, epoch)``; each rank takes its slice.

    ``steps`` batches per epoch (default: one pass, last partial batch dropped); more steps than one pass
    continue with further permutations. ``batches(epoch, start)`` skips the first ``start`` steps (resume).
    """

    def __init__(self, size: int, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0,
                 steps: int | None = None) -> None:
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} ranks")
        if size < 1:
            raise ValueError("no training data")
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
