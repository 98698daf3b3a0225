"""Per-class temperature scaling, fitted on the validation split after training.

``python -m medseg.outputs.calibrate --pred VAL_PRED.csv --truth VAL_TRUTH.csv --out CKPT_DIR/calibration.json``
or, letting it predict the validation split itself (calibration off):
``python -m medseg.outputs.calibrate --config x.yml --resume_model CKPT_DIR [-o key=value]``.

Why: a model that met one scanner is over-confident on another (issue 13); dividing each class's
logit by a temperature T fitted on held-out slices (Guo et al. 2017) fixes the confidence without
changing the ranking (AUC). ``calibration.json`` lives beside the checkpoint (and is copied into
an export); :func:`apply_calibration` is the one hook that ``infer.py``, ``medseg.predict`` and
exported models use, and it does nothing when no file is there. Truth can be the Kaggle
``ID,Label`` file or the prepared dataset's ``<split>_meta.csv`` labels (``--dataset_root``).

With test-time augmentation (:mod:`medseg.engine.tta`: ``--tta`` or the config's
``test_time_augmentation``) the temperatures are fitted on the view-averaged output, which is
less confident than one view's, so the file records the views (``test_time_augmentation``) and
:func:`load_calibration` refuses a run with other views.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

from medseg.constants import CLASS_WEIGHTS, LABELS
from medseg.utils.atomic import atomic_write_json
from medseg.utils.cli import ArgumentParser, run_cli
from medseg.utils.logger import get_logger

logger = get_logger("outputs.calibrate")

CALIBRATION_FILE = "calibration.json"
# Probabilities are clipped before the logit: a CSV's 0 or 1 would make it infinite.
_CLIP = 1e-7
_LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))
ECE_BINS = 15


@dataclass(frozen=True)
class Calibration:
    temperature: tuple[float, ...]   # one per label, LABELS order; p' = sigmoid(logit(p) / T)
    labels: tuple[str, ...] = LABELS
    method: str = "temperature"
    n_slices: int = 0
    fitted_on: str = ""
    before: dict | None = None       # validation metrics before / after (log loss, ECE)
    after: dict | None = None
    test_time_augmentation: dict | None = None  # {views, average} fitted on (medseg.engine.tta); None: no TTA


def _logits(probs: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(probs, dtype=np.float64), _CLIP, 1.0 - _CLIP))


def _bce(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, _CLIP, 1.0 - _CLIP)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Equal-width bins: sum over bins of (share of slices) × |mean prediction − observed rate|."""
    y, p = np.asarray(y, dtype=np.float64).ravel(), np.asarray(p, dtype=np.float64).ravel()
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, p, n_bins) - np.bincount(bins, y, n_bins))
    return float(gap.sum() / max(len(p), 1)) if count.any() else 0.0


def calibration_metrics(y: np.ndarray, p: np.ndarray) -> dict:
    """Per-class ECE and log loss, and their metric-weighted means (weight 2 for ``any``)."""
    w = np.asarray(CLASS_WEIGHTS) / np.sum(CLASS_WEIGHTS)
    ece = [expected_calibration_error(y[:, c], p[:, c]) for c in range(len(LABELS))]
    loss = [_bce(y[:, c], p[:, c]) for c in range(len(LABELS))]
    return {"ece": float(np.dot(w, ece)), "logloss": float(np.dot(w, loss)),
            **{f"ece_{l}": e for l, e in zip(LABELS, ece)}}


def fit_temperatures(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The T per class minimising the log loss of ``sigmoid(logit(p) / T)`` (bounded 1-D search in log T).

    A class without positives or without negatives keeps T = 1 (nothing to calibrate against).
    """
    z, y = _logits(probs), np.asarray(labels, dtype=np.float64)
    temps = np.ones(z.shape[1])
    for c in range(z.shape[1]):
        if y[:, c].min() == y[:, c].max():
            continue
        res = minimize_scalar(lambda t: _bce(y[:, c], expit(z[:, c] / np.exp(t))), bounds=_LOG_T_BOUNDS,
                              method="bounded", options={"xatol": 1e-4})
        temps[c] = float(np.exp(res.x))
    return temps


def fit_calibration(probs: np.ndarray, labels: np.ndarray, fitted_on: str = "", tta=None) -> Calibration:
    """``tta``: the :class:`medseg.engine.tta.TTA` that produced ``probs`` (recorded; ``None``: none)."""
    temps = fit_temperatures(probs, labels)
    cal = Calibration(temperature=tuple(float(t) for t in temps), n_slices=int(len(probs)), fitted_on=fitted_on,
                      test_time_augmentation=tta.record() if tta is not None else None)
    return Calibration(**{**asdict(cal), "before": calibration_metrics(labels, probs),
                          "after": calibration_metrics(labels, apply_calibration(probs, cal))})


def temperature_scale(probs: np.ndarray, temperature) -> np.ndarray:
    """``sigmoid(logit(p) / T)`` in float64; ``T`` a scalar or one per class (last axis).
    Also the pseudo-label rules' sharpening (T < 1), so both clip alike."""
    return expit(_logits(probs) / np.asarray(temperature, dtype=np.float64))


def apply_calibration(probs: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """``sigmoid(logit(p) / T)`` per class on ``[..., 6]`` probabilities; unchanged when ``None``."""
    if calibration is None:
        return probs
    return temperature_scale(probs, calibration.temperature).astype(np.asarray(probs).dtype, copy=False)


def remove_calibration(probs: np.ndarray, calibration: Calibration) -> np.ndarray:
    """The inverse: the model's own probabilities from calibrated ones (the report's "before")."""
    return expit(_logits(probs) * np.asarray(calibration.temperature, dtype=np.float64))


def calibration_path(model_path: str) -> str:
    """``calibration.json`` beside a checkpoint (folder or weights file) or inside an export folder."""
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    return os.path.join(folder, CALIBRATION_FILE)


def read_calibration(path: str) -> Calibration:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        cal = Calibration(**{**data, "temperature": tuple(data["temperature"]), "labels": tuple(data["labels"])})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable calibration file ({exc})") from None
    if cal.labels != LABELS or len(cal.temperature) != len(LABELS) or min(cal.temperature) <= 0:
        raise ValueError(f"{path}: needs one positive temperature per label {list(LABELS)}, got "
                         f"{list(cal.labels)} / {list(cal.temperature)}")
    tta = cal.test_time_augmentation
    if tta is not None and (not isinstance(tta, dict) or set(tta) != {"views", "average"}):
        raise ValueError(f"{path}: test_time_augmentation must be null or {{views, average}}, got {tta!r}")
    return cal


def describe_tta(record: dict | None) -> str:
    """A recorded test-time augmentation in words (``none`` for none)."""
    return "none" if not record else f"{'+'.join(record['views'])} (average of {record['average']})"


def check_tta(cal: Calibration, tta, where: str) -> None:
    """Refuse applying ``cal`` to outputs of other test-time views than it was fitted on."""
    used = tta.record() if tta is not None else None
    if cal.test_time_augmentation != used:
        raise ValueError(f"{where}: calibration fitted with test-time views {describe_tta(cal.test_time_augmentation)}, "
                         f"not {describe_tta(used)}; use the same --tta, --no_calibration, or refit it")


def load_calibration(model_path: str, tta=None) -> Calibration | None:
    """The calibration stored with a model, or ``None`` (calibration off) when there is none.
    ``tta``: the run's :class:`medseg.engine.tta.TTA` (``None``: none); a file fitted with other
    views is refused (:func:`check_tta`)."""
    path = calibration_path(model_path)
    if not os.path.isfile(path):
        return None
    cal = read_calibration(path)
    check_tta(cal, tta, path)
    logger.info("calibration %s: temperatures %s", path, ", ".join(f"{l} {t:.3g}" for l, t in zip(LABELS, cal.temperature)))
    return cal


def write_calibration(cal: Calibration, path: str) -> None:
    atomic_write_json(path, {**asdict(cal), "temperature": list(cal.temperature), "labels": list(cal.labels)})


# --------------------------------------------------------------------------- CLI


def _aligned(pred_path: str, truth_path: str) -> tuple[np.ndarray, np.ndarray]:
    from medseg.outputs.predictions import read_table
    from medseg.outputs.report import align

    pred, _ = read_table(pred_path)
    truth, _ = read_table(truth_path)
    frame = align(pred, truth, pred_path, truth_path)
    return frame[[f"p_{l}" for l in LABELS]].to_numpy(), frame[[f"t_{l}" for l in LABELS]].to_numpy()


def _predict_val(config: str, overrides: list[str], resume_model: str, split: str,
                 out_csv: str, views=None):
    """Uncalibrated predictions of ``split`` (rows of the written CSV), its labels and the TTA
    used (``views`` over the config's ``test_time_augmentation``)."""
    from medseg.config import Config
    from medseg.engine.infer_split import infer_split
    from medseg.engine.tta import resolve_tta
    from medseg.utils.logger import setup_logger

    setup_logger()
    cfg = Config(config, overrides)
    tta = resolve_tta(cfg, views)
    frame, _ = infer_split(cfg, resume_model, split, out_csv, calibrate=False, tta=tta)
    if "labels" not in frame.attrs:
        raise ValueError(f"split {split!r} has no labels: cannot calibrate on it")
    return frame[list(LABELS)].to_numpy(), frame.attrs["labels"], tta


def _pred_tta(pred_path: str, views):
    """The TTA behind a predictions CSV: what infer.py recorded in ``<stem>_metrics.json``, else
    ``--tta`` (average: probabilities); a ``--tta`` that contradicts the record is refused."""
    from medseg.engine.tta import TTA

    recorded = None
    metrics = f"{os.path.splitext(pred_path)[0]}_metrics.json"
    if os.path.isfile(metrics):
        with open(metrics, encoding="utf-8") as fh:
            recorded = json.load(fh).get("test_time_augmentation")
    if recorded is not None:
        tta = TTA(tuple(recorded["views"]), recorded["average"])
        if views is not None and tuple(views) != tta.views:
            raise ValueError(f"{metrics}: {pred_path} was predicted with test-time views {describe_tta(recorded)}, "
                             f"not --tta {','.join(views)}")
        return tta
    return TTA(tuple(views)) if views is not None else None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m medseg.outputs.calibrate", description=__doc__.split("\n")[0])
    p.add_argument("--pred", help="uncalibrated validation predictions CSV (infer.py --no_calibration)")
    p.add_argument("--truth", help="their truth (Kaggle ID,Label or a predictions-style table of 0/1)")
    p.add_argument("--config", help="instead of --pred/--truth: predict --split with this config ...")
    p.add_argument("--resume_model", help="... and this checkpoint (calibration.json is written beside it)")
    p.add_argument("-o", "--opts", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--split", default="val", help="split to fit on with --config (default val)")
    p.add_argument("--out", help=f"calibration file (default: <resume_model dir>/{CALIBRATION_FILE})")
    from medseg.engine.tta import add_tta_argument

    add_tta_argument(p)
    args = p.parse_args(argv)
    if bool(args.pred) == bool(args.config) or bool(args.pred) != bool(args.truth) or bool(args.config) != bool(args.resume_model):
        p.error("give either --pred and --truth, or --config and --resume_model")
    if not args.out and not args.resume_model:
        p.error("--out is required with --pred")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or calibration_path(args.resume_model)

    def job() -> None:
        if args.pred:
            tta = _pred_tta(args.pred, args.tta)
            probs, labels = _aligned(args.pred, args.truth)
            source = args.pred
        else:
            csv = os.path.join(os.path.dirname(out) or ".", f"predictions_{args.split}_uncalibrated.csv")
            probs, labels, tta = _predict_val(args.config, args.overrides, args.resume_model, args.split, csv, args.tta)
            source = csv
        cal = fit_calibration(probs, labels, fitted_on=os.path.abspath(source), tta=tta)
        write_calibration(cal, out)
        print(f"calibration: {out}")
        print("temperature " + " ".join(f"{l}={t:.4f}" for l, t in zip(LABELS, cal.temperature))
              + f" (test-time views: {describe_tta(cal.test_time_augmentation)})")
        print(f"val ece before={cal.before['ece']:.5f} after={cal.after['ece']:.5f} "
              f"logloss before={cal.before['logloss']:.6f} after={cal.after['logloss']:.6f}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
