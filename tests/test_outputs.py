"""Outputs stage: predictions CSV, Kaggle tables, submission, ensemble and the evaluation report."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from medseg.constants import CLASS_WEIGHTS, DEFAULT_WINDOWS, LABELS
from medseg.data.cache import write_cache_file
from medseg.data.meta import META_COLUMNS
from medseg.outputs.ensemble import ensemble_files, normalise_weights
from medseg.outputs.predictions import (
    TableError,
    kaggle_to_wide,
    read_predictions,
    wide_to_kaggle,
    write_predictions,
)
from medseg.outputs.report import main as report_main
from medseg.outputs.submission import SubmissionError, check_ids, make_submission, write_submission
from medseg.outputs.submission import main as submission_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pred_frame(slice_ids, series_ids=None, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"slice_id": slice_ids})
    if series_ids is not None:
        df["series_id"] = series_ids
    for label in LABELS:
        df[label] = rng.random(len(slice_ids)).round(4)
    return df


def _write_kaggle_text(path, slice_ids, values):
    """Kaggle ID,Label file written by hand (independent of the code under test)."""
    lines = ["ID,Label"]
    for sid, row in zip(slice_ids, values):
        lines += [f"{sid}_{label},{float(v)!r}" for label, v in zip(LABELS, row)]
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ tables


def test_kaggle_wide_round_trip_and_row_order():
    wide = _pred_frame(["ID_aa", "ID_b_c", "ID_0d"])  # an underscore inside a slice id survives rsplit
    long = wide_to_kaggle(wide)
    assert long["ID"].tolist()[:7] == [f"ID_aa_{l}" for l in LABELS] + ["ID_b_c_epidural"]
    np.testing.assert_array_equal(long["Label"].to_numpy(), wide[list(LABELS)].to_numpy().reshape(-1))
    back = kaggle_to_wide(long.sample(frac=1.0, random_state=0).reset_index(drop=True))
    back = back.set_index("slice_id").loc[wide["slice_id"]].reset_index()
    pd.testing.assert_frame_equal(back, wide, check_dtype=False)


@pytest.mark.parametrize(
    "ids,match",
    [
        ([f"ID_a_{l}" for l in LABELS[:5]], "1 slice.*without all six"),
        ([f"ID_a_{l}" for l in LABELS] + ["ID_a_any"], "1 duplicate ID"),
        ([f"ID_a_{l}" for l in LABELS[:5]] + ["ID_a_anything"], "unknown subtype"),
        (["nounderscore"] * 1, "not of the form"),
    ],
)
def test_kaggle_to_wide_errors(ids, match):
    with pytest.raises(TableError, match=match):
        kaggle_to_wide(pd.DataFrame({"ID": ids, "Label": 0.5}), source="labels.csv")


def test_predictions_csv_validation(tmp_path):
    good = _pred_frame(["ID_1", "ID_2", "ID_3"], ["S1", "S1", "S2"])
    path = tmp_path / "pred.csv"
    write_predictions(str(path), good[["any", *good.columns[:-1]]])  # columns are put in design order
    assert path.read_text().splitlines()[0] == "slice_id,series_id," + ",".join(LABELS)
    pd.testing.assert_frame_equal(read_predictions(str(path)), good, check_dtype=False)

    cases = {
        "missing column": (good.drop(columns=["subdural"]), "missing column.*subdural"),
        "duplicate": (pd.concat([good, good.iloc[:1]]), "1 duplicate slice_id"),
        "out of range": (good.assign(any=[0.1, 1.2, 0.3]), r"\[0, 1\]"),
        "empty": (good.assign(epidural=[0.1, np.nan, 0.3]), "non-finite"),
        "text": (good.assign(epidural=["0.1", "x", "0.3"]), "non-numeric"),
    }
    for name, (frame, match) in cases.items():
        bad = tmp_path / f"{name}.csv"
        frame.to_csv(bad, index=False)
        with pytest.raises(TableError, match=match) as info:
            read_predictions(str(bad))
        assert str(info.value).startswith(str(bad)), name
    with pytest.raises(TableError, match="file not found"):
        read_predictions(str(tmp_path / "nope.csv"))


# ------------------------------------------------------------------ submission


def _sample(tmp_path, slice_ids):
    path = tmp_path / "sample.csv"
    _write_kaggle_text(path, slice_ids, [[0.5] * 6] * len(slice_ids))
    return path


def test_submission_exact_rows_order_and_clipping(tmp_path):
    pred = _pred_frame(["ID_1", "ID_2"], ["S", "S"])
    pred.loc[0, list(LABELS)] = [0.0, 1.0, 0.25, 0.5, 0.75, 0.125]
    pred_path, out = tmp_path / "pred.csv", tmp_path / "sub.csv"
    pred.to_csv(pred_path, index=False)
    sample = _sample(tmp_path, ["ID_2", "ID_1"])  # the sample's order wins
    write_submission(str(pred_path), str(sample), str(out), eps=1e-6)
    lines = out.read_text().splitlines()
    assert lines[0] == "ID,Label" and len(lines) == 1 + 12
    assert [l.split(",")[0] for l in lines[1:]] == [l.split(",")[0] for l in sample.read_text().splitlines()[1:]]
    assert lines[7:] == [
        "ID_1_epidural,1e-06",
        "ID_1_intraparenchymal,0.999999",
        "ID_1_intraventricular,0.25",
        "ID_1_subarachnoid,0.5",
        "ID_1_subdural,0.75",
        "ID_1_any,0.125",
    ]


@pytest.mark.parametrize(
    "pred_ids,sample_ids,match",
    [
        (["ID_1"], ["ID_1", "ID_2", "ID_3"], r"12 ID\(s\) of .* missing .*e\.g\. ID_2_epidural"),
        (["ID_1", "ID_2", "ID_9"], ["ID_1", "ID_2"], r"6 extra ID\(s\) .*e\.g\. ID_9_epidural"),
    ],
)
def test_submission_missing_and_extra_ids(tmp_path, pred_ids, sample_ids, match):
    pred_path, out = tmp_path / "pred.csv", tmp_path / "sub.csv"
    _pred_frame(pred_ids).to_csv(pred_path, index=False)
    out.write_text("previous submission\n")
    with pytest.raises(SubmissionError, match=match):
        write_submission(str(pred_path), str(_sample(tmp_path, sample_ids)), str(out))
    assert out.read_text() == "previous submission\n"  # nothing overwritten on error


def test_submission_duplicates(tmp_path):
    with pytest.raises(SubmissionError, match=r"2 duplicate ID\(s\) in pred.*1 duplicate ID\(s\) in sample"):
        check_ids(["a", "a", "b", "b", "c"], ["a", "b", "c", "c"], "pred", "sample")
    sample = pd.DataFrame({"ID": [f"ID_1_{l}" for l in LABELS] * 2, "Label": 0.5})
    with pytest.raises(SubmissionError, match="6 duplicate ID"):
        make_submission(_pred_frame(["ID_1"]), sample)
    pred_path = tmp_path / "dup.csv"
    _pred_frame(["ID_1", "ID_1"]).to_csv(pred_path, index=False)
    with pytest.raises(TableError, match="1 duplicate slice_id"):
        write_submission(str(pred_path), str(_sample(tmp_path, ["ID_1"])), str(tmp_path / "o.csv"))


@pytest.mark.slow  # a tool process
def test_submission_cli_exit_codes(tmp_path):
    pred_path = tmp_path / "pred.csv"
    _pred_frame(["ID_1"]).to_csv(pred_path, index=False)
    args = ["--pred", str(pred_path), "--out", str(tmp_path / "s.csv")]
    assert submission_main(args + ["--sample", str(_sample(tmp_path, ["ID_1"]))]) == 0
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 7
    # The real entry point, once: a bad sample exits non-zero with the counts.
    cmd = [sys.executable, "-m", "medseg.outputs.submission", *args, "--sample", str(_sample(tmp_path, ["ID_1", "ID_2"]))]
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "6 ID(s)" in bad.stderr.splitlines()[-1]


# ------------------------------------------------------------------ ensemble


def test_ensemble_weights_are_normalised(tmp_path):
    a = _pred_frame(["ID_1", "ID_2", "ID_3"], ["S", "S", "T"], seed=1)
    b = _pred_frame(["ID_1", "ID_2", "ID_3"], ["S", "S", "T"], seed=2)
    a.to_csv(tmp_path / "a.csv", index=False)
    b.iloc[::-1].to_csv(tmp_path / "b.csv", index=False)  # row order does not matter
    inputs = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    r1 = ensemble_files(inputs, str(tmp_path / "e1.csv"), weights=[3, 1])
    r2 = ensemble_files(inputs, str(tmp_path / "e2.csv"), weights=[6, 2])
    expected = 0.75 * a[list(LABELS)].to_numpy() + 0.25 * b[list(LABELS)].to_numpy()
    np.testing.assert_allclose(r1[list(LABELS)].to_numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(r2[list(LABELS)].to_numpy(), expected, rtol=1e-12)
    written = read_predictions(str(tmp_path / "e1.csv"))
    assert written["slice_id"].tolist() == ["ID_1", "ID_2", "ID_3"] and written["series_id"].tolist() == ["S", "S", "T"]
    np.testing.assert_allclose(normalise_weights(None, 4), 0.25)
    with pytest.raises(ValueError, match="1 weight"):
        normalise_weights([1], 2)
    with pytest.raises(ValueError, match="non-negative"):
        normalise_weights([1, -1], 2)


def test_ensemble_kaggle_format_mixed_inputs_and_mismatch(tmp_path):
    a = _pred_frame(["ID_1", "ID_2"], seed=3)
    b = _pred_frame(["ID_1", "ID_2"], seed=4)
    _write_kaggle_text(tmp_path / "a_sub.csv", a["slice_id"][::-1], a[list(LABELS)].to_numpy()[::-1])
    b.to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "e.csv"
    ensemble_files([str(tmp_path / "a_sub.csv"), str(tmp_path / "b.csv")], str(out))
    result = pd.read_csv(out)
    assert result["ID"].tolist() == pd.read_csv(tmp_path / "a_sub.csv")["ID"].tolist()  # first input's format and order
    expected = (a[list(LABELS)].to_numpy() + b[list(LABELS)].to_numpy()) / 2
    np.testing.assert_allclose(result["Label"].to_numpy()[6:], expected[0], rtol=1e-12)

    _pred_frame(["ID_1", "ID_3"]).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(TableError, match=r"c\.csv: slices differ.*1 missing.*ID_2.*1 extra.*ID_3"):
        ensemble_files([str(tmp_path / "b.csv"), str(tmp_path / "c.csv")], str(tmp_path / "x.csv"))


def test_ensemble_rule(tmp_path):
    ids = ["ID_1", "ID_2"]
    values = [
        [[0.95, 0.95, 0.1, 0.5, 0.85, 0.0], [0.2] * 6],
        [[0.90, 0.10, 0.1, 0.5, 0.85, 0.0], [0.2] * 6],
        [[0.10, 0.10, 0.1, 0.5, 0.10, 0.0], [0.2] * 6],
    ]
    paths = []
    for i, v in enumerate(values):
        frame = pd.DataFrame(v, columns=list(LABELS)).assign(slice_id=ids)
        frame.to_csv(tmp_path / f"m{i}.csv", index=False)
        paths.append(str(tmp_path / f"m{i}.csv"))
    mean = np.mean(values, axis=0)
    off = ensemble_files(paths, str(tmp_path / "off.csv"))
    np.testing.assert_allclose(off[list(LABELS)].to_numpy(), mean, rtol=1e-12)  # rule off by default
    on = ensemble_files(paths, str(tmp_path / "on.csv"), rule_k=2, rule_threshold=0.8)
    expected = mean.copy()
    expected[0, [0, 4]] = 1.0  # two of three inputs above 0.8; column 1 has only one
    np.testing.assert_allclose(on[list(LABELS)].to_numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="both"):
        ensemble_files(paths, str(tmp_path / "x.csv"), rule_k=2)


# ------------------------------------------------------------------ report

@pytest.fixture
def report_inputs(tmp_path):
    """A tiny prepared dataset (4 series × 6 slices), its truth file and predictions of varying quality."""
    rng = np.random.default_rng(7)
    root = tmp_path / "ds"
    (root / "cache").mkdir(parents=True)
    meta_rows, truth, preds = [], [], []
    for s in range(4):
        series = f"ID_se{s}"
        volume = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
        cache = f"cache/{series}.{'npy' if s % 2 else 'hcc'}"  # both cache formats: the old one and head crops
        if s % 2:
            np.save(root / cache, volume)
        else:
            write_cache_file(str(root / cache), (32, 32), DEFAULT_WINDOWS, (((2, 30, 2, 30), v[2:30, 2:30], None) for v in volume))
        for k in range(6):
            sid = f"ID_{s:02x}{k:02x}f"
            y = (rng.random(6) < 0.15).astype(float)
            y[0] = 0.0  # no epidural in the cohort: its AUC is undefined (null in metrics.json)
            y[5] = y[:5].max()
            noise = 0.1 + 0.25 * s  # series 0 is predicted best, series 3 worst
            p = np.clip(np.abs(y - noise * rng.random(6)), 0, 1).round(4)
            meta_rows.append([sid, series, f"ST{s}", f"P{s}", k, 5.0 * k, 5.0, *[np.nan] * 6, -1, 2, 30, 2, 30, cache])
            truth.append((sid, y))
            preds.append((sid, series, p))
    # Rows in the prediction file are shuffled: the order must come from the dataset root.
    order = rng.permutation(len(preds))
    pd.DataFrame(meta_rows, columns=list(META_COLUMNS)).to_csv(root / "test_meta.csv", index=False)
    pred = pd.DataFrame([[preds[i][0], preds[i][1], *preds[i][2]] for i in order], columns=["slice_id", "series_id", *LABELS])
    pred.to_csv(tmp_path / "pred.csv", index=False)
    _write_kaggle_text(tmp_path / "truth.csv", [t[0] for t in truth], [t[1] for t in truth])
    y = np.array([t[1] for t in truth])
    p = pred.set_index("slice_id").loc[[t[0] for t in truth], list(LABELS)].to_numpy()
    return tmp_path, y, p


def test_report_files_and_metrics(report_inputs, capsys):
    tmp_path, y, p = report_inputs
    out = tmp_path / "report"
    code = report_main(["--pred", str(tmp_path / "pred.csv"), "--truth", str(tmp_path / "truth.csv"), "--out", str(out),
                        "--dataset_root", str(tmp_path / "ds"), "--n_series", "2", "--eps", "1e-6"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())

    # Independent computation: sklearn per class, weighted 1…1,2; prior = prevalence predicted everywhere.
    w = np.asarray(CLASS_WEIGHTS)
    per_class = np.array([log_loss(y[:, c], np.clip(p[:, c], 1e-6, 1 - 1e-6), labels=[0, 1]) for c in range(6)])
    prior_pc = np.array([log_loss(y[:, c], np.full(len(y), np.clip(y[:, c].mean(), 1e-6, 1 - 1e-6)), labels=[0, 1]) for c in range(6)])
    assert metrics["weighted_logloss"] == pytest.approx(w @ per_class / w.sum(), rel=1e-9)
    assert metrics["prior_logloss"] == pytest.approx(w @ prior_pc / w.sum(), rel=1e-9)
    assert metrics["ratio"] == pytest.approx(metrics["weighted_logloss"] / metrics["prior_logloss"], rel=1e-12)
    for c, label in enumerate(LABELS):
        assert metrics[f"logloss_{label}"] == pytest.approx(per_class[c], rel=1e-9)
        assert metrics[f"prior_logloss_{label}"] == pytest.approx(prior_pc[c], rel=1e-9)
        auc = roc_auc_score(y[:, c], p[:, c]) if 0 < y[:, c].sum() < len(y) else None
        assert metrics[f"auc_{label}"] == (pytest.approx(auc, rel=1e-12) if auc is not None else None)
    assert metrics["auc_epidural"] is None and metrics["auc_any"] is not None
    assert metrics["n_images"] == 24 and metrics["n_series"] == 4
    assert [s["series_id"] for s in metrics["series_logloss"]][0] == "ID_se3"

    expected_pngs = ["logloss.png", "roc.png", "pr.png", "calibration.png",
                     "series_worst_1.png", "series_worst_2.png", "series_best_1.png", "series_best_2.png"]
    html = (out / "index.html").read_text()
    for name in expected_pngs:
        assert (out / name).stat().st_size > 1000, name
        assert f'src="{name}"' in html
    assert "worst #1: ID_se3" in html and "best #1: ID_se0" in html
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == (f"weighted_logloss={metrics['weighted_logloss']:.6f} prior={metrics['prior_logloss']:.6f} "
                       f"ratio={metrics['ratio']:.4f}")


def test_report_without_dataset_root(report_inputs):
    tmp_path, _, _ = report_inputs
    pred = pd.read_csv(tmp_path / "pred.csv")
    pred.drop(columns=["series_id"]).to_csv(tmp_path / "pred_noseries.csv", index=False)
    out = tmp_path / "r2"
    assert report_main(["--pred", str(tmp_path / "pred_noseries.csv"), "--truth", str(tmp_path / "truth.csv"), "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert "per-series strips skipped" in html and not list(out.glob("series_*.png"))
    assert (out / "calibration.png").exists() and "n_series" not in json.loads((out / "metrics.json").read_text())

    pred.iloc[1:].to_csv(tmp_path / "pred_short.csv", index=False)  # one truth slice without a prediction
    with pytest.raises(TableError, match="1 slice"):
        from medseg.outputs.report import make_report

        make_report(str(tmp_path / "pred_short.csv"), str(tmp_path / "truth.csv"), str(tmp_path / "r3"))
