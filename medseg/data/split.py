"""Patient-grouped, label-stratified folds (scikit-learn StratifiedGroupKFold), and the fold
tables of K-fold training.

Series are stratified by their rarest positive subtype, so the few epidural cases spread over the
folds instead of landing in one; grouping by patient keeps every patient in one fold.
``prepare --folds K`` asks for K folds (else ``1 / val_fraction``); ``medseg.tools.kfold`` reads
them back with :func:`labelled_folds` and trains one model per fold.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from medseg.constants import LABELS, SUBTYPES
from medseg.data.meta import meta_path, read_meta, sort_meta, write_meta
from medseg.utils.logger import get_logger

logger = get_logger("data.split")


def series_strata(series_labels: pd.DataFrame, n_folds: int) -> np.ndarray:
    """One class per series: its rarest positive subtype, ``any`` or ``none``. Classes with fewer
    series than folds are merged into ``any`` (or ``none``), which StratifiedGroupKFold needs."""
    positive = series_labels[list(LABELS)].fillna(0).to_numpy() >= 0.5
    prevalence = positive[:, : len(SUBTYPES)].sum(axis=0)
    rare_first = np.argsort(prevalence, kind="stable")
    strata = np.where(positive[:, -1] | positive[:, :-1].any(axis=1), "any", "none").astype(object)
    for column in rare_first[::-1]:  # most common first, so the rarest subtype wins
        strata[positive[:, column]] = SUBTYPES[column]
    counts = pd.Series(strata).value_counts()
    for name, count in counts.items():
        if count < n_folds and name not in ("any", "none"):
            strata[strata == name] = "any"
    if (strata == "any").sum() < n_folds:
        strata[strata == "any"] = "none"
    return strata


def check_n_folds(n_folds: int, n_patients: int | None = None) -> int:
    """``n_folds`` if a K-fold split can have it (K >= 2, at most one fold per patient); else a
    ValueError saying why."""
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"--folds {n_folds}: K-fold needs K >= 2 folds")
    if n_patients is not None and n_folds > n_patients:
        raise ValueError(f"--folds {n_folds}: only {n_patients} patient(s) to split (a patient stays in one fold)")
    return int(n_folds)


def assign_folds(series_labels: pd.DataFrame, val_fraction: float, seed: int, n_folds: int | None = None) -> pd.Series:
    """Fold number per series (index = ``series_id``). ``series_labels`` needs ``patient_id``
    and the six LABELS columns (per-series maxima). ``n_folds`` folds (K-fold training,
    ``prepare --folds K``), else ``round(1 / val_fraction)`` capped by the number of patients;
    deterministic for a given seed and input."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    frame = series_labels.sort_index()
    n_patients = frame["patient_id"].nunique()
    asked = n_folds is not None
    if asked:
        n_folds = check_n_folds(n_folds, n_patients)
    else:
        n_folds = min(max(2, round(1 / val_fraction)), n_patients)
    if n_folds < 2:
        return pd.Series(0, index=frame.index, name="fold")
    strata = series_strata(frame, n_folds)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(frame), -1, dtype=int)
    with warnings.catch_warnings():
        # Tiny cohorts can still have a stratum smaller than n_folds; grouping stays exact.
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(frame)), strata, groups=frame["patient_id"].to_numpy())):
            folds[held_out] = fold
    if asked:
        positive = pd.Series(frame[LABELS[-1]].fillna(0).to_numpy() >= 0.5).groupby(folds).any()
        empty = [k for k in range(n_folds) if not positive.get(k, False)]
        if empty:
            logger.warning("--folds %d: fold(s) %s hold no positive series (%s): K-fold training will refuse "
                           "them; fewer folds or another --seed", n_folds, ", ".join(map(str, empty)), LABELS[-1])
    return pd.Series(folds, index=frame.index, name="fold")


# K-fold training (medseg.tools.kfold): fold k's model trains on the tables of tag
# ``fold<k>of<K>_train`` and validates on ``fold<k>of<K>_val``, written into the prepared root
# beside train/val/test (a dataset reads any tag there, caches included).
LABELLED_TAGS: tuple[str, ...] = ("train", "val")


def fold_tags(fold: int, n_folds: int) -> tuple[str, str]:
    """The (train, val) tags of fold ``fold`` of ``n_folds``."""
    return f"fold{fold}of{n_folds}_train", f"fold{fold}of{n_folds}_val"


def labelled_folds(dataset_root: str) -> tuple[pd.DataFrame, int]:
    """Every labelled slice of a prepared root (``train`` + ``val`` tables, meta order) and the
    number of folds K of its ``fold`` column. A ValueError names the tables when they cannot
    give K-fold training: fewer than 2 folds, a gap in 0..K-1, a patient in two folds, or a fold
    without a positive (``any``) slice, whose validation would score nothing."""
    frames = [read_meta(dataset_root, tag, required=("slice_id", "series_id", "patient_id", "fold", *LABELS),
                        purpose="needed for K-fold training") for tag in LABELLED_TAGS]
    where = " + ".join(meta_path(dataset_root, tag) for tag in LABELLED_TAGS)
    frame = sort_meta(pd.concat(frames, ignore_index=True)).reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"{where}: no labelled slices")
    folds = pd.to_numeric(frame["fold"], errors="coerce")
    if folds.isna().any() or (folds < 0).any() or (folds != folds.round()).any():
        raise ValueError(f"{where}: the fold column must hold fold numbers 0..K-1 (prepare --folds K)")
    frame["fold"] = folds.astype(int)
    present = sorted(frame["fold"].unique())
    n_folds = present[-1] + 1
    if n_folds < 2:
        raise ValueError(f"{where}: the labelled slices are in {n_folds} fold; K-fold needs K >= 2 "
                         "(python -m medseg.data.prepare --folds K)")
    if present != list(range(n_folds)):
        raise ValueError(f"{where}: folds {sorted(set(range(n_folds)) - set(present))} of 0..{n_folds - 1} are empty")
    spread = frame.groupby("patient_id")["fold"].nunique()
    if (spread > 1).any():
        raise ValueError(f"{where}: patient {spread[spread > 1].index[0]} is in {int(spread.max())} folds "
                         "(a patient must stay in one fold)")
    positive = (frame[LABELS[-1]].fillna(0) >= 0.5).groupby(frame["fold"]).sum()
    if (positive == 0).any():
        empty = [int(k) for k in positive.index[positive == 0]]
        raise ValueError(f"{where}: fold {empty[0]} of {n_folds} has no positive slice ({LABELS[-1]}); "
                         "prepare with fewer --folds or another --seed")
    return frame, int(n_folds)


def write_fold_tables(dataset_root: str, labelled: pd.DataFrame, n_folds: int) -> None:
    """``fold<k>of<K>_{train,val}_meta.csv`` for every fold (atomic; the same content each time
    for the same root, so concurrent runs on one root agree)."""
    for fold in range(n_folds):
        train_tag, val_tag = fold_tags(fold, n_folds)
        write_meta(meta_path(dataset_root, train_tag), labelled[labelled["fold"] != fold])
        write_meta(meta_path(dataset_root, val_tag), labelled[labelled["fold"] == fold])
