"""Kaggle label tables: ``ID,Label`` rows (``ID_<hex>_<subtype>``) → one row per image, six columns.

Parsed with plain string splitting (the original ``eval``-ed a stringified list per row).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from medseg.constants import LABELS
from medseg.utils.logger import get_logger

logger = get_logger("data.kaggle_tables")


def split_kaggle_ids(ids: pd.Series, source: str) -> tuple[pd.Series, pd.Series]:
    """``ID_<slice>_<subtype>`` → (slice ids, subtypes), split on the last ``_``; IDs of another
    form or unknown subtypes raise ValueError naming ``source`` with examples. Shared by the
    label reader here (lenient about repeats) and the submission tools (strict)."""
    ids = ids.astype(str)
    parts = ids.str.rsplit("_", n=1, expand=True)
    bad = ids if parts.shape[1] != 2 else ids[parts[1].isna() | (parts[0] == "")]
    if len(bad):
        raise ValueError(f"{source}: ID(s) not of the form ID_<slice>_<subtype>, e.g. {', '.join(bad.head(3))}")
    slice_ids, subtypes = parts[0], parts[1]
    unknown = ids[~subtypes.isin(LABELS)]
    if len(unknown):
        raise ValueError(f"{source}: {len(unknown)} row(s) with unknown subtypes, e.g. {', '.join(unknown.head(3))}; "
                         f"expected one of {', '.join(LABELS)}")
    return slice_ids, subtypes


def read_label_table(path: str) -> pd.DataFrame:
    """``stage_2_train.csv`` → DataFrame indexed by ``slice_id`` with the six LABELS columns
    (float). Repeated ``ID`` rows are dropped (first kept); unknown subtypes raise ValueError."""
    try:
        frame = pd.read_csv(path, dtype={"ID": str}, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{path}: empty file (expected the columns ID,Label)") from err
    if list(frame.columns[:2]) != ["ID", "Label"]:
        raise ValueError(f"{path}: expected columns ID,Label, found {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{path}: no label rows")
    labels = pd.to_numeric(frame["Label"], errors="coerce")
    if labels.isna().any():
        bad = frame.loc[labels.isna(), "ID"].head(3).tolist()
        raise ValueError(f"{path}: {int(labels.isna().sum())} non-numeric labels, e.g. {bad}")
    slice_ids, subtypes = split_kaggle_ids(frame["ID"], path)
    table = pd.DataFrame({"slice_id": slice_ids, "subtype": subtypes, "label": labels.astype(float)})
    duplicated = table.duplicated(["slice_id", "subtype"], keep="first")
    if duplicated.any():
        conflicting = table[table.duplicated(["slice_id", "subtype"], keep=False)].groupby(["slice_id", "subtype"])["label"].nunique()
        logger.info("%s: dropped %d repeated label rows (%d with conflicting values, first kept)", path, int(duplicated.sum()), int((conflicting > 1).sum()))
        table = table[~duplicated]
    wide = table.pivot(index="slice_id", columns="subtype", values="label").reindex(columns=list(LABELS))
    wide.columns.name = None
    incomplete = wide.isna().any(axis=1)
    if incomplete.any():
        logger.warning("%s: %d images lack some of the six label rows (left empty)", path, int(incomplete.sum()))
    return wide.sort_index()


@dataclass
class MismatchReport:
    """Labelled images without a file, and files without label rows."""

    labels_without_file: list[str]
    files_without_label: list[str]

    @property
    def ok(self) -> bool:
        return not self.labels_without_file and not self.files_without_label

    def summary(self, examples: int = 5) -> str:
        if self.ok:
            return "labels and files match"
        lines = []
        for name, ids in (("labelled images without a file", self.labels_without_file), ("files without label rows", self.files_without_label)):
            if ids:
                lines.append(f"{len(ids)} {name}, e.g. {', '.join(ids[:examples])}")
        return "; ".join(lines)


def label_file_mismatch(label_ids: Iterable[str], file_ids: Iterable[str]) -> MismatchReport:
    """Compare the label table's images with the files found on disk (both as slice ids)."""
    labels, files = set(label_ids), set(file_ids)
    return MismatchReport(sorted(labels - files), sorted(files - labels))
