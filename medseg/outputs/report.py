"""Evaluation report: metrics against the truth, curves, calibration and per-series strips.

``python -m medseg.outputs.report --pred PRED.csv --truth TRUTH.csv --out REPORT_DIR
[--dataset_root ROOT] [--eps 1e-7] [--n_series 3] [--calibration CKPT_DIR/calibration.json]``

With ``--calibration`` (the file ``infer.py`` applied to PRED.csv) the report also shows the
expected calibration error and log loss before calibration (the model's own probabilities,
recovered by inverting the temperatures) and after.

Writes ``metrics.json``, PNG figures and an ``index.html`` that shows them, and prints
``weighted_logloss=<x> prior=<y> ratio=<x/y>``. The series strips need the slice order: from
``--dataset_root`` (the prepared ``*_meta.csv`` files, which also give the brain-window
thumbnails from ``cache/``), or else from the prediction file's ``series_id`` column in row order.
"""

from __future__ import annotations

import argparse
import html
import math
import os
import sys
from typing import Any, Sequence

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from medseg.constants import CLASS_WEIGHTS, LABELS
from medseg.data.cache import SUFFIX as CACHE_SUFFIX, CacheFormatError, SeriesCache
from medseg.data.meta import CROP_COLUMNS, meta_files, read_meta_file
from medseg.engine.metrics import METRIC_EPS, evaluate_predictions, per_class_log_loss, per_image_log_loss, prevalence
from medseg.outputs.calibrate import ECE_BINS, calibration_metrics, read_calibration, remove_calibration
from medseg.outputs.predictions import TableError, format_examples, read_table
from medseg.utils.atomic import atomic_open, atomic_write_json, atomic_write_text
from medseg.utils.cli import ArgumentParser, run_cli
from medseg.utils.logger import get_logger

logger = get_logger("outputs.report")

THUMB_PX = 48  # thumbnail edge in the strips: enough to see a bleed, small enough for 60 slices
_LAYOUT_COLUMNS = ("slice_id", "series_id", "slice_idx")


# --------------------------------------------------------------------------- inputs


def align(pred: pd.DataFrame, truth: pd.DataFrame, pred_path: str, truth_path: str) -> pd.DataFrame:
    """Predictions for exactly the truth's slices (truth order); a slice without a prediction is an error.

    Columns: ``slice_id``, ``series_id`` (if the predictions have it), ``p_<label>``, ``t_<label>``.
    """
    pred_ids = set(pred["slice_id"])
    missing = [s for s in truth["slice_id"] if s not in pred_ids]
    if missing:
        raise TableError(f"{pred_path}: {len(missing)} slice(s) of {truth_path} have no prediction, e.g. {format_examples(missing)}")
    extra = len(pred_ids) - len(truth)
    if extra:
        logger.warning("%s: %d predicted slice(s) are not in %s; they are left out of the report", pred_path, extra, truth_path)
    p = pred.set_index("slice_id").reindex(truth["slice_id"])
    out = pd.DataFrame({"slice_id": truth["slice_id"].to_numpy()})
    if "series_id" in p.columns:
        out["series_id"] = p["series_id"].to_numpy()
    for label in LABELS:
        out[f"p_{label}"] = p[label].to_numpy(np.float64)
        out[f"t_{label}"] = truth[label].to_numpy(np.float64)
    return out


def read_layout(dataset_root: str, slice_ids: Sequence[str]) -> pd.DataFrame:
    """Series, slice index, cache file and crop box of ``slice_ids`` from the prepared ``*_meta.csv``."""
    paths = meta_files(dataset_root)
    if not paths:
        raise TableError(f"{dataset_root}: no *_meta.csv files (is this a prepared dataset root?)")
    frames = []
    for path in paths:
        frames.append(read_meta_file(path, required=(*_LAYOUT_COLUMNS, "cache"),
                                     columns=(*_LAYOUT_COLUMNS, "cache", *CROP_COLUMNS), purpose="needed for the report"))
    # A slice can appear in two meta files (e.g. test and test_pseudo); its layout is the same.
    layout = pd.concat(frames, ignore_index=True).drop_duplicates("slice_id").set_index("slice_id")
    missing = [s for s in slice_ids if s not in layout.index]
    if missing:
        raise TableError(f"{dataset_root}: {len(missing)} slice(s) are in no *_meta.csv, e.g. {format_examples(missing)}")
    return layout.loc[list(slice_ids)].reset_index()


def series_order(frame: pd.DataFrame, dataset_root: str | None) -> tuple[pd.DataFrame | None, str]:
    """Add ``series_id``/``slice_idx`` (and cache columns with a dataset root); say where the order came from."""
    if dataset_root:
        layout = read_layout(dataset_root, frame["slice_id"].tolist())
        merged = frame.drop(columns=["series_id"], errors="ignore").merge(layout, on="slice_id", how="left")
        return merged, f"slice order and thumbnails from {dataset_root}"
    if "series_id" in frame.columns:
        frame = frame.copy()
        frame["slice_idx"] = frame.groupby("series_id", sort=False).cumcount()
        return frame, "no --dataset_root: series from the prediction file's series_id, slice order = row order, no thumbnails"
    return None, "no --dataset_root and no series_id column in the predictions: per-series strips skipped"


def series_scores(frame: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Mean per-slice weighted log loss of each series, worst first."""
    y = frame[[f"t_{l}" for l in LABELS]].to_numpy()
    p = frame[[f"p_{l}" for l in LABELS]].to_numpy()
    scored = pd.DataFrame({"series_id": frame["series_id"].to_numpy(), "loss": per_image_log_loss(y, p, eps)})
    table = scored.groupby("series_id", sort=False)["loss"].agg(["mean", "size"]).rename(columns={"mean": "logloss", "size": "n_slices"})
    return table.sort_values("logloss", ascending=False, kind="stable").reset_index()


# --------------------------------------------------------------------------- figures


def _save(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: no pyplot, no global backend switch
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100, bbox_inches="tight")


def plot_roc_pr(y: np.ndarray, p: np.ndarray, metrics: dict, out_dir: str) -> list[tuple[str, str]]:
    """ROC and precision-recall curves of every class that has both label values."""
    roc_fig, pr_fig = Figure(figsize=(6, 5)), Figure(figsize=(6, 5))
    roc_ax, pr_ax = roc_fig.add_subplot(), pr_fig.add_subplot()
    for c, label in enumerate(LABELS):
        truth = y[:, c] >= 0.5
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, p[:, c])
        roc_ax.plot(fpr, tpr, label=f"{label} (AUC {metrics[f'auc_{label}']:.3f})")
        precision, recall, _ = precision_recall_curve(truth, p[:, c])
        pr_ax.plot(recall, precision, label=f"{label} (AP {average_precision_score(truth, p[:, c]):.3f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "lower left")
    _save(roc_fig, os.path.join(out_dir, "roc.png"))
    _save(pr_fig, os.path.join(out_dir, "pr.png"))
    return [("roc.png", "ROC curves per class"), ("pr.png", "Precision-recall curves per class")]


def plot_calibration(y: np.ndarray, p: np.ndarray, out_dir: str, n_bins: int = 10) -> list[tuple[str, str]]:
    """Reliability diagram: observed frequency against mean predicted probability, per class."""
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    for c, label in enumerate(LABELS):
        truth = y[:, c] >= 0.5
        if truth.all() or not truth.any():
            continue
        frac_pos, mean_pred = calibration_curve(truth, p[:, c], n_bins=n_bins, strategy="uniform")
        ax.plot(mean_pred, frac_pos, marker="o", markersize=3, label=label)
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", title=f"Reliability ({n_bins} bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, os.path.join(out_dir, "calibration.png"))
    return [("calibration.png", "Reliability (calibration) per class")]


def plot_logloss(metrics: dict, prior_per_class: np.ndarray, out_dir: str) -> list[tuple[str, str]]:
    """Per-class and weighted log loss of the model next to the prevalence-only prior."""
    names = [*LABELS, "weighted"]
    model = [metrics[f"logloss_{l}"] for l in LABELS] + [metrics["weighted_logloss"]]
    prior = list(prior_per_class) + [metrics["prior_logloss"]]
    x = np.arange(len(names))
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, model, width=0.4, label="model")
    ax.bar(x + 0.2, prior, width=0.4, label="prior (prevalence)", color="lightgrey")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel="log loss", title="Log loss: model vs prior")
    ax.legend(fontsize=8)
    _save(fig, os.path.join(out_dir, "logloss.png"))
    return [("logloss.png", "Log loss per class, model vs prevalence prior")]


def _thumbnails(rows: pd.DataFrame, dataset_root: str) -> np.ndarray:
    """Brain-window (channel 0) thumbnails side by side, one ``THUMB_PX`` tile per slice index.

    Tile ``k`` shows slice ``slice_idx[0] + k``, so tiles stay above their slice even when the
    truth covers only part of a series (missing slices stay black).
    """
    first, last = int(rows["slice_idx"].iloc[0]), int(rows["slice_idx"].iloc[-1])
    strip = np.zeros((THUMB_PX, (last - first + 1) * THUMB_PX), dtype=np.uint8)
    caches: dict[str, Any] = {}
    crop_cols = ("crop_y0", "crop_y1", "crop_x0", "crop_x1")
    for row in rows.itertuples(index=False):
        path = os.path.join(dataset_root, row.cache)
        if path not in caches:
            if not os.path.isfile(path):
                raise TableError(f"{path}: cache file of series {row.series_id} not found")
            try:
                caches[path] = SeriesCache(path) if path.endswith(CACHE_SUFFIX) else np.load(path, mmap_mode="r")
            except CacheFormatError as err:
                raise TableError(str(err)) from err
        volume = caches[path]
        if isinstance(volume, SeriesCache):  # the compressed cache holds the head crops already
            if not 0 <= row.slice_idx < len(volume):
                raise TableError(f"{path}: {len(volume)} slices, no slice {row.slice_idx}")
            image = volume.read(int(row.slice_idx))[..., 0]
        elif volume.ndim != 4 or not 0 <= row.slice_idx < volume.shape[0]:
            raise TableError(f"{path}: shape {volume.shape} has no slice {row.slice_idx} (expected uint8 [S, H, W, C])")
        else:
            image = np.asarray(volume[row.slice_idx, :, :, 0])
        box = [getattr(row, k, None) for k in crop_cols]
        if not isinstance(volume, SeriesCache) and all(v is not None and pd.notna(v) for v in box):
            y0, y1, x0, x1 = (int(v) for v in box)
            if y1 > y0 and x1 > x0:
                image = image[y0:y1, x0:x1]
        k = int(row.slice_idx) - first
        strip[:, k * THUMB_PX:(k + 1) * THUMB_PX] = cv2.resize(image, (THUMB_PX, THUMB_PX), interpolation=cv2.INTER_AREA)
    return strip


def plot_series_strip(rows: pd.DataFrame, title: str, path: str, dataset_root: str | None) -> None:
    """Probability per subtype along the slice axis, truth shaded under it, thumbnails on top."""
    rows = rows.sort_values("slice_idx", kind="stable")
    idx = rows["slice_idx"].to_numpy()
    thumbs = _thumbnails(rows, dataset_root) if dataset_root else None
    n_axes = len(LABELS) + (thumbs is not None)
    fig = Figure(figsize=(min(16.0, max(6.0, 0.3 * len(rows))), 1.0 * n_axes + 0.6))
    axes = fig.subplots(n_axes, 1, sharex=True, gridspec_kw={"hspace": 0.15})
    if thumbs is not None:
        axes[0].imshow(thumbs, cmap="gray", vmin=0, vmax=255, aspect="auto", extent=(idx[0] - 0.5, idx[-1] + 0.5, 0, 1))
        axes[0].set_yticks([])
        axes[0].set_ylabel("brain", rotation=0, ha="right", va="center", fontsize=8)
    for ax, label in zip(axes[n_axes - len(LABELS):], LABELS):
        ax.fill_between(idx, 0, rows[f"t_{label}"], step="mid", color="tab:red", alpha=0.3, linewidth=0, label="truth")
        ax.plot(idx, rows[f"p_{label}"], color="tab:blue", marker=".", markersize=3, linewidth=1, label="predicted")
        ax.set_ylim(-0.03, 1.03)
        ax.set_yticks([0, 1])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    axes[-1].set_xlabel("slice index (head → foot)")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    axes[0].set_title(title, fontsize=9)
    _save(fig, path)


def plot_strips(frame: pd.DataFrame, scores: pd.DataFrame, out_dir: str, dataset_root: str | None, n_series: int) -> list[tuple[str, str]]:
    """Strips of the ``n_series`` worst and then best series (no series shown twice)."""
    n_worst = min(n_series, len(scores))
    n_best = min(n_series, len(scores) - n_worst)
    chosen = [("worst", i, scores.iloc[i]) for i in range(n_worst)]
    chosen += [("best", i, scores.iloc[len(scores) - 1 - i]) for i in range(n_best)]
    items = []
    groups = frame.groupby("series_id", sort=False)
    for kind, rank, entry in chosen:
        name = f"series_{kind}_{rank + 1}.png"
        title = f"{kind} #{rank + 1}: {entry.series_id}, weighted log loss {entry.logloss:.4f}, {entry.n_slices} slices"
        plot_series_strip(groups.get_group(entry.series_id), title, os.path.join(out_dir, name), dataset_root)
        items.append((name, title))
    return items


# --------------------------------------------------------------------------- outputs


def _json_safe(value):
    """NaN/inf → null (JSON has no NaN); numpy scalars → Python numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _calibration_table(calibration: dict | None) -> str:
    if not calibration:
        return ""
    rows = "".join(f"<tr><td>{label}</td><td>{_fmt(calibration['before'][key])}</td><td>{_fmt(calibration['after'][key])}</td></tr>"
                   for label, key in [("ECE (weighted)", "ece"), ("log loss (weighted)", "logloss")]
                   + [(f"ECE {l}", f"ece_{l}") for l in LABELS])
    temps = ", ".join(f"{l} {t:.3g}" for l, t in zip(LABELS, calibration["temperature"]))
    return (f"<h2>Calibration</h2><p>per-class temperatures ({html.escape(temps)}) from "
            f"{html.escape(calibration['file'])}</p><table><tr><th></th><th>before</th><th>after</th></tr>{rows}</table>")


def write_html(path: str, metrics: dict, prior_per_class: np.ndarray, figures: list[tuple[str, str]], notes: list[str],
               calibration: dict | None = None) -> None:
    """A single self-explaining page: headline, per-class table, notes, then every figure."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(l)}</td><td>{_fmt(metrics[f'prevalence_{l}'])}</td><td>{_fmt(metrics[f'logloss_{l}'])}</td>"
        f"<td>{_fmt(prior)}</td><td>{_fmt(metrics[f'auc_{l}'])}</td><td>{w:g}</td></tr>"
        for l, prior, w in zip(LABELS, prior_per_class, CLASS_WEIGHTS)
    )
    images = "".join(f'<figure><img src="{esc(src)}" alt="{esc(cap)}"><figcaption>{esc(cap)}</figcaption></figure>' for src, cap in figures)
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ICH evaluation report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
figure{{display:inline-block;margin:1em;vertical-align:top}}img{{max-width:100%}}</style></head><body>
<h1>ICH evaluation report</h1>
<p><b>weighted log loss {_fmt(metrics['weighted_logloss'])}</b> vs prior (prevalence only) {_fmt(metrics['prior_logloss'])},
ratio {_fmt(metrics['ratio'])}; mean AUC {_fmt(metrics['mean_auc'])}; {metrics['n_images']} images; eps {metrics['eps']:g}.</p>
<table><tr><th>class</th><th>prevalence</th><th>log loss</th><th>prior log loss</th><th>ROC AUC</th><th>weight</th></tr>{rows}</table>
<p>expected calibration error (weighted, {ECE_BINS} bins): {_fmt(metrics.get('ece', float('nan')))}</p>
{_calibration_table(calibration)}
<ul>{''.join(f'<li>{esc(n)}</li>' for n in notes)}</ul>
{images}
</body></html>
"""
    atomic_write_text(path, text)


def make_report(pred_path: str, truth_path: str, out_dir: str, dataset_root: str | None = None, eps: float = METRIC_EPS,
                n_series: int = 3, calibration_file: str | None = None) -> dict:
    """Build the whole report in ``out_dir``; returns what ``metrics.json`` holds."""
    cal = read_calibration(calibration_file) if calibration_file else None
    pred, _ = read_table(pred_path)
    truth, _ = read_table(truth_path)
    frame = align(pred, truth, pred_path, truth_path)
    y = frame[[f"t_{l}" for l in LABELS]].to_numpy()
    p = frame[[f"p_{l}" for l in LABELS]].to_numpy()
    metrics = {**evaluate_predictions(y, p, eps), "ece": calibration_metrics(y, p)["ece"]}
    calibration = None
    if cal is not None:
        calibration = {"file": calibration_file, "temperature": list(cal.temperature),
                       "before": calibration_metrics(y, remove_calibration(p, cal)), "after": calibration_metrics(y, p)}
    prior_per_class = per_class_log_loss(y, np.broadcast_to(prevalence(y), y.shape), eps)
    os.makedirs(out_dir, exist_ok=True)

    figures = plot_logloss(metrics, prior_per_class, out_dir) + plot_roc_pr(y, p, metrics, out_dir) + plot_calibration(y, p, out_dir)
    ordered, order_note = series_order(frame, dataset_root)
    notes = [f"predictions: {pred_path}", f"truth: {truth_path}", order_note]
    series_summary: dict = {}
    if ordered is not None:
        scores = series_scores(ordered, eps)
        figures += plot_strips(ordered, scores, out_dir, dataset_root, n_series)
        series_summary = {"n_series": len(scores), "series_logloss": scores.to_dict(orient="records")}
    logger.info(order_note)

    result = {**metrics, **{f"prior_logloss_{l}": float(v) for l, v in zip(LABELS, prior_per_class)}, **series_summary}
    result.update(pred=pred_path, truth=truth_path, dataset_root=dataset_root, figures=[f for f, _ in figures])
    if calibration is not None:
        result["calibration"] = calibration
    atomic_write_json(os.path.join(out_dir, "metrics.json"), _json_safe(result))
    write_html(os.path.join(out_dir, "index.html"), metrics, prior_per_class, figures, notes, calibration)
    logger.info("report written to %s", os.path.join(out_dir, "index.html"))
    return result


def summary_line(metrics: dict) -> str:
    return f"weighted_logloss={metrics['weighted_logloss']:.6f} prior={metrics['prior_logloss']:.6f} ratio={metrics['ratio']:.4f}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m medseg.outputs.report", description=__doc__.split("\n")[0])
    parser.add_argument("--pred", required=True, help="predictions CSV (or a Kaggle ID,Label submission)")
    parser.add_argument("--truth", required=True, help="truth in the Kaggle label format (ID,Label), e.g. stage_2_test_truth.csv")
    parser.add_argument("--out", required=True, help="report directory (created)")
    parser.add_argument("--dataset_root", default=None, help="prepared dataset root: slice order and thumbnails for the strips")
    parser.add_argument("--eps", type=float, default=METRIC_EPS, help=f"metric clipping epsilon (default {METRIC_EPS:g})")
    parser.add_argument("--n_series", type=int, default=3, help="number of worst and of best series to draw (default 3)")
    parser.add_argument("--calibration", default=None,
                        help="the calibration.json applied to --pred: adds calibration error before/after")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        metrics = make_report(args.pred, args.truth, args.out, args.dataset_root, args.eps, args.n_series, args.calibration)
        print(f"report: {os.path.join(args.out, 'index.html')}")
        if "calibration" in metrics:
            before, after = metrics["calibration"]["before"], metrics["calibration"]["after"]
            print(f"ece before={before['ece']:.5f} after={after['ece']:.5f} "
                  f"logloss before={before['logloss']:.6f} after={after['logloss']:.6f}")
        print(summary_line(metrics))  # last: scripts and the demo end with the score line

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
