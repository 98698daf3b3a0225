"""The prepared-dataset table ``DATASET_ROOT/<tag>_meta.csv`` (docs/design.md, "Prepared dataset").

Its one home: the column order, the file name of a tag, how it is read (ids always as strings,
so ``ID_0001`` or an all-digit id is never turned into a number) and how it is written
(atomically, in column order). Prepare, the dataset, the semi-supervised tools and the report
all go through here.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence

import pandas as pd

from medseg.constants import LABELS
from medseg.utils.atomic import atomic_write_csv, atomic_write_json, read_json_object

META_SUFFIX = "_meta.csv"
CROP_COLUMNS: tuple[str, ...] = ("crop_y0", "crop_y1", "crop_x0", "crop_x1")
# The column order of every meta table.
META_COLUMNS: tuple[str, ...] = (
    "slice_id", "series_id", "study_id", "patient_id", "slice_idx", "position", "spacing",
    *LABELS, "fold", *CROP_COLUMNS, "cache",
)
# What a series dataset needs from a table (the other columns are bookkeeping of the prepare step).
DATASET_COLUMNS: tuple[str, ...] = ("slice_id", "series_id", "slice_idx", *LABELS, *CROP_COLUMNS, "cache")
# What the semi-supervised tools need: ids for the patient-level split and the leakage check, labels.
SEMI_COLUMNS: tuple[str, ...] = ("series_id", "patient_id", *LABELS)
ID_COLUMNS: tuple[str, ...] = ("slice_id", "series_id", "study_id", "patient_id", "cache")
# The tags the prepare step writes; nothing else may replace them.
PREPARED_TAGS: tuple[str, ...] = ("train", "val", "test")
# How the prepare step made the root (crop mode, windows), written with its tables: a dataset that
# asks for a crop mode checks it here (docs/design.md, "Crop modes and input scale").
MANIFEST = "prepare.json"


class MetaTableError(ValueError):
    """A meta table lacks columns or rows it must have; the message names the file."""


def meta_path(dataset_root: str, tag: str) -> str:
    """``DATASET_ROOT/<tag>_meta.csv``."""
    return os.path.join(dataset_root, f"{tag}{META_SUFFIX}")


def meta_tag(path: str) -> str:
    """The tag of a ``<tag>_meta.csv`` path; ValueError for any other name."""
    name = os.path.basename(path)
    if not name.endswith(META_SUFFIX) or name == META_SUFFIX:
        raise ValueError(f"{path}: a meta table must be named <tag>{META_SUFFIX}")
    return name[: -len(META_SUFFIX)]


def meta_files(dataset_root: str) -> list[str]:
    """Every ``<tag>_meta.csv`` of a dataset root, sorted."""
    return sorted(glob.glob(os.path.join(glob.escape(dataset_root), f"*{META_SUFFIX}")))


def read_meta_file(path: str, required: Iterable[str] = (), columns: Sequence[str] | None = None,
                   purpose: str = "") -> pd.DataFrame:
    """A meta table with its id columns as strings. ``required`` columns must be present (a
    :class:`MetaTableError` names the file and what is missing); ``columns`` reads only those
    that exist among them. ``purpose`` ends the messages (e.g. "needed for the leakage check")."""
    why = f" ({purpose})" if purpose else ""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: meta file not found{why}")
    usecols = None if columns is None else (lambda c: c in columns)
    frame = pd.read_csv(path, usecols=usecols, dtype={c: str for c in ID_COLUMNS})
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise MetaTableError(f"{path}: missing column(s) {', '.join(missing)}{why}")
    return frame


def read_meta(dataset_root: str, tag: str, required: Iterable[str] = (), columns: Sequence[str] | None = None,
              purpose: str = "") -> pd.DataFrame:
    """:func:`read_meta_file` of ``DATASET_ROOT/<tag>_meta.csv``."""
    return read_meta_file(meta_path(dataset_root, tag), required, columns, purpose or f"tag {tag!r}")


def sort_meta(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the table's order: by series, then slice index (stable)."""
    return frame.sort_values(["series_id", "slice_idx"], kind="stable")


def write_meta(path: str, frame: pd.DataFrame) -> None:
    """Write ``frame`` atomically as a meta table: the columns of :data:`META_COLUMNS` in order,
    rows sorted by series and slice."""
    missing = [c for c in META_COLUMNS if c not in frame.columns]
    if missing:
        raise MetaTableError(f"{path}: the table to write lacks column(s) {', '.join(missing)}")
    atomic_write_csv(path, sort_meta(frame)[list(META_COLUMNS)])


def manifest_path(dataset_root: str) -> str:
    """``DATASET_ROOT/prepare.json``."""
    return os.path.join(dataset_root, MANIFEST)


def write_manifest(dataset_root: str, info: dict) -> None:
    """Record how the prepare step made ``dataset_root`` (atomically, fsynced)."""
    atomic_write_json(manifest_path(dataset_root), info)


def read_manifest(dataset_root: str) -> dict | None:
    """The prepare manifest of ``dataset_root``; None when there is none (a root prepared before
    manifests existed, or written by another tool); :class:`MetaTableError` when unreadable."""
    return read_json_object(manifest_path(dataset_root), MetaTableError, "prepare manifest")
