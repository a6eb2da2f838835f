"""Verification trials over a synthetic corpus's test utterances: balanced, drawn without repetition, targets across
sessions (written as VoxCeleb1 trial lines; :mod:`ghostvlad.data.trials` reads such lists)."""
from __future__ import annotations

import math

import numpy as np

from .seeds import TRIALS, keyed_rng


def trial_capacity(speakers: int, sessions: int, utterances: int) -> tuple[int, int]:
    """Numbers of distinct cross-session target pairs and of non-target pairs among test utterances."""
    per_speaker = sessions * utterances
    return speakers * math.comb(sessions, 2) * utterances**2, math.comb(speakers, 2) * per_speaker**2


def trial_lines(files: np.ndarray, trials: int, seed: int) -> list[str]:
    """``trials`` balanced VoxCeleb1 trial lines over ``files`` (paths relative to test/, shaped (speakers,
    sessions, utterances)), drawn without repetition from ``seed``; targets cross sessions."""
    n_speakers, n_sessions, n_utt = files.shape
    rng = keyed_rng(seed, TRIALS)
    n_target, n_nontarget = trial_capacity(n_speakers, n_sessions, n_utt)
    per_speaker = n_sessions * n_utt
    # target index -> (speaker, session pair, utterance in first session, utterance in second session)
    index = rng.choice(n_target, trials // 2, replace=False)
    speaker, rest = np.divmod(index, n_target // n_speakers)
    pair, rest = np.divmod(rest, n_utt**2)
    first, second = np.triu_indices(n_sessions, 1)
    u1, u2 = np.divmod(rest, n_utt)
    target = np.stack([files[speaker, first[pair], u1], files[speaker, second[pair], u2]], axis=1)
    # non-target index -> (speaker pair, utterance of the first speaker, utterance of the second speaker)
    index = rng.choice(n_nontarget, trials - trials // 2, replace=False)
    pair, rest = np.divmod(index, per_speaker**2)
    first, second = np.triu_indices(n_speakers, 1)
    u1, u2 = np.divmod(rest, per_speaker)
    flat = files.reshape(n_speakers, per_speaker)
    nontarget = np.stack([flat[first[pair], u1], flat[second[pair], u2]], axis=1)
    labels = np.repeat([1, 0], [len(target), len(nontarget)])
    pairs = np.concatenate([target, nontarget])
    swap = rng.random(len(pairs)) < 0.5
    pairs[swap] = pairs[swap, ::-1]
    order = rng.permutation(len(pairs))
    return [f"{labels[i]} {pairs[i, 0]} {pairs[i, 1]}" for i in order]
