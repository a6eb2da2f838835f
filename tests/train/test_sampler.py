import pytest

import numpy as np

from ghostvlad.schema import ConfigError
from ghostvlad.train.sampler import SAMPLERS, EpochBatches, SamplerError, SessionBatches


def test_one_pass_per_epoch_deterministic_and_resumable():
    b = EpochBatches(103, 10, seed=3)
    assert b.steps == 10
    epoch0 = b.batches(0)
    flat = [i for batch in epoch0 for i in batch]
    assert len(flat) == 100 == len(set(flat))
    assert epoch0 == EpochBatches(103, 10, seed=3).batches(0)
    assert epoch0 != b.batches(1)
    assert b.batches(0, start=4) == epoch0[4:]


def test_ranks_split_each_global_batch():
    ranks = [EpochBatches(40, 8, rank=r, world=2, seed=0).batches(2) for r in range(2)]
    single = EpochBatches(40, 8, seed=0).batches(2)
    for step, batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == batch


def test_more_steps_than_data_continue_with_new_permutations():
    b = EpochBatches(10, 4, steps=7)
    flat = [i for batch in b.batches(0) for i in batch]
    assert len(flat) == 28 and set(flat) == set(range(10))


def test_errors():
    with pytest.raises(ValueError, match="not divisible by 3 ranks"):
        EpochBatches(10, 4, world=3)
    with pytest.raises(ValueError, match="no training data"):
        EpochBatches(0, 4)


def session_corpus():
    """6 speakers; speaker s has s + 1 sessions of 3 utterances (speaker 0 a single session)."""
    speakers, sessions = [], []
    for s in range(6):
        for v in range(s + 1):
            speakers += [s] * 3
            sessions += [10 * s + v] * 3
    return np.array(speakers), np.array(sessions)


def test_session_batches_group_speakers_across_sessions():
    speakers, sessions = session_corpus()
    sampler = SessionBatches(speakers, sessions, batch_size=6, per_speaker=2, seed=1)
    assert sampler.steps == len(speakers) // 6
    epoch = sampler.batches(0)
    for batch in epoch:
        assert len(batch) == 6
        groups = [batch[k : k + 2] for k in range(0, 6, 2)]
        assert len({int(speakers[g[0]]) for g in groups}) == 3  # three different speakers
        for g in groups:
            assert speakers[g[0]] == speakers[g[1]]
            if speakers[g[0]] > 0:  # a speaker with two or more sessions: two of them
                assert sessions[g[0]] != sessions[g[1]]
    assert epoch == SessionBatches(speakers, sessions, 6, 2, seed=1).batches(0)
    assert epoch != sampler.batches(1)
    assert sampler.batches(0, start=2) == epoch[2:]
    ranks = [SessionBatches(speakers, sessions, 6, 2, rank=r, world=2, seed=1).batches(0) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == epoch


def test_session_batches_refuse_impossible_settings():
    speakers, sessions = session_corpus()
    with pytest.raises(ValueError, match="not a multiple of per_speaker"):
        SessionBatches(speakers, sessions, batch_size=6, per_speaker=4)
    with pytest.raises(ValueError, match="6 speakers cannot fill a batch of 8 speakers"):
        SessionBatches(speakers, sessions, batch_size=16, per_speaker=2)


def test_samplers_are_chosen_by_name():
    class Manifest:  # what the sessions sampler reads from a CropDataset
        labels = np.repeat(np.arange(4), 4)

        def sessions(self):
            return np.tile([0, 0, 1, 1], 4)

    common = dict(size=16, batch_size=4, per_speaker=2, rank=0, world=1, seed=0, steps=None)
    plain = SAMPLERS.build("random", dataset=Manifest(), **common)
    assert isinstance(plain, EpochBatches) and plain.steps == 4
    grouped = SAMPLERS.build("sessions", dataset=Manifest(), **common)
    batch = np.array(grouped.batches(0)[0])
    assert (Manifest.labels[batch[0::2]] == Manifest.labels[batch[1::2]]).all()
    assert (Manifest().sessions()[batch[0::2]] != Manifest().sessions()[batch[1::2]]).all()  # across sessions
    with pytest.raises(SamplerError, match="needs a manifest CSV"):
        SAMPLERS.build("sessions", dataset=object(), **common)  # a shard stream has no sessions
    with pytest.raises(ConfigError, match="unknown sampler 'fancy'"):
        SAMPLERS.get("fancy")
