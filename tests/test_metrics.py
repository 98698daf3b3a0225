"""The Kaggle weighted log loss and friends, checked against scikit-learn computed independently."""

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from medseg.constants import CLASS_WEIGHTS, LABELS
from medseg.engine.metrics import (
    METRIC_EPS,
    WeightedLogLoss,
    evaluate_predictions,
    per_class_auc,
    per_class_log_loss,
    per_image_log_loss,
    prior_baseline,
    weighted_log_loss,
)
from medseg.registry import build


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 6)) < [0.05, 0.1, 0.1, 0.15, 0.2, 0.4]).astype(np.float64)
    p = np.clip(0.6 * y + 0.4 * rng.random((n, 6)), 0, 1)
    return y, p


def _sklearn_weighted(y, p, eps):
    """Kaggle's definition via sklearn: class-wise log loss of the clipped predictions, weighted 1…1,2."""
    w = np.asarray(CLASS_WEIGHTS)
    per_class = [log_loss(y[:, c], np.clip(p[:, c], eps, 1 - eps), labels=[0, 1]) for c in range(6)]
    return float(np.dot(w, per_class) / w.sum()), np.array(per_class)


def test_weighted_log_loss_equals_sklearn():
    y, p = _data()
    expected, per_class = _sklearn_weighted(y, p, METRIC_EPS)
    assert weighted_log_loss(y, p) == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(per_class_log_loss(y, p), per_class, rtol=1e-10)
    # The mean over images of the per-image weighted loss is the same number.
    assert per_image_log_loss(y, p).mean() == pytest.approx(expected, rel=1e-10)


def test_any_counts_twice():
    y, p = _data(n=50, seed=1)
    worse_any = p.copy()
    worse_any[:, 5] = 1 - worse_any[:, 5]
    worse_sub = p.copy()
    worse_sub[:, 4] = 1 - worse_sub[:, 4]
    d_any = weighted_log_loss(y, worse_any) - weighted_log_loss(y, p)
    d_sub = weighted_log_loss(y, worse_sub) - weighted_log_loss(y, p)
    per_class_change = per_class_log_loss(y, worse_any)[5] - per_class_log_loss(y, p)[5]
    assert d_any == pytest.approx(2 / 7 * per_class_change, rel=1e-10)
    assert d_sub == pytest.approx(1 / 7 * (per_class_log_loss(y, worse_sub)[4] - per_class_log_loss(y, p)[4]), rel=1e-10)


@pytest.mark.parametrize("eps", [1e-2, 1e-3, 1e-7])
def test_clipping(eps):
    y, p = _data(n=40, seed=2)
    p[:5] = 1 - y[:5]  # confidently wrong: 0 where the truth is 1 and vice versa
    p[5:10] = y[5:10]  # confidently right
    expected, _ = _sklearn_weighted(y, p, eps)
    got = weighted_log_loss(y, p, eps=eps)
    assert np.isfinite(got) and got == pytest.approx(expected, rel=1e-9)
    # Totally wrong everywhere costs exactly -log(eps) per image.
    assert weighted_log_loss(y, 1 - y, eps=eps) == pytest.approx(-np.log(eps), rel=1e-9)
    # Totally right costs -log(1 - eps).
    assert weighted_log_loss(y, y, eps=eps) == pytest.approx(-np.log1p(-eps), rel=1e-6)


def test_soft_labels_match_sklearn_with_sample_weights():
    """A soft label t is a positive with weight t plus a negative with weight 1 - t."""
    rng = np.random.default_rng(3)
    y = rng.random((60, 6))
    p = rng.random((60, 6))
    per_class = []
    for c in range(6):
        labels = np.r_[np.ones(60), np.zeros(60)]
        probs = np.r_[p[:, c], p[:, c]]
        sw = np.r_[y[:, c], 1 - y[:, c]]
        per_class.append(log_loss(labels, probs, sample_weight=sw) * sw.sum() / 60)
    w = np.asarray(CLASS_WEIGHTS)
    assert weighted_log_loss(y, p) == pytest.approx(np.dot(w, per_class) / w.sum(), rel=1e-9)


def test_auc_equals_sklearn_and_nan_for_one_label_value():
    y, p = _data(n=200, seed=4)
    y[:, 0] = 0  # no epidural at all
    auc = per_class_auc(y, p)
    assert np.isnan(auc[0])
    for c in range(1, 6):
        assert auc[c] == pytest.approx(roc_auc_score(y[:, c], p[:, c]), rel=1e-12)


def test_prior_baseline_formula():
    y, _ = _data(n=500, seed=5)
    y[:, 0] = 0  # prevalence 0 is clipped, not log(0)
    prev = y.mean(axis=0)
    q = np.clip(prev, METRIC_EPS, 1 - METRIC_EPS)
    entropy = -(prev * np.log(q) + (1 - prev) * np.log(1 - q))
    w = np.asarray(CLASS_WEIGHTS)
    assert prior_baseline(y) == pytest.approx(np.dot(w, entropy) / w.sum(), rel=1e-10)


def test_evaluate_predictions_and_registered_metric():
    y, p = _data(seed=6)
    result = evaluate_predictions(y, p, eps=1e-4)
    expected, per_class = _sklearn_weighted(y, p, 1e-4)
    assert result["weighted_logloss"] == pytest.approx(expected, rel=1e-10)
    assert result["ratio"] == pytest.approx(expected / prior_baseline(y, eps=1e-4), rel=1e-10)
    assert result["n_images"] == len(y)
    for c, label in enumerate(LABELS):
        assert result[f"logloss_{label}"] == pytest.approx(per_class[c], rel=1e-10)
        assert result[f"auc_{label}"] == pytest.approx(roc_auc_score(y[:, c], p[:, c]), rel=1e-12)
    metric = build({"type": "WeightedLogLoss", "eps": 1e-4})
    assert isinstance(metric, WeightedLogLoss)
    assert metric(y, p) == result
    assert metric.key == "weighted_logloss" and not metric.higher_is_better


@pytest.mark.parametrize(
    "y_shape,p_shape,bad,match",
    [
        ((5, 6), (5, 5), None, "same shape"),
        ((0, 6), (0, 6), None, "zero images"),
        ((5, 6), (5, 6), 1.5, r"\[0, 1\]"),
        ((5, 6), (5, 6), np.nan, "NaN"),
    ],
)
def test_bad_inputs(y_shape, p_shape, bad, match):
    y, p = np.zeros(y_shape), np.full(p_shape, 0.5)
    if bad is not None:
        p[0, 0] = bad
    with pytest.raises(ValueError, match=match):
        weighted_log_loss(y, p)


def test_bad_eps():
    with pytest.raises(ValueError, match="eps"):
        weighted_log_loss(np.zeros((2, 6)), np.zeros((2, 6)), eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        WeightedLogLoss(eps=0.7)
