"""The pseudo-labelled series dataset: a ``<tag>_meta.csv`` written by ``medseg.semi.pseudo_label``.

It is :class:`RSNASeriesDataset` with two additions. Loading the tag runs the leakage check
(no series or patient shared with the labelled and validation tags), so a training config
cannot mix in a table that overlaps them. And slices the confidence filter dropped, which keep
their row (the cache holds the whole series) but have empty labels, are left out of the item:
the student sees the series without them and is never trained towards a guess the teacher was
unsure of.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medseg.data.dataset import RSNASeriesDataset, split_key
from medseg.data.transforms import Transform
from medseg.registry import DATASETS
from medseg.semi.leakage import DEFAULT_EXCLUDE, check_pseudo_file


@DATASETS.add_component
class PseudoSeriesDataset(RSNASeriesDataset):
    """Series of a pseudo-labelled tag; ``exclude_splits`` are the tags it must not overlap
    (the labelled training tag(s) of the run; validation is always checked). ``max_slices`` windows
    run over the slices the confidence filter kept; ``neighbours`` stack a kept slice's neighbours
    in the series, kept or not."""

    def __init__(self, dataset_root: str, split: str = "test_pseudo", transforms: Sequence[Transform] = (),
                 per_slice: bool = True, seed: int = 0, exclude_splits: Sequence[str] = DEFAULT_EXCLUDE,
                 max_slices: int | None = None, augment_on_device: bool = False, crop: str | None = None,
                 fuse: bool = True, neighbours: int = 0):
        check_pseudo_file(dataset_root, split, list(exclude_splits))
        super().__init__(dataset_root, split, transforms, per_slice, seed, max_slices, augment_on_device, crop, fuse, neighbours)
        self.exclude_splits = list(exclude_splits)
        self.keep = np.isfinite(self.labels).all(axis=1)  # False = dropped by the confidence filter
        for index, sid in enumerate(self.series_ids):
            if not self.keep[self.starts[index]:self.ends[index]].any():
                raise ValueError(f"{self.meta_file}: series {sid} has no labelled slice left (drop it from the table)")
        self.labelled = True  # every kept slice has a label

    def num_slices(self, index: int) -> int:
        return int(self.keep[self.starts[index]:self.ends[index]].sum())

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, epoch = split_key(key)
        start, end = int(self.starts[index]), int(self.ends[index])
        lo, hi = self.window(index, epoch)  # over the kept slices
        kept = np.flatnonzero(self.keep[start:end])[lo:hi]
        if self.neighbours:  # a kept slice's neighbours are its neighbours in the series, dropped or not
            return self.make_item(index, self.stacked_slices(index, kept), start + kept, self.rng(index, epoch))
        slices = self.load_slices(index, int(kept[0]), int(kept[-1]) + 1)
        return self.make_item(index, [slices[i - kept[0]] for i in kept], start + kept, self.rng(index, epoch))
