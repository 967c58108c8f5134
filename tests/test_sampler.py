"""The sample order is a function of (seed, epoch, position), at any world size."""
from __future__ import annotations

import pytest

from imet.train.data import EpochBatchSampler, epoch_permutation


def batches(**kw):
    return list(EpochBatchSampler(**kw))


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    first = epoch_permutation(103, seed=7, epoch=0)
    assert sorted(first.tolist()) == list(range(103))
    assert first.tolist() == epoch_permutation(103, seed=7, epoch=0).tolist()
    assert first.tolist() != epoch_permutation(103, seed=7, epoch=1).tolist()
    assert first.tolist() != epoch_permutation(103, seed=8, epoch=0).tolist()


def test_full_batches_only_each_sample_at_most_once():
    got = batches(num_samples=103, batch_size=10, seed=1, epoch=2)
    assert len(got) == 10 and all(len(b) == 10 for b in got)
    flat = [i for b in got for i in b]
    assert len(set(flat)) == 100
    assert len(EpochBatchSampler(103, 10, seed=1)) == 10


def test_resume_mid_epoch_continues_the_same_order():
    whole = batches(num_samples=64, batch_size=8, seed=3, epoch=5)
    resumed = EpochBatchSampler(64, 8, seed=3, epoch=0)
    resumed.set_position(epoch=5, start_batch=3)
    assert len(resumed) == 5
    assert list(resumed) == whole[3:]


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_split_each_global_batch_in_order(world_size):
    global_batches = batches(num_samples=50, batch_size=8, seed=0, epoch=1)
    per_rank = [batches(num_samples=50, batch_size=8, seed=0, epoch=1, rank=r,
                        world_size=world_size) for r in range(world_size)]
    for k, global_batch in enumerate(global_batches):
        assert [i for r in range(world_size) for i in per_rank[r][k]] == global_batch


def test_epoch_is_handed_along_for_persistent_workers():
    keyed = batches(num_samples=16, batch_size=4, seed=0, epoch=3, with_epoch=True)
    plain = batches(num_samples=16, batch_size=4, seed=0, epoch=3)
    assert keyed == [[(3, i) for i in b] for b in plain]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        EpochBatchSampler(64, 6, seed=0, world_size=4)
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochBatchSampler(5, 8, seed=0)
