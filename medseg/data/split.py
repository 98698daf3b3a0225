"""Patient-grouped, label-stratified folds (scikit-learn StratifiedGroupKFold).

Series are stratified by their rarest positive subtype, so the few epidural cases spread over the
folds instead of landing in one; grouping by patient keeps every patient in one fold.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from medseg.constants import LABELS, SUBTYPES


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


def assign_folds(series_labels: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """Fold number per series (index = ``series_id``). ``series_labels`` needs ``patient_id``
    and the six LABELS columns (per-series maxima). ``round(1 / val_fraction)`` folds, capped by
    the number of patients; deterministic for a given seed and input."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    frame = series_labels.sort_index()
    n_patients = frame["patient_id"].nunique()
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
    return pd.Series(folds, index=frame.index, name="fold")
