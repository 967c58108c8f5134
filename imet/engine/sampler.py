"""The order in which training samples are seen: a pure function of (seed, epoch, position).

Each epoch is a permutation drawn from a generator seeded with (seed, epoch) — nothing global —
cut into global batches of `batch_size`. A resumed session starts at `start_batch`; a rank of a
distributed run takes its contiguous slice of every global batch, so the global sample order is
the same at any world size and a checkpoint resumes on another world size at the same position.
The last incomplete batch is dropped: a batch of one breaks BatchNorm and distorts the LR
schedule's step count. With hard-negative mining an epoch also holds `repeat_count` repeated
samples (`set_position`'s `repeats`): the permutation is then one of the N + repeat_count
entries of (every sample, the repeats), so without repeats it is the plain one."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

# Mixed into the seed so the epoch permutations do not coincide with the augmentation streams,
# which are also derived from (seed, epoch).
_ORDER_SALT = 0x5EED_0D3E


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator()
    generator.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + _ORDER_SALT) % (2 ** 63))
    return torch.randperm(num_samples, generator=generator)


class EpochBatchSampler(Sampler[list]):
    def __init__(self, num_samples: int, batch_size: int, seed: int, epoch: int = 0,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1,
                 with_epoch: bool = False, repeat_count: int = 0):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by world size {world_size}")
        if num_samples < batch_size:
            raise ValueError(f"{num_samples} training samples are fewer than one batch "
                             f"of {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        # (epoch, index) keys let persistent DataLoader workers, which never see a later
        # `set_epoch` on their copy of the dataset, augment for the right epoch.
        self.with_epoch = with_epoch
        self.repeat_count = repeat_count
        self.repeats = torch.zeros(0, dtype=torch.long)

    @property
    def batches_per_epoch(self) -> int:
        return (self.num_samples + self.repeat_count) // self.batch_size

    def set_position(self, epoch: int, start_batch: int = 0, repeats=None) -> None:
        self.epoch = epoch
        self.start_batch = start_batch
        if repeats is not None:
            if len(repeats) != self.repeat_count:
                raise ValueError(f"{len(repeats)} repeats for an epoch of {self.repeat_count}")
            self.repeats = torch.as_tensor(repeats, dtype=torch.long)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self) -> Iterator[list]:
        order = epoch_permutation(self.num_samples + self.repeat_count, self.seed, self.epoch)
        if self.repeat_count:
            order = torch.cat([torch.arange(self.num_samples), self.repeats])[order]
        per_rank = self.batch_size // self.world_size
        for batch in range(self.start_batch, self.batches_per_epoch):
            first = batch * self.batch_size + self.rank * per_rank
            indices = order[first:first + per_rank].tolist()
            yield [(self.epoch, i) for i in indices] if self.with_epoch else indices
