"""The prepared-dataset reader: one item = one series (docs/design.md, "Prepared dataset").

Each item reads the head crops of its slices from the series' cache (docs/design.md) and runs
the slice transforms. The random state of an item is derived from
``(seed, epoch, index)`` so that augmentations do not depend on worker count or on how a run
was interrupted and resumed: the sampler passes ``(index, epoch)`` keys.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import paddle

from medseg.constants import LABELS
from medseg.data.cache import CacheFormatError, open_series
from medseg.data.crop import DEFAULT_CROP, check_crop_mode
from medseg.data.meta import CROP_COLUMNS, DATASET_COLUMNS, MANIFEST, MetaTableError, meta_path, read_manifest, read_meta_file, sort_meta
from medseg.data.neighbours import check_neighbours, neighbour_span, stack_neighbours
from medseg.data.transforms import Compose, ToCHW, Transform
from medseg.registry import DATASETS
from medseg.utils.logger import get_logger

logger = get_logger("data.dataset")


def split_key(key: Any) -> tuple[int, int]:
    """A sampler key is ``index`` or ``(index, epoch)``."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), 0


def slice_window(n: int, max_slices: int | None, seed: int, epoch: int, index: int) -> tuple[int, int]:
    """Slices ``lo:hi`` of an ``n``-slice series: all of them, or a random run of ``max_slices``
    drawn from its own stream (seed, epoch, index), so that augmentation draws do not depend on it."""
    if max_slices is None or n <= max_slices:
        return 0, n
    lo = int(np.random.default_rng([seed, epoch, index, 1]).integers(0, n - max_slices + 1))
    return lo, lo + max_slices


@DATASETS.add_component
class RSNASeriesDataset(paddle.io.Dataset):
    """Series of ``DATASET_ROOT/<split>_meta.csv`` (``split`` is any tag: train, val, test,
    test_pseudo …). Labels may be soft; an unlabelled split has NaN labels (``labelled`` False).

    ``max_slices`` (training only): a longer series is cut to a random run of that many consecutive
    slices, drawn per (seed, epoch, index). A step then holds more series for the same compute
    (consecutive slices are alike, so series diversity is what a batch lacks); the sequence head
    still sees local context, and evaluation always takes whole series.

    On the CPU path, transforms ending with ``Normalize, ToCHW`` give uint8 ``[S, H, W, C]`` slices
    plus their ``norm`` (mean, std): the batch step normalises them and lays them out as
    C × H × W (:func:`medseg.data.device_augment.to_model_input`), so workers move a quarter of
    the bytes and do no per-pixel work after the warp.

    ``augment_on_device``: an item holds the uint8 head crops (on one zero canvas) and the warps
    its transforms drew, and the model's device warps and normalises them
    (:mod:`medseg.data.device_augment`); the draws are those of the CPU path.

    ``crop`` (``head`` or ``released``, :mod:`medseg.data.crop`): the crop mode the config was
    made for; the root must have been prepared with it (``prepare --crop``), else the dataset
    refuses it. None: not checked.

    ``fuse`` (default true): a run of geometric transforms is one warp, one interpolation. The
    release interpolates at each step (bicubic crop-resize, then a bilinear rotation); with the
    released sampler, ``fuse: false`` and the CPU path (``augment_on_device: false``) the slices
    equal the release's bit for bit (the fused cubic warp differs by
    2.6 grey levels on average: :class:`medseg.data.transforms.RandomResizedCrop`).

    ``neighbours`` (k, default 0; set by the config's top-level ``neighbours``): each slice
    carries slices s-k..s+k of its series as channels, all windows of each, neighbour-major
    (:mod:`medseg.data.neighbours`). Stacked before the transforms, so one draw warps all
    neighbours of a slice alike; neighbours come from the whole series even when ``max_slices``
    cuts a run (edges repeat the edge slice).
    """

    def __init__(self, dataset_root: str, split: str = "train", transforms: Sequence[Transform] = (),
                 per_slice: bool = True, seed: int = 0, max_slices: int | None = None, augment_on_device: bool = False,
                 crop: str | None = None, fuse: bool = True, neighbours: int = 0):
        super().__init__()
        self.neighbours = check_neighbours(neighbours, f"{split} dataset")
        if max_slices is not None and int(max_slices) < 1:
            raise ValueError(f"{split} dataset: max_slices must be a positive number of slices or null, got {max_slices}")
        self.max_slices = None if max_slices is None else int(max_slices)
        self.dataset_root = dataset_root
        self.split = split
        self.seed = int(seed)
        transforms = list(transforms or [])
        if not transforms or not isinstance(transforms[-1], ToCHW):
            raise ValueError(f"{split} dataset: transforms must end with ToCHW (models take C × H × W), got {transforms!r}")
        self.transforms = Compose(transforms, per_slice=per_slice, fuse=fuse)
        self.augment_on_device = bool(augment_on_device)
        if self.augment_on_device and not fuse:
            raise ValueError(f"{split} dataset: augment_on_device warps each slice once, so it needs fuse: true")
        if self.augment_on_device:
            try:
                self.transforms.device_split()
            except ValueError as err:
                raise ValueError(f"{split} dataset: {err}") from None
            if paddle.get_device() == "cpu":
                logger.warning("%s dataset: augment_on_device on a CPU-only run warps ~10x slower than the CPU path "
                               "(bench/loader_bench.py); set augment_on_device: false for CPU runs", split)
        if not os.path.isdir(dataset_root):
            raise FileNotFoundError(f"{dataset_root}: dataset root not found (run the prepare step first)")
        self._load_meta(meta_path(dataset_root, split))
        self.crop = None if crop is None else check_crop_mode(crop, f"{split} dataset: crop")
        if self.crop is not None:
            self._check_crop()

    def prepared_crop(self) -> str | None:
        """How the root was cropped: its manifest's mode; without a manifest, the mode in the
        record of its first series (a record made before crop modes existed holds head crops);
        None when neither exists (a root written by another tool)."""
        manifest = read_manifest(self.dataset_root)
        if manifest is not None:
            return str(manifest.get("crop", DEFAULT_CROP))
        record = os.path.splitext(self.cache_paths[0])[0] + ".json"
        try:
            with open(record, encoding="utf-8") as fh:
                return str(json.load(fh).get("crop", DEFAULT_CROP))
        except (OSError, ValueError, AttributeError):
            return None

    def _check_crop(self) -> None:
        prepared = self.prepared_crop()
        if prepared is None:
            logger.warning("%s: no %s and no prepare record: cannot check that it holds %s crops (config crop: %s)",
                           self.dataset_root, MANIFEST, self.crop, self.crop)
        elif prepared != self.crop:
            raise ValueError(f"{self.dataset_root}: prepared with --crop {prepared}, the {self.split} dataset asks for crop: "
                             f"{self.crop}; prepare it again: python -m medseg.data.prepare --raw_root RAW "
                             f"--dataset_root {self.dataset_root} --crop {self.crop}")

    def _load_meta(self, path: str) -> None:
        meta = read_meta_file(path, required=DATASET_COLUMNS, purpose=f"split {self.split!r}")
        if meta.empty:
            raise MetaTableError(f"{path}: no slices")
        if meta["slice_id"].duplicated().any():
            dup = meta.loc[meta["slice_id"].duplicated(), "slice_id"].iloc[0]
            raise MetaTableError(f"{path}: duplicate slice_id {dup}")
        meta = sort_meta(meta).reset_index(drop=True)
        series = meta["series_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, series[1:] != series[:-1]])
        self.starts = starts
        self.ends = np.r_[starts[1:], len(meta)]
        self.series_ids: list[str] = [str(s) for s in series[starts]]
        self.slice_ids = meta["slice_id"].to_numpy(dtype=object)
        self.labels = meta[list(LABELS)].to_numpy(dtype=np.float32)
        self.boxes = meta[list(CROP_COLUMNS)].to_numpy(dtype=np.int64)
        caches = meta["cache"].to_numpy(dtype=object)[starts]
        self.cache_paths = [os.path.join(self.dataset_root, str(c)) for c in caches]
        for sid, cache in zip(self.series_ids, self.cache_paths):
            if not os.path.isfile(cache):
                raise FileNotFoundError(f"{cache}: cache file missing for series {sid} (listed in {path})")
        self.labelled = bool(np.isfinite(self.labels).all())
        self.meta_file = path
        self._legacy_noted = False

    def __len__(self) -> int:
        return len(self.series_ids)

    def num_slices(self, index: int) -> int:
        return int(self.ends[index] - self.starts[index])

    def load_slices(self, index: int, lo: int = 0, hi: int | None = None) -> list[np.ndarray]:
        """The series' slices ``lo:hi`` in order, each cropped to its head box (H × W × C uint8).

        Reads the compressed head-crop cache (only the slices asked for), or an old-format
        full-frame ``.npy`` cropped by the meta table's boxes."""
        return list(self.iter_slices(index, lo, hi))

    def iter_slices(self, index: int, lo: int = 0, hi: int | None = None) -> Iterator[np.ndarray]:
        """:meth:`load_slices` one slice at a time (decoded as the transforms reach it)."""
        path = self.cache_paths[index]
        start, end = int(self.starts[index]), int(self.ends[index])
        try:
            cache = open_series(path, self.boxes[start:end])
        except CacheFormatError as err:
            raise ValueError(f"{err} (series {self.series_ids[index]}; rerun the prepare step to rebuild it)") from err
        if len(cache) != end - start:
            raise ValueError(f"{path}: {len(cache)} slices cached, {end - start} listed in {self.meta_file}")
        height, width = cache.frame
        hi = end - start if hi is None else hi
        for i, (y0, y1, x0, x1) in enumerate(cache.boxes[lo:hi], start=lo):
            if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
                raise ValueError(f"{path}: crop box {[y0, y1, x0, x1]} of slice {self.slice_ids[start + i]} outside the {height}x{width} frame")
        if cache.legacy and not self._legacy_noted:
            self._legacy_noted = True
            logger.warning("%s: old-format cache (uncompressed full frames); rerun the prepare step to shrink it ~10x", path)
        try:
            yield from cache.iter_many(range(lo, hi))
        except CacheFormatError as err:
            raise ValueError(f"{err} (series {self.series_ids[index]}; rerun the prepare step to rebuild it)") from err

    def input_slices(self, index: int, lo: int, hi: int) -> Iterable[np.ndarray]:
        """The model's slices ``lo:hi`` before the transforms: the head crops themselves
        (:meth:`iter_slices`), or with ``neighbours`` their stacks (:meth:`stacked_slices`)."""
        if not self.neighbours:
            return self.iter_slices(index, lo, hi)
        return self.stacked_slices(index, range(lo, hi))

    def stacked_slices(self, index: int, centres: Sequence[int]) -> list[np.ndarray]:
        """Slices ``centres`` (series positions, ascending) each with its ``neighbours`` stacked
        as channels (:func:`medseg.data.neighbours.stack_neighbours`), read in one span that the
        series' edges clamp."""
        start, end = int(self.starts[index]), int(self.ends[index])
        lo, hi = neighbour_span(end - start, centres, self.neighbours)
        crops = self.load_slices(index, lo, hi)
        try:
            return stack_neighbours(crops, self.boxes[start + lo:start + hi], self.neighbours, [c - lo for c in centres])
        except ValueError as err:
            raise ValueError(f"{self.cache_paths[index]}: {err} (series {self.series_ids[index]}, boxes of {self.meta_file})") from None

    def rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])

    def window(self, index: int, epoch: int) -> tuple[int, int]:
        """Slices ``lo:hi`` of the series this item covers (all of them unless ``max_slices``)."""
        return slice_window(self.num_slices(index), self.max_slices, self.seed, epoch, index)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, epoch = split_key(key)
        lo, hi = self.window(index, epoch)
        start = int(self.starts[index])
        return self.make_item(index, self.input_slices(index, lo, hi), np.arange(start + lo, start + hi), self.rng(index, epoch))

    def make_item(self, index: int, slices: Iterable[np.ndarray], rows: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        """The item of series ``index`` from its cropped ``slices`` (meta ``rows``, in order; a
        list or an iterator): transformed on the CPU, or as uint8 crops + drawn warps for the
        device (``augment_on_device``)."""
        if self.augment_on_device:
            crops, plan = self.transforms.device_plan(slices, rng)
            canvas = np.zeros((len(crops), max(c.shape[0] for c in crops), max(c.shape[1] for c in crops), crops[0].shape[2]), np.uint8)
            for i, crop in enumerate(crops):
                canvas[i, :crop.shape[0], :crop.shape[1]] = crop
            fields = {"image": canvas, "inverse": plan.inverse, "cuts": plan.cuts, "out_hw": plan.out_hw,
                      "mean": plan.mean, "std": plan.std, "interpolation": plan.interpolation}
        else:
            image = self.transforms.stack(slices, rng, deferred=True)
            normalize = self.transforms.final_normalize()
            if image.dtype == np.uint8 and normalize is not None:  # [S, H, W, C]: finished in the batch step
                fields = {"image": image, "norm": np.stack(normalize.per_channel(image.shape[-1])).astype(np.float32)}
            else:
                fields = {"image": image.astype(np.float32, copy=False)}
        return {
            **fields,
            "label": self.labels[rows].copy(),
            "series_id": self.series_ids[index],
            "slice_ids": [str(s) for s in self.slice_ids[rows]],
        }


@DATASETS.add_component
class ConcatSeriesDataset(paddle.io.Dataset):
    """Several series datasets as one (e.g. labelled train + pseudo-labelled test)."""

    def __init__(self, datasets: Sequence[Any]):
        super().__init__()
        if not datasets:
            raise ValueError("ConcatSeriesDataset: no datasets given")
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.series_ids = [s for d in self.datasets for s in d.series_ids]
        self.labelled = all(d.labelled for d in self.datasets)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[Any, int]:
        which = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.datasets[which], index - int(self.offsets[which])

    def num_slices(self, index: int) -> int:
        dataset, local = self._locate(index)
        return dataset.num_slices(local)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, epoch = split_key(key)
        dataset, local = self._locate(index)
        return dataset[(local, epoch)]
