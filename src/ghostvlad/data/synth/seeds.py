"""Every random draw of a synthetic corpus comes from a generator keyed by (domain, speaker[, session[, utterance]]):
independent of worker count and order."""
from __future__ import annotations

import numpy as np

# seed-sequence domains: (domain, speaker[, session[, utterance]])
SPEAKER, SESSION, SESSION_SIGNAL, UTTERANCE, UTTERANCE_SIGNAL, TRIALS = range(6)


def keyed_rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
