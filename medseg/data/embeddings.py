"""Saved slice embeddings (``python -m medseg.tools.embed``) and the dataset that serves them.

Layout of an embeddings folder ``DIR``:

* ``manifest.json``: what made the features — the resolved image config, the checkpoint, the
  SHA-256 of the encoder's tensors and of its per-slice head, the feature width, the test-time
  views averaged, the eval transforms and crop. Every split of the folder shares it: a run with
  another encoder, geometry or views is refused in one line (:func:`claim_manifest`).
* ``<split>/``, one compact folder per split, written once the whole split is done (a hidden
  temporary folder renamed into place): ``features.npy`` float16 (float32 with ``embed --dtype
  float32``) ``[N, D]`` (every slice of the split, series after series, slices in the prepared
  order), ``logits.npy`` float32 ``[N, 6]``
  (the encoder's per-slice logits), ``labels.npy`` float32 ``[N, 6]`` (NaN when unlabelled),
  ``slices.csv`` (``slice_id, series_id`` per row) and ``split.json`` (counts, the meta table it
  was made from and its SHA-256).
* ``.parts/<split>/<series>.npz`` while a split is being extracted: one file per finished series
  (written atomically), the unit a rerun skips, and ``parts.json`` (the meta table they come from);
  packed into ``<split>/`` and removed at the end.

Why per split and not per series: a stage 2 reads every series of a split at every epoch, and the
RSNA training split has ~20 000 series; one memory-mapped array per split opens in milliseconds
(no loader workers needed), where 20 000 small files would be opened again and again.
The per-series parts exist only to make extraction resumable.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import paddle

from medseg.data.dataset import slice_window, split_key
from medseg.registry import DATASETS
from medseg.utils.atomic import atomic_write_json, read_json_object

FORMAT = 1
MANIFEST = "manifest.json"
SPLIT_RECORD = "split.json"
FEATURES, LOGITS, LABELS_FILE, SLICES = "features.npy", "logits.npy", "labels.npy", "slices.csv"
PARTS = ".parts"
# The manifest entries that must agree for two runs to write into (or train from) one folder.
IDENTITY = ("format", "encoder_sha256", "slice_head_sha256", "feature_dim", "tta", "transforms", "crop", "encoder", "dtype")


class EmbeddingsError(ValueError):
    """An embeddings folder is missing, incomplete or made by another encoder; the message names it."""


def tensors_sha256(state: dict[str, Any]) -> str:
    """SHA-256 over a state dict's names and float32 values (sorted by name): equal for equal weights
    whatever file or dtype they came from."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        array = value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array.astype(np.float32)).tobytes())
    return digest.hexdigest()


def read_manifest(root: str) -> dict[str, Any]:
    """The folder's manifest; an error naming the folder when there is none."""
    manifest = read_json_object(os.path.join(root, MANIFEST), EmbeddingsError, "embeddings manifest")
    if manifest is None:
        raise EmbeddingsError(f"{root}: no {MANIFEST} (not an embeddings folder; write one with python -m medseg.tools.embed)")
    if manifest.get("format") != FORMAT:
        raise EmbeddingsError(f"{os.path.join(root, MANIFEST)}: embeddings format {manifest.get('format')!r}, this version reads {FORMAT}")
    return manifest


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[:width - 3] + "..."


def identity_difference(ours: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    """The first identity entry on which two manifests differ, as ``key: a vs b`` (values cut to
    keep the message one short line); None when they agree."""
    for key in IDENTITY:
        if ours.get(key) != theirs.get(key):
            return f"{key}: {_short(ours.get(key))} vs {_short(theirs.get(key))}"
    return None


def claim_manifest(root: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest`` into a new folder, or check it against the folder's own (refused in one
    line when the encoder, geometry or views differ); returns the folder's manifest."""
    path = os.path.join(root, MANIFEST)
    existing = read_json_object(path, EmbeddingsError, "embeddings manifest")
    if existing is None:
        atomic_write_json(path, manifest)
        return manifest
    diff = identity_difference(existing, manifest)
    if diff is not None:
        raise EmbeddingsError(f"{path}: these embeddings were made by {existing.get('model')} with another setup "
                              f"({diff}); write to another --out")
    return existing


def split_dir(root: str, split: str) -> str:
    return os.path.join(root, split)


def parts_dir(root: str, split: str) -> str:
    return os.path.join(root, PARTS, split)


def split_record(root: str, split: str) -> dict[str, Any] | None:
    """``<split>/split.json`` of a finished split, None when the split is not (yet) there."""
    return read_json_object(os.path.join(split_dir(root, split), SPLIT_RECORD), EmbeddingsError, "split record")


@dataclass
class SplitEmbeddings:
    """One split's arrays (features memory-mapped) and where each series' rows are."""

    features: np.ndarray  # float16 (or float32) [N, D]
    logits: np.ndarray  # float32 [N, 6]
    labels: np.ndarray  # float32 [N, 6]
    slice_ids: np.ndarray  # object [N]
    series_ids: list[str]
    starts: np.ndarray
    ends: np.ndarray
    record: dict[str, Any]


def read_split(root: str, split: str) -> SplitEmbeddings:
    """A finished split; an error naming the folder when it is missing or inconsistent."""
    folder = split_dir(root, split)
    record = split_record(root, split)
    if record is None:
        hint = " (extraction unfinished: rerun the embed command to resume it)" if os.path.isdir(parts_dir(root, split)) else ""
        raise EmbeddingsError(f"{folder}: no embeddings of split {split!r}{hint}; write them with "
                              f"python -m medseg.tools.embed --split {split} --out {root}")
    try:
        features = np.load(os.path.join(folder, FEATURES), mmap_mode="r")
        logits = np.load(os.path.join(folder, LOGITS))
        labels = np.load(os.path.join(folder, LABELS_FILE))
        slices = pd.read_csv(os.path.join(folder, SLICES), dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise EmbeddingsError(f"{folder}: unreadable embeddings ({err})") from err
    n = len(slices)
    if not (features.shape[0] == logits.shape[0] == labels.shape[0] == n == int(record.get("slices", -1))):
        raise EmbeddingsError(f"{folder}: {features.shape[0]} feature rows, {logits.shape[0]} logit rows, {labels.shape[0]} "
                              f"label rows and {n} slices listed (split.json: {record.get('slices')}); extract the split again")
    series = slices["series_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, series[1:] != series[:-1]]) if n else np.zeros(0, np.int64)
    return SplitEmbeddings(features, logits, labels, slices["slice_id"].to_numpy(dtype=object),
                           [str(s) for s in series[starts]], starts, np.r_[starts[1:], n].astype(np.int64), record)


@DATASETS.add_component
class RSNAEmbeddingDataset(paddle.io.Dataset):
    """The series of one split of an embeddings folder, as items the series collate and the
    trainer take: ``image`` is the float32 features ``[S, D]`` (the model's encoder is then a
    :class:`~medseg.models.precomputed.PrecomputedEncoder`), ``label``, ``series_id``, ``slice_ids``.

    ``max_slices`` (training): a longer series is cut to a random run of that many consecutive
    slices per (seed, epoch, index), as :class:`~medseg.data.dataset.RSNASeriesDataset` does.
    No augmentation: the features are those of the eval transforms (averaged over the test-time
    views the embed command was given).
    """

    use_workers = False  # memory-mapped arrays: loader worker processes would only add IPC (the trainer reads this)

    def __init__(self, embeddings: str, split: str = "train", seed: int = 0, max_slices: int | None = None):
        super().__init__()
        if max_slices is not None and int(max_slices) < 1:
            raise ValueError(f"{split} dataset: max_slices must be a positive number of slices or null, got {max_slices}")
        if not os.path.isdir(embeddings):
            raise FileNotFoundError(f"{embeddings}: embeddings folder not found (python -m medseg.tools.embed writes it)")
        self.root, self.split, self.seed = embeddings, split, int(seed)
        self.max_slices = None if max_slices is None else int(max_slices)
        self.manifest = read_manifest(embeddings)
        self.data = read_split(embeddings, split)
        if self.data.features.shape[1] != int(self.manifest["feature_dim"]):
            raise EmbeddingsError(f"{split_dir(embeddings, split)}: features {self.data.features.shape[1]} wide, "
                                  f"the manifest says {self.manifest['feature_dim']}")
        self.series_ids = self.data.series_ids
        self.labelled = bool(np.isfinite(self.data.labels).all()) and len(self.data.labels) > 0
        self.meta_file = split_dir(embeddings, split)  # what logs name as the source of the split

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["feature_dim"])

    def __len__(self) -> int:
        return len(self.series_ids)

    def num_slices(self, index: int) -> int:
        return int(self.data.ends[index] - self.data.starts[index])

    def window(self, index: int, epoch: int) -> tuple[int, int]:
        return slice_window(self.num_slices(index), self.max_slices, self.seed, epoch, index)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, epoch = split_key(key)
        lo, hi = self.window(index, epoch)
        start = int(self.data.starts[index])
        rows = slice(start + lo, start + hi)
        return {"image": np.asarray(self.data.features[rows], dtype=np.float32),
                "label": np.array(self.data.labels[rows], dtype=np.float32),
                "series_id": self.series_ids[index],
                "slice_ids": [str(s) for s in self.data.slice_ids[rows]]}


def check_embedding_run(model: paddle.nn.Layer, *datasets: Any) -> None:
    """Before training on saved embeddings: the model must take features of their width, its
    frozen slice head must be the one the embeddings were made with (``--pretrained`` of the same
    stage-1 checkpoint), and every embeddings dataset of the run must come from one encoder,
    geometry and set of views. A no-op when no dataset is an embeddings dataset."""
    found = [d for d in datasets if isinstance(d, RSNAEmbeddingDataset)]
    if not found:
        return
    from medseg.models.precomputed import PrecomputedEncoder

    first = found[0]
    for other in found[1:]:
        diff = identity_difference(first.manifest, other.manifest)
        if diff is not None:
            raise EmbeddingsError(f"{other.root}: embeddings of another encoder or geometry than {first.root} ({diff})")
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, PrecomputedEncoder):
        raise EmbeddingsError(f"{first.root}: an embeddings dataset feeds slice features; the model's encoder must be "
                              f"PrecomputedEncoder, not {type(encoder).__name__}")
    if encoder.feature_dim != first.feature_dim:
        raise EmbeddingsError(f"{first.root}: features are {first.feature_dim} wide, model.encoder.feature_dim is {encoder.feature_dim}")
    if getattr(model, "freeze_encoder", False):
        ours = tensors_sha256(encoder.head.state_dict())
        if ours != first.manifest["slice_head_sha256"]:
            raise EmbeddingsError(f"{first.root}: the model's frozen slice head is not that of the encoder the embeddings were "
                                  f"made with ({first.manifest.get('model')}); pass that checkpoint as --pretrained")
