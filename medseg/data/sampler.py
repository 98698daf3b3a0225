"""Batch sampler over series: seeded shuffling per epoch, rank sharding, exact mid-epoch resume.

Paddle's ``DistributedBatchSampler`` keeps its order in hidden state; here the order of epoch
``e`` is a pure function of ``(seed, e)`` and a run resumed at batch ``k`` of an epoch skips
exactly ``k`` batches, which is what makes an interrupted run continue bit for bit. Keys are
``(index, epoch)`` pairs so the dataset can derive each item's augmentation RNG from them.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import paddle


class SeriesBatchSampler(paddle.io.Sampler):
    """Batches of ``(index, epoch)`` keys for one rank.

    Training (``pad_shards=True``): like ``DistributedBatchSampler``, indices are padded by
    wrapping around so every rank gets the same number of batches (all-reduce stays in step).
    Evaluation (``pad_shards=False``, no shuffle): rank ``r`` takes indices ``r, r + world, …`` —
    shards may be uneven but no series is seen twice.
    """

    def __init__(self, num_items: int, batch_size: int = 1, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, pad_shards: bool = True):
        if num_items <= 0:
            raise ValueError("SeriesBatchSampler: the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"SeriesBatchSampler: batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"SeriesBatchSampler: rank {rank} outside world size {world_size}")
        super().__init__()
        self.num_items = num_items
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad_shards = pad_shards
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def shard(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
        else:
            order = np.arange(self.num_items)
        if self.pad_shards and self.world_size > 1:
            total = -(-self.num_items // self.world_size) * self.world_size
            order = np.resize(order, total)  # wraps around, as DistributedBatchSampler pads
        return order[self.rank::self.world_size]

    def _num_batches(self, shard_len: int) -> int:
        return shard_len // self.batch_size if self.drop_last else -(-shard_len // self.batch_size)

    def __len__(self) -> int:
        return max(self._num_batches(len(self.shard(0))), 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        shard = self.shard(self.epoch)
        for b in range(self.start_batch, self._num_batches(len(shard))):
            chunk = shard[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(int(i), self.epoch) for i in chunk]
