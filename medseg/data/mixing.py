"""Several series datasets drawn in a fixed ratio (e.g. labelled train : pseudo-labelled = 1 : 1).

``ConcatSeriesDataset`` visits each series once per epoch, so the larger source dominates; a
semi-supervised student usually wants the labelled series to keep a set share however many
pseudo-labelled ones there are. Here an epoch is ``epoch_size`` virtual items, ``counts[k]`` of
them from source ``k`` (proportional to ``ratios``); the series a virtual item maps to is a pure
function of ``(seed, epoch, index)``, like the rest of the data pipeline, so the trainer's
sampler, its sharding and its exact resume keep working unchanged. A source smaller than its
share is cycled, each cycle in a fresh order and with fresh augmentation.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import paddle

from medseg.data.dataset import split_key
from medseg.registry import DATASETS


def source_counts(sizes: Sequence[int], ratios: Sequence[float], epoch_size: int) -> list[int]:
    """Items per source in one epoch: proportional to ``ratios`` (largest remainders), summing to
    ``epoch_size``; every source with a positive ratio gets at least one item."""
    if len(ratios) != len(sizes):
        raise ValueError(f"{len(ratios)} ratios for {len(sizes)} datasets")
    if any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be non-negative with a positive sum, got {list(ratios)}")
    positive = [k for k, r in enumerate(ratios) if r > 0]
    if epoch_size < len(positive):
        raise ValueError(f"epoch_size {epoch_size} is smaller than the number of sources drawn from ({len(positive)})")
    total = float(sum(ratios))
    exact = [epoch_size * r / total for r in ratios]
    counts = [int(math.floor(x)) for x in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda k: exact[k] - counts[k], reverse=True)
    for k in by_remainder[: epoch_size - sum(counts)]:
        counts[k] += 1
    for k in positive:  # a tiny ratio still draws once, taken from the largest source
        if counts[k] == 0:
            counts[int(np.argmax(counts))] -= 1
            counts[k] = 1
    return counts


@DATASETS.add_component
class MixedSeriesDataset(paddle.io.Dataset):
    """Draw from ``datasets`` in proportion to ``ratios`` (default: their sizes, i.e. a plain concat).

    Args:
        datasets: built series datasets (YAML: a list of ``{type: ...}`` entries).
        ratios: relative share of each source per epoch, e.g. ``[1, 1]``.
        epoch_size: virtual items per epoch (default: the total number of series).
        seed: seeds the per-epoch draw of each source.
    """

    def __init__(self, datasets: Sequence[Any], ratios: Sequence[float] | None = None,
                 epoch_size: int | None = None, seed: int = 0):
        super().__init__()
        if not datasets:
            raise ValueError("MixedSeriesDataset: no datasets given")
        self.datasets = list(datasets)
        sizes = [len(d) for d in self.datasets]
        if min(sizes) <= 0:
            raise ValueError(f"MixedSeriesDataset: empty source (sizes {sizes})")
        self.series_ids = [s for d in self.datasets for s in d.series_ids]
        seen: dict[str, int] = {}
        for k, d in enumerate(self.datasets):
            for sid in d.series_ids:
                if sid in seen and seen[sid] != k:
                    raise ValueError(f"MixedSeriesDataset: series {sid} is in source {seen[sid]} "
                                     f"({getattr(self.datasets[seen[sid]], 'meta_file', '?')}) and source {k} "
                                     f"({getattr(d, 'meta_file', '?')}); a series must come from one source")
                seen[sid] = k
        self.sizes = sizes
        self.ratios = [float(r) for r in (ratios if ratios is not None else sizes)]
        self.epoch_size = int(epoch_size if epoch_size is not None else sum(sizes))
        self.counts = source_counts(sizes, self.ratios, self.epoch_size)
        self.offsets = np.cumsum([0] + self.counts)
        # Cycles needed by the most repeated source: keeps (epoch, cycle) → augmentation key unique.
        self.max_cycles = max(-(-c // n) for c, n in zip(self.counts, sizes))
        self.seed = int(seed)
        self.labelled = all(getattr(d, "labelled", False) for d in self.datasets)

    def __len__(self) -> int:
        return self.epoch_size

    def locate(self, index: int, epoch: int = 0) -> tuple[int, int, int]:
        """Virtual item ``index`` of ``epoch`` → (source, series index in it, augmentation epoch key)."""
        if not 0 <= index < self.epoch_size:
            raise IndexError(f"MixedSeriesDataset: index {index} outside [0, {self.epoch_size})")
        source = int(np.searchsorted(self.offsets, index, side="right") - 1)
        cycle, position = divmod(index - int(self.offsets[source]), self.sizes[source])
        order = np.random.default_rng([self.seed, epoch, source, cycle]).permutation(self.sizes[source])
        return source, int(order[position]), epoch * self.max_cycles + cycle

    def source_of(self, index: int) -> int:
        return int(np.searchsorted(self.offsets, index, side="right") - 1)

    def num_slices(self, index: int) -> int:
        source, local, _ = self.locate(index)
        return self.datasets[source].num_slices(local)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, epoch = split_key(key)
        source, local, epoch_key = self.locate(index, epoch)
        return self.datasets[source][(local, epoch_key)]
