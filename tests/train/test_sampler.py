import pytest

from ghostvlad.train.sampler import EpochBatches


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
