"""Read, validate and write the two per-image probability tables the outputs stage handles.

* the predictions CSV of docs/design.md: ``slice_id, series_id, epidural, …, any`` (wide);
* the Kaggle long format: ``ID,Label`` with six rows ``ID_<slice>_<subtype>`` per slice
  (labels, sample submissions, submissions).

Everything downstream works on the wide table; :func:`read_table` accepts either file and
says which it was.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import pandas as pd

from medseg.constants import LABELS
from medseg.data.kaggle_tables import split_kaggle_ids
from medseg.utils.atomic import atomic_write_csv

PRED_COLUMNS: tuple[str, ...] = ("slice_id", "series_id", *LABELS)
KAGGLE_COLUMNS: tuple[str, ...] = ("ID", "Label")
_EXAMPLES = 3  # IDs quoted in an error message


class TableError(ValueError):
    """A prediction/label table is malformed; the message starts with the file it came from."""


def format_examples(values: Iterable) -> str:
    """The first few values for an error message, with an ellipsis if there are more."""
    values = list(values)
    shown = ", ".join(map(str, values[:_EXAMPLES]))
    return shown + (", …" if len(values) > _EXAMPLES else "")


def _read_csv(path: str) -> pd.DataFrame:
    if not os.path.isfile(path):
        raise TableError(f"{path}: file not found")
    try:
        # IDs stay strings (never parsed as numbers); probabilities are parsed and checked below.
        return pd.read_csv(path, dtype={"ID": str, "slice_id": str, "series_id": str})
    except pd.errors.EmptyDataError:
        raise TableError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: not a readable CSV ({exc})") from None


def _check_probabilities(values: pd.DataFrame, source: str) -> np.ndarray:
    """Numeric, finite and within [0, 1], or a :class:`TableError` naming a bad row."""
    numeric = values.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & values.notna()
    if bad.any().any():
        col = bad.any().idxmax()
        raise TableError(f"{source}: column {col!r} has non-numeric values, e.g. {values[col][bad[col]].iloc[0]!r}")
    arr = numeric.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        rows, cols = np.nonzero(~np.isfinite(arr))
        raise TableError(f"{source}: {len(rows)} empty/non-finite probabilities (first in column {values.columns[cols[0]]!r}, row {rows[0]})")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise TableError(f"{source}: probabilities must lie in [0, 1]; found [{arr.min():.4g}, {arr.max():.4g}]")
    return arr


def _check_unique(ids: pd.Series, source: str, what: str) -> None:
    dup = ids[ids.duplicated()]
    if len(dup):
        raise TableError(f"{source}: {len(dup)} duplicate {what}(s), e.g. {format_examples(dup.unique())}")


def validate_predictions(df: pd.DataFrame, source: str = "<predictions>") -> pd.DataFrame:
    """Check a wide table (``slice_id``, the six labels, optional ``series_id``); return a clean copy.

    The returned frame has ``slice_id``, ``series_id`` (if present) and the labels as float64,
    in that order, so later steps can rely on the layout.
    """
    missing = [c for c in ("slice_id", *LABELS) if c not in df.columns]
    if missing:
        raise TableError(f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(PRED_COLUMNS)}")
    ids = df["slice_id"]
    if ids.isna().any() or (ids.astype(str).str.strip() == "").any():
        raise TableError(f"{source}: {int((ids.isna() | (ids.astype(str).str.strip() == '')).sum())} row(s) without slice_id")
    _check_unique(ids, source, "slice_id")
    probs = _check_probabilities(df[list(LABELS)], source)
    out = pd.DataFrame({"slice_id": ids.astype(str).to_numpy()})
    if "series_id" in df.columns:
        if df["series_id"].isna().any():
            raise TableError(f"{source}: {int(df['series_id'].isna().sum())} row(s) without series_id")
        out["series_id"] = df["series_id"].astype(str).to_numpy()
    for i, label in enumerate(LABELS):
        out[label] = probs[:, i]
    return out


def read_predictions(path: str) -> pd.DataFrame:
    """Read and validate a predictions CSV (``series_id`` optional, see :func:`validate_predictions`)."""
    return validate_predictions(_read_csv(path), source=path)


def write_predictions(path: str, df: pd.DataFrame) -> None:
    """Validate and write a predictions CSV atomically in the column order of docs/design.md."""
    clean = validate_predictions(df, source=path)
    if "series_id" not in clean.columns:
        raise TableError(f"{path}: predictions to write need a series_id column")
    atomic_write_csv(path, clean[list(PRED_COLUMNS)])


def kaggle_to_wide(df: pd.DataFrame, source: str = "<kaggle table>") -> pd.DataFrame:
    """Kaggle ``ID,Label`` rows → wide table (``slice_id`` + six labels), slices in first-seen order.

    Every slice must have exactly the six subtype rows; duplicates, unknown subtypes and
    incomplete slices are errors with counts and examples.
    """
    missing = [c for c in KAGGLE_COLUMNS if c not in df.columns]
    if missing:
        raise TableError(f"{source}: missing column(s) {', '.join(missing)}; expected ID,Label")
    ids = df["ID"].astype(str)
    _check_unique(ids, source, "ID")
    try:
        slice_ids, subtypes = split_kaggle_ids(ids, source)
    except ValueError as err:
        raise TableError(str(err)) from None
    probs = _check_probabilities(df[["Label"]], source)[:, 0]
    long = pd.DataFrame({"slice_id": slice_ids.to_numpy(), "subtype": subtypes.to_numpy(), "p": probs})
    wide = long.pivot(index="slice_id", columns="subtype", values="p")
    incomplete = wide.index[wide.reindex(columns=list(LABELS)).isna().any(axis=1)]
    if len(incomplete):
        raise TableError(f"{source}: {len(incomplete)} slice(s) without all six subtype rows, e.g. {format_examples(incomplete)}")
    order = long["slice_id"].drop_duplicates().tolist()
    wide = wide.reindex(index=order, columns=list(LABELS))
    out = pd.DataFrame({"slice_id": order})
    for label in LABELS:
        out[label] = wide[label].to_numpy(dtype=np.float64)
    return out


def wide_to_kaggle(df: pd.DataFrame) -> pd.DataFrame:
    """Wide table → Kaggle ``ID,Label`` rows, six per slice in ``LABELS`` order."""
    slice_ids = df["slice_id"].astype(str).to_numpy()
    probs = df[list(LABELS)].to_numpy(dtype=np.float64)
    ids = np.char.add(np.repeat(slice_ids, len(LABELS)).astype(str), np.tile([f"_{l}" for l in LABELS], len(slice_ids)))
    return pd.DataFrame({"ID": ids, "Label": probs.reshape(-1)})


def read_kaggle(path: str) -> pd.DataFrame:
    """Read a Kaggle ``ID,Label`` file as is (validated: columns, unique IDs, Label in [0, 1])."""
    df = _read_csv(path)
    missing = [c for c in KAGGLE_COLUMNS if c not in df.columns]
    if missing:
        raise TableError(f"{path}: missing column(s) {', '.join(missing)}; expected ID,Label")
    _check_unique(df["ID"], path, "ID")
    _check_probabilities(df[["Label"]], path)
    return df[list(KAGGLE_COLUMNS)].astype({"ID": str, "Label": np.float64})


def detect_format(df: pd.DataFrame) -> str:
    """``"kaggle"`` (``ID,Label``) or ``"predictions"`` (``slice_id`` + labels), else ``""``."""
    if set(KAGGLE_COLUMNS) <= set(df.columns):
        return "kaggle"
    if {"slice_id", *LABELS} <= set(df.columns):
        return "predictions"
    return ""


def read_table(path: str) -> tuple[pd.DataFrame, str]:
    """Read either format as a validated wide table; also return the detected format."""
    df = _read_csv(path)
    fmt = detect_format(df)
    if fmt == "kaggle":
        return kaggle_to_wide(df, source=path), fmt
    if fmt == "predictions":
        return validate_predictions(df, source=path), fmt
    raise TableError(
        f"{path}: neither a Kaggle table (ID,Label) nor a predictions CSV ({', '.join(PRED_COLUMNS)}); "
        f"found columns {', '.join(map(str, df.columns))}"
    )


def read_tables(paths: Iterable[str]) -> pd.DataFrame:
    """:func:`read_table` of each file (either format), combined: ``slice_id`` + the six labels.

    Probabilities of different splits usually live in different files (``infer.py`` writes one per
    split; labels come as a Kaggle ``ID,Label`` file or a prepared meta table). A slice in two
    files is an error naming both: taking either copy silently could hide a mix-up of runs.
    """
    paths = list(paths)
    if not paths:
        raise TableError("no table given")
    frames = []
    for path in paths:
        frame = read_table(path)[0][["slice_id", *LABELS]].copy()
        frame["source"] = path
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    twice = table["slice_id"].duplicated(keep=False)
    if twice.any():
        first = table.loc[twice, "slice_id"].iloc[0]
        sources = table.loc[table["slice_id"] == first, "source"]
        raise TableError(f"{sources.iloc[-1]}: {int(table['slice_id'].duplicated().sum())} slice(s) also in "
                         f"{sources.iloc[0]}, e.g. {first}")
    return table.drop(columns="source")
