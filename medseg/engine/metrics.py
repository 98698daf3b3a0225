"""The Kaggle RSNA 2019 metric: weighted multi-label log loss, plus per-class log loss and ROC AUC.

Pure numpy/scikit-learn functions over ``[N, 6]`` arrays (one row per image, columns in
``LABELS`` order), so the trainer, ``infer.py`` and the report all score the same way.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medseg.constants import CLASS_WEIGHTS, LABELS
from medseg.registry import METRICS

# Predictions are clipped to [eps, 1 - eps] before the log, as Kaggle does; submissions are
# clipped to the same value so that what we score locally is what the leaderboard scores.
METRIC_EPS: float = 1e-7


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray, weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert inputs; a wrong shape or value must fail loudly, not score silently."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must both be [N, C] with the same shape")
    if y_true.shape[0] == 0:
        raise ValueError("cannot score zero images")
    if w.shape != (y_true.shape[1],) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights {tuple(weights)} must be {y_true.shape[1]} non-negative values with a positive sum")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError(f"{name} must lie in [0, 1]; found [{arr.min():.4g}, {arr.max():.4g}]")
    return y_true, y_pred, w


def _bce(y_true: np.ndarray, y_pred: np.ndarray, eps: float) -> np.ndarray:
    """Element-wise binary cross-entropy with clipping.

    Written out rather than calling ``sklearn.metrics.log_loss`` because the labels may be soft
    (pseudo-labels in [0, 1]) and the clipping epsilon must be configurable; sklearn accepts
    neither. The tests check it against sklearn on hard labels.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    p = np.clip(y_pred, eps, 1.0 - eps)
    return -(y_true * np.log(p) + (1.0 - y_true) * np.log1p(-p))


def per_image_log_loss(y_true: np.ndarray, y_pred: np.ndarray, eps: float = METRIC_EPS, weights: Sequence[float] = CLASS_WEIGHTS) -> np.ndarray:
    """Weighted BCE of each image, ``sum_c w_c bce_c / sum_c w_c``, shape ``[N]`` (for ranking series)."""
    y_true, y_pred, w = _check_pair(y_true, y_pred, weights)
    return _bce(y_true, y_pred, eps) @ w / w.sum()


def weighted_log_loss(y_true: np.ndarray, y_pred: np.ndarray, eps: float = METRIC_EPS, weights: Sequence[float] = CLASS_WEIGHTS) -> float:
    """The Kaggle score: mean over images of the weighted BCE (weights 2 for ``any``, 1 otherwise)."""
    return float(per_image_log_loss(y_true, y_pred, eps, weights).mean())


def per_class_log_loss(y_true: np.ndarray, y_pred: np.ndarray, eps: float = METRIC_EPS) -> np.ndarray:
    """Mean clipped BCE of each class, shape ``[C]``."""
    y_true, y_pred, _ = _check_pair(y_true, y_pred, np.ones(np.shape(y_true)[-1]))
    return _bce(y_true, y_pred, eps).mean(axis=0)


def per_class_auc(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """ROC AUC of each class, shape ``[C]``; NaN where the truth has only one value.

    Soft labels are binarised at 0.5 (AUC is defined for binary truth only).
    """
    # Imported here: scikit-learn (with scipy.stats) is ~1 s of CPU at import, paid by every
    # train.py/infer.py process that never asks for an AUC.
    from sklearn.metrics import roc_auc_score

    y_true, y_pred, _ = _check_pair(y_true, y_pred, np.ones(np.shape(y_true)[-1]))
    y_bin = y_true >= 0.5
    out = np.full(y_true.shape[1], np.nan)
    for c in range(y_true.shape[1]):
        if 0 < y_bin[:, c].sum() < len(y_bin):
            out[c] = roc_auc_score(y_bin[:, c], y_pred[:, c])
    return out


def prevalence(y_true: np.ndarray) -> np.ndarray:
    """Fraction of positive (mean soft) labels per class, shape ``[C]``."""
    y_true, _, _ = _check_pair(y_true, y_true, np.ones(np.shape(y_true)[-1]))
    return y_true.mean(axis=0)


def prior_baseline(y_true: np.ndarray, eps: float = METRIC_EPS, weights: Sequence[float] = CLASS_WEIGHTS) -> float:
    """Weighted log loss of predicting each class's prevalence for every image.

    The score of a model that learned nothing from the images; a useful model must beat it.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    constant = np.broadcast_to(prevalence(y_true), y_true.shape)
    return weighted_log_loss(y_true, constant, eps, weights)


def evaluate_predictions(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    eps: float = METRIC_EPS,
    weights: Sequence[float] = CLASS_WEIGHTS,
    labels: Sequence[str] = LABELS,
) -> dict[str, float]:
    """All metrics in one flat dict (flat so that it logs to VisualDL and JSON as is).

    Keys: ``weighted_logloss``, ``prior_logloss``, ``ratio`` (model / prior), ``mean_auc``
    (over classes with both label values), ``n_images``, ``eps``, and per class
    ``logloss_<label>``, ``auc_<label>``, ``prevalence_<label>``.
    """
    y_true, y_pred, _ = _check_pair(y_true, y_pred, weights)
    if len(labels) != y_true.shape[1]:
        raise ValueError(f"{len(labels)} label names for {y_true.shape[1]} columns")
    score = weighted_log_loss(y_true, y_pred, eps, weights)
    prior = prior_baseline(y_true, eps, weights)
    aucs = per_class_auc(y_true, y_pred)
    result: dict[str, float] = {
        "weighted_logloss": score,
        "prior_logloss": prior,
        "ratio": score / prior if prior > 0 else float("nan"),
        "mean_auc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
        "n_images": int(y_true.shape[0]),
        "eps": float(eps),
    }
    for name, loss, auc, prev in zip(labels, per_class_log_loss(y_true, y_pred, eps), aucs, prevalence(y_true)):
        result[f"logloss_{name}"] = float(loss)
        result[f"auc_{name}"] = float(auc)
        result[f"prevalence_{name}"] = float(prev)
    return result


@METRICS.add_component
class WeightedLogLoss:
    """Config-nameable metric (``metric: {type: WeightedLogLoss, eps: 1.0e-7}``).

    ``key`` is the entry the trainer minimises to pick ``best_model``.
    """

    key = "weighted_logloss"
    higher_is_better = False

    def __init__(self, eps: float = METRIC_EPS, weights: Sequence[float] = CLASS_WEIGHTS):
        if not 0.0 < eps < 0.5:
            raise ValueError(f"WeightedLogLoss: eps must be in (0, 0.5), got {eps}")
        self.eps = float(eps)
        self.weights = tuple(float(w) for w in weights)

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        return evaluate_predictions(y_true, y_pred, self.eps, self.weights)

    def __repr__(self) -> str:
        return f"WeightedLogLoss(eps={self.eps}, weights={self.weights})"
