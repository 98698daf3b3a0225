"""Refuse pseudo-labelled tables that overlap the labelled or validation series.

A pseudo table that contains a validation series lets the teacher's guess about that series
flow into training, and the validation score stops measuring anything; one that contains a
labelled training series trains the student on two conflicting labels for it. The overlap is
checked by series and by patient (a patient's other series carry the same anatomy and often
the same bleed), and the check runs both when the table is written and when a training config
loads it.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd

from medseg.data.meta import meta_path, read_meta_file
from medseg.utils.logger import get_logger

logger = get_logger("semi.leakage")

# Tags a pseudo table must never overlap, unless a run names its own (e.g. a labelled subset).
DEFAULT_EXCLUDE: tuple[str, ...] = ("train", "val")
# Validation is never pseudo-labelled, whatever the exclusion list says.
VALIDATION_TAG = "val"


class LeakageError(ValueError):
    """A pseudo table shares series or patients with a labelled/validation table."""


def _ids(path: str) -> pd.DataFrame:
    ids = ("series_id", "patient_id")
    return read_meta_file(path, required=ids, columns=ids, purpose="needed for the leakage check").drop_duplicates()


def _examples(values: Iterable[str], limit: int = 3) -> str:
    values = sorted(values)
    return ", ".join(values[:limit]) + (", …" if len(values) > limit else "")


def find_overlap(pseudo: pd.DataFrame, reference: pd.DataFrame) -> dict[str, set[str]]:
    """``{"series_id": {...}, "patient_id": {...}}``: ids present in both tables."""
    return {column: set(pseudo[column].astype(str)) & set(reference[column].astype(str))
            for column in ("series_id", "patient_id")}


def check_no_leakage(pseudo: pd.DataFrame, dataset_root: str, exclude: Sequence[str] = DEFAULT_EXCLUDE,
                     source: str = "<pseudo table>") -> None:
    """Raise :class:`LeakageError` if ``pseudo`` shares a series or a patient with any table
    ``DATASET_ROOT/<tag>_meta.csv`` of ``exclude``. The validation tag is always checked."""
    for column in ("series_id", "patient_id"):
        if column not in pseudo.columns:
            raise ValueError(f"{source}: missing column {column!r}")
    tags = list(dict.fromkeys([*exclude, VALIDATION_TAG]))
    for tag in tags:
        path = meta_path(dataset_root, tag)
        overlap = find_overlap(pseudo, _ids(path))
        if overlap["series_id"]:
            raise LeakageError(f"{source}: {len(overlap['series_id'])} series also in {path} "
                               f"({_examples(overlap['series_id'])}); a pseudo table must not contain {tag} series")
        if overlap["patient_id"]:
            raise LeakageError(f"{source}: {len(overlap['patient_id'])} patient(s) also in {path} "
                               f"({_examples(overlap['patient_id'])}); a pseudo table must not share patients with {tag}")
    logger.info("%s: no series or patient shared with %s", source, ", ".join(tags))


def check_pseudo_file(dataset_root: str, tag: str, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> None:
    """:func:`check_no_leakage` for ``DATASET_ROOT/<tag>_meta.csv`` (what a training config loads)."""
    if tag in (*exclude, VALIDATION_TAG):
        raise LeakageError(f"{tag!r} is itself a labelled/validation tag, not a pseudo-labelled one")
    path = meta_path(dataset_root, tag)
    check_no_leakage(_ids(path), dataset_root, exclude, source=path)
