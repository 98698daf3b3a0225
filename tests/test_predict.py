"""``python -m medseg.predict``: a DICOM folder → predictions, skipped files, report."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from medseg.config import Config
from medseg.constants import DEFAULT_WINDOWS, LABELS, TEST_DIR
from medseg.outputs.predictions import read_predictions
from medseg.predict.__main__ import main as predict_main
from medseg.predict.saliency import shown_slices
from tests.predict_fixtures import SYNTH_SLICES, tree_state, write_checkpoint, write_config, write_strays, write_study

pytestmark = pytest.mark.slow  # end to end: DICOM folder -> predictions and report


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    config = write_config(str(root / "tiny.yml"))
    checkpoint = write_checkpoint(config, str(root / "ckpt" / "iter_1"))
    study = root / "dicom"
    expected = write_study(str(study))
    return {"root": root, "config": config, "checkpoint": checkpoint, "study": str(study), "expected": expected}


def _predict(setup, out, *extra, dicom_dir=None):
    return predict_main(["--config", setup["config"], "--model", setup["checkpoint"], "--dicom_dir", dicom_dir or setup["study"],
                         "--out", str(out), "--no_progress", *extra])


def test_predicts_every_ct_slice_and_skips_strays(setup):
    root, expected = setup["root"], setup["expected"]
    out = root / "out"
    before = tree_state(str(root), skip=str(out))
    assert _predict(setup, out, "--threshold", "0.5") == 0
    assert tree_state(str(root), skip=str(out)) == before  # nothing written outside OUT, inputs untouched

    frame = pd.read_csv(out / "predictions.csv", dtype={"slice_id": str, "series_id": str})
    assert list(frame.columns[:4]) == ["series_id", "slice_id", "slice_idx", "position"]
    assert set(frame["slice_id"]) == set(expected["synthetic"]) | set(expected["real"])
    assert len(frame) == SYNTH_SLICES + len(expected["real"])
    assert frame["series_id"].nunique() == 1 + len(expected["real"])  # each real file is its own series
    probs = frame[list(LABELS)].to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    read_predictions(str(out / "predictions.csv"))  # the outputs stage accepts the file

    synth = frame[frame["series_id"] == expected["series_id"][0]]
    assert list(synth["slice_idx"]) == list(range(SYNTH_SLICES))
    assert np.all(np.diff(synth["position"].to_numpy()) < 0)  # head to foot, whatever the file names

    skipped = pd.read_csv(out / "skipped.csv", keep_default_na=False)
    assert list(skipped.columns) == ["file", "series_id", "reason"]
    reasons = dict(zip(skipped["file"], skipped["reason"]))
    assert set(reasons) == set(expected["strays"])
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "empty file" in reasons["misc/empty"]
    assert "Modality is 'MR'" in reasons["misc/mr_slice.dcm"]
    mr_series = dict(zip(skipped["file"], skipped["series_id"]))["misc/mr_slice.dcm"]
    assert mr_series and dict(zip(skipped["file"], skipped["series_id"]))["notes.txt"] == ""

    report = json.loads((out / "predictions.json").read_text())
    assert report["threshold"] == 0.5 and report["labels"] == list(LABELS)
    listed = {s["series_id"]: s for s in report["series"]}  # every series found, predicted or not
    assert not listed[mr_series]["predicted"] and "Modality is 'MR'" in listed[mr_series]["reason"]
    by_series = {k: s for k, s in listed.items() if s["predicted"]}
    assert set(by_series) == set(frame["series_id"]) and set(listed) == set(by_series) | {mr_series}
    for entry in by_series.values():  # a single real slice is predicted, with a note that says so
        assert entry["reason"] == "" and (entry["n_slices"] > 1 or any("short series" in n for n in entry["notes"]))
    for series_id, rows in frame.groupby("series_id"):
        entry = by_series[series_id]
        assert entry["n_slices"] == len(rows) == len(entry["slices"])
        for label in LABELS:
            assert entry["max"][label] == pytest.approx(rows[label].max(), abs=1e-9)
            assert entry["slices_above_threshold"][label] == [int(i) for i in rows["slice_idx"][rows[label] >= 0.5]]
        assert [s["slice_id"] for s in entry["slices"]] == list(rows["slice_id"])

    html = (out / "report.html").read_text()
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert len(pngs) == len(by_series)
    for name in pngs:
        assert (out / name).stat().st_size > 1000
    assert "notes.txt" in html
    # Self-contained: every image inline; per predicted series its section, the strip, and each large
    # slice twice (window, Grad-CAM overlay); the MR series' row says why it was not predicted.
    sources = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    large = sum(len(shown_slices(rows[list(LABELS)].to_numpy(), 0.5)[0]) for _, rows in frame.groupby("series_id"))
    assert html.count('alt="slice ') == html.count('alt="saliency on slice ') == large
    assert len(sources) == len(by_series) + 2 * large and html.count('<section class="series" id="series-') == len(by_series)
    assert "Modality is &#x27;MR&#x27;" in html


def test_report_without_saliency(setup, tmp_path):
    out = tmp_path / "out"
    assert _predict(setup, out, "--no_saliency") == 0
    html = (out / "report.html").read_text()
    assert 'alt="slice ' in html and 'alt="saliency on slice ' not in html
    assert "no saliency: turned off (--no_saliency)" in html


def test_same_input_as_the_validation_pipeline(setup, tmp_path):
    """A synthetic series goes through prepare + RSNASeriesDataset and through predict's loader:
    the model inputs must be identical (same reader, quirks, windows, crop and transforms)."""
    from medseg.data.collate import collate_series
    from medseg.data.dataset import RSNASeriesDataset
    from medseg.data.device_augment import to_model_input
    from medseg.data.prepare import prepare
    from medseg.data.synthetic import synthesize_series
    from medseg.data.synthetic.dicom_writer import write_series
    from medseg.predict.discover import list_files, scan_headers
    from medseg.data.build import build_eval_transforms, eval_transform_config
    from medseg.predict.study import load_series, unique_slice_ids
    from medseg.predict.triage import triage_folder
    from medseg.registry import TRANSFORMS, build

    raw = tmp_path / "raw"
    (raw / TEST_DIR).mkdir(parents=True)
    write_series(synthesize_series(5, 3, size=64, n_slices=5), str(raw / TEST_DIR))
    prepare(str(raw), str(tmp_path / "prepared"), workers=1)
    cfg = Config(setup["config"])
    spec = eval_transform_config(cfg)
    dataset = RSNASeriesDataset(str(tmp_path / "prepared"), "test", build(spec, TRANSFORMS, "t"))
    item = dataset[0]

    headers, errors = scan_headers(list_files(str(raw)), progress=False)
    triage = triage_folder(headers, errors, str(raw))
    series = triage.series
    assert not errors and not triage.skipped and len(series) == 1
    loaded, bad = load_series(series[0], str(raw), DEFAULT_WINDOWS, build_eval_transforms(spec), unique_slice_ids(series, str(raw)))
    assert not bad
    assert loaded.slice_ids == item["slice_ids"]
    # The dataset ships uint8 slices and the batch step normalises them: bit for bit the same input.
    np.testing.assert_array_equal(loaded.image, to_model_input(collate_series([item]))["image"].numpy()[0])


def test_nothing_readable_exits_nonzero_with_one_line(setup, tmp_path, capsys):
    folder = tmp_path / "junk"
    folder.mkdir()
    write_strays(str(folder))
    out = tmp_path / "out"
    assert _predict(setup, out, dicom_dir=str(folder)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no readable CT slice" in err[0] and str(folder) in err[0]
    assert not (out / "predictions.csv").exists()
    assert len(pd.read_csv(out / "skipped.csv")) == 3  # the reasons are still there to read


def test_missing_folder_and_bad_model(setup, tmp_path, capsys):
    assert _predict(setup, tmp_path / "o1", dicom_dir=str(tmp_path / "nope")) == 2
    assert "DICOM folder not found" in capsys.readouterr().err
    rc = predict_main(["--config", setup["config"], "--model", str(tmp_path), "--dicom_dir", setup["study"], "--out", str(tmp_path / "o2")])
    assert rc == 2 and "neither an exported model" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_output_inside_the_dicom_folder_is_not_read_back(setup, tmp_path):
    """Run twice with OUT inside DIR: the second run must not scan the first run's outputs, and
    slice ids that repeat across folders (IM0001 in every series) stay unique."""
    import shutil

    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "dicom"
    shutil.copytree(os.path.join(setup["study"], "other"), folder / "a")
    shutil.copytree(os.path.join(setup["study"], "other"), folder / "b")  # same stems...
    for path in sorted((folder / "b").rglob("*")):
        if path.is_file():  # ...other images: one file per SOPInstanceUID is kept (tests/test_triage.py)
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(path), "series"])
            ds.save_as(path)
    out = folder / "results"
    for _ in range(2):
        assert _predict(setup, out, "--batch_size", "2", dicom_dir=str(folder)) == 0
        assert len(pd.read_csv(out / "skipped.csv")) == 0
    frame = pd.read_csv(out / "predictions.csv", dtype={"slice_id": str})
    assert frame["slice_id"].is_unique and len(frame) == 6
    assert set(frame["file"]) == {f"{d}/real/{n}" for d in "ab" for n in ("CT_small", "693_J2KI", "J2K_pixelrep_mismatch")}
