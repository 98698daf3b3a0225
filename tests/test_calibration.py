"""Per-class temperature scaling: the fit, the file beside the checkpoint, and every place that applies it."""

from __future__ import annotations

import json
import os

import numpy as np
import paddle
import pandas as pd
import pytest

from engine_fixtures import make_prepared, write_config
from medseg.config import Config
from medseg.constants import LABELS
from medseg.engine.infer_split import infer_split
from medseg.outputs.calibrate import (CALIBRATION_FILE, Calibration, apply_calibration, calibration_metrics,
                                      expected_calibration_error, fit_temperatures, load_calibration, main as calibrate_main,
                                      read_calibration, remove_calibration, write_calibration)
from medseg.outputs.report import main as report_main
from medseg.utils.atomic import atomic_write_csv


def overconfident(n: int = 4000, factor: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z); predictions sigmoid(factor * z): over-confident by ``factor``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.5, 1.5, size=(n, len(LABELS)))
    y = (rng.uniform(size=z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    return 1 / (1 + np.exp(-factor * z)), y


def kaggle_truth(path: str, ids: list[str], y: np.ndarray) -> None:
    rows = [(f"{sid}_{name}", int(v)) for sid, row in zip(ids, y) for name, v in zip(LABELS, row)]
    atomic_write_csv(path, pd.DataFrame(rows, columns=["ID", "Label"]))


def test_fit_recovers_the_over_confidence_and_lowers_ece_and_loss():
    p, y = overconfident()
    temps = fit_temperatures(p, y)
    assert np.allclose(temps, 3.0, rtol=0.15)
    cal = Calibration(temperature=tuple(temps))
    after = apply_calibration(p, cal)
    before_m, after_m = calibration_metrics(y, p), calibration_metrics(y, after)
    assert after_m["ece"] < 0.5 * before_m["ece"] and after_m["logloss"] < before_m["logloss"]
    assert np.allclose(remove_calibration(after, cal), p, atol=1e-6)
    assert apply_calibration(p, None) is p
    # ranking unchanged; a class with no positives keeps T = 1
    assert np.all(np.diff(after[np.argsort(p[:, 0]), 0]) >= 0)
    y[:, 0] = 0
    assert fit_temperatures(p, y)[0] == 1.0


def test_expected_calibration_error():
    assert expected_calibration_error(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.0
    assert expected_calibration_error(np.array([0, 0]), np.array([0.9, 0.9])) == pytest.approx(0.9)


def test_cli_from_prediction_csv_and_the_report_before_after(tmp_path, capsys):
    p, y = overconfident(n=1500, seed=1)
    ids = [f"ID_{k:09x}" for k in range(len(p))]
    pred = pd.DataFrame(p, columns=list(LABELS))
    pred.insert(0, "series_id", [f"S{k // 30}" for k in range(len(p))])
    pred.insert(0, "slice_id", ids)
    atomic_write_csv(str(tmp_path / "val.csv"), pred)
    kaggle_truth(str(tmp_path / "truth.csv"), ids, y)
    out = str(tmp_path / "ckpt" / CALIBRATION_FILE)
    os.makedirs(os.path.dirname(out))
    assert calibrate_main(["--pred", str(tmp_path / "val.csv"), "--truth", str(tmp_path / "truth.csv"), "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "val ece before=" in printed
    cal = read_calibration(out)
    assert np.allclose(cal.temperature, 3.0, rtol=0.2) and cal.after["ece"] < cal.before["ece"]
    assert load_calibration(str(tmp_path / "ckpt")) == cal
    assert load_calibration(str(tmp_path / "ckpt" / "model.pdparams")) == cal, "beside a weights file too"
    assert load_calibration(str(tmp_path)) is None

    calibrated = pred.copy()
    calibrated[list(LABELS)] = apply_calibration(p, cal)
    atomic_write_csv(str(tmp_path / "test.csv"), calibrated)
    assert report_main(["--pred", str(tmp_path / "test.csv"), "--truth", str(tmp_path / "truth.csv"),
                        "--out", str(tmp_path / "report"), "--calibration", out]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("ece before=")]
    before, after = (float(v.split("=")[1]) for v in line[0].split()[1:3])
    assert after < 0.5 * before
    with open(tmp_path / "report" / "metrics.json") as fh:
        metrics = json.load(fh)
    assert metrics["calibration"]["before"]["ece"] == pytest.approx(before, abs=1e-5)
    assert "Calibration" in (tmp_path / "report" / "index.html").read_text()


def test_bad_calibration_file_is_named(tmp_path):
    path = tmp_path / CALIBRATION_FILE
    path.write_text(json.dumps({"temperature": [1, 2], "labels": ["any"]}))
    with pytest.raises(ValueError, match=str(path)):
        load_calibration(str(tmp_path))
    with pytest.raises(SystemExit):
        calibrate_main(["--pred", "x.csv"])


def test_infer_fits_on_val_and_applies_it(tmp_path):
    root = make_prepared(str(tmp_path / "prepared"))
    config = write_config(str(tmp_path / "tiny.yml"), root)
    ckpt = tmp_path / "best_model"
    ckpt.mkdir()
    paddle.seed(0)
    paddle.save(Config(config).build("model").state_dict(), str(ckpt / "model.pdparams"))
    assert calibrate_main(["--config", config, "--resume_model", str(ckpt)]) == 0
    cal = read_calibration(str(ckpt / CALIBRATION_FILE))
    raw, _ = infer_split(Config(config), str(ckpt), "val", str(tmp_path / "raw.csv"), calibrate=False)
    used, metrics = infer_split(Config(config), str(ckpt), "val", str(tmp_path / "cal.csv"))
    assert not np.allclose(cal.temperature, 1.0)
    assert np.allclose(used[list(LABELS)].to_numpy(), apply_calibration(raw[list(LABELS)].to_numpy(), cal), atol=1e-6)
    assert metrics["weighted_logloss"] == pytest.approx(cal.after["logloss"], rel=1e-3), "fitted on this split"


@pytest.mark.slow
def test_predict_checkpoint_and_export_apply_it(tmp_path):
    from export import main as export_main
    from medseg.export import ExportedModel
    from medseg.predict.backend import CheckpointModel
    from tests.predict_fixtures import SIZE
    from tests.test_export import write_checkpoint
    from tests.test_export import write_config as predict_config  # a model whose output depends on the image

    config = predict_config(str(tmp_path / "tiny.yml"))
    ckpt = write_checkpoint(config, str(tmp_path / "best_model"), seed=3)
    image = np.random.default_rng(0).normal(size=(1, 4, 3, SIZE, SIZE)).astype(np.float32)
    mask = np.ones((1, 4), bool)
    uncalibrated = CheckpointModel(Config(config), ckpt)
    raw = uncalibrated(image, mask)
    assert np.abs(raw - uncalibrated(0 * image, mask)).max(axis=-1).min() > 100 * 1e-4  # 1e-4 below can fail
    cal = Calibration(temperature=(0.5, 1.0, 2.0, 3.0, 0.7, 1.5))
    write_calibration(cal, os.path.join(ckpt, CALIBRATION_FILE))
    calibrated = CheckpointModel(Config(config), ckpt)(image, mask)
    assert np.allclose(calibrated, apply_calibration(raw, cal), atol=1e-6) and not np.allclose(calibrated, raw)
    assert export_main(["--config", config, "--model", ckpt, "--save_dir", str(tmp_path / "deploy")]) == 0
    assert os.path.isfile(tmp_path / "deploy" / CALIBRATION_FILE)
    assert np.allclose(ExportedModel(str(tmp_path / "deploy"))(image, mask), calibrated, atol=1e-4)
