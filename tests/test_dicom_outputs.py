"""``--dicom_out``: the SR and the Secondary Capture series of each predicted series, read back
with pydicom/highdicom and checked with dciodvfy (Debian dicom3tools; ``make dicom-tools``
installs it, ``make test`` runs that target first)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pytest
from highdicom.sr.utils import find_content_items
from pydicom import dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medseg.config import Config
from medseg.constants import LABELS
from medseg.data.synthetic import synthesize_series
from medseg.data.synthetic.dicom_writer import write_series
from medseg.predict.__main__ import main as predict_main
from medseg.predict.dicom_capture import SIDE, CaptureSlice, SeriesCaptures, caption, render
from medseg.predict.dicom_out import write_series as write_dicom_series
from medseg.predict.dicom_source import ModelIdentity, calibration_text
from medseg.predict.dicom_sr import TOP_K, top_rows
from medseg.predict.run import Predictor
from medseg.predict.tables import SeriesResult
from tests.predict_fixtures import SIZE, tree_state, write_checkpoint, write_config, write_study

THRESHOLD = 0.5


def write_valid_series(folder: str, seed: int = 12, n_slices: int = 6) -> list[str]:
    """A synthetic series whose Study, Series and SOP Instance UIDs are valid DICOM UIDs (the
    synthetic writer gives RSNA-style ids); returns the file paths, head to foot as written."""
    paths = write_series(synthesize_series(seed, 0, size=SIZE, n_slices=n_slices), folder)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for path in paths:
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(path)
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One study folder predicted twice by one :class:`Predictor` into the same ``dicom_out``
    inside it (the second run must neither read nor clobber the first one's files)."""
    root = tmp_path_factory.mktemp("dicom_outputs")
    config = write_config(str(root / "tiny.yml"))
    checkpoint = write_checkpoint(config, str(root / "ckpt"))
    study = root / "study"
    write_study(str(study))
    write_valid_series(str(study / "valid"))
    dicom_out = study / "results dicom"
    predictor = Predictor(Config(config), checkpoint)
    predictor.predict(str(study), str(root / "out1"), THRESHOLD, progress=False, dicom_out=str(dicom_out))
    first = tree_state(str(dicom_out))
    summary = predictor.predict(str(study), str(root / "out2"), THRESHOLD, progress=False, dicom_out=str(dicom_out))
    with open(root / "out2" / "predictions.json", encoding="utf-8") as fh:
        predictions = json.load(fh)
    with open(root / "out1" / "predictions.json", encoding="utf-8") as fh:
        first_predictions = json.load(fh)
    return {"root": root, "checkpoint": checkpoint, "study": str(study), "dicom_out": str(dicom_out), "summary": summary,
            "json": predictions, "first_json": first_predictions, "first_state": first}


def _written(run):
    return [s for s in run["json"]["series"] if s.get("dicom", {}).get("written")]


def _source_headers(run, entry):
    return [dcmread(os.path.join(run["study"], s["file"]), stop_before_pixels=True) for s in entry["slices"]]


@pytest.mark.slow
def test_sr_round_trip(run):
    written = _written(run)
    assert len(written) == 4  # three real CT series and the valid synthetic one
    weights = hashlib.sha256(open(os.path.join(run["checkpoint"], "model.pdparams"), "rb").read()).hexdigest()
    for entry in written:
        sources = _source_headers(run, entry)
        sr = hd.sr.srread(os.path.join(run["dicom_out"], entry["dicom"]["sr"]["file"]))
        assert sr.SOPInstanceUID == entry["dicom"]["sr"]["sop_instance_uid"]
        assert sr.StudyInstanceUID == sources[0].StudyInstanceUID and sr.PatientID == sources[0].PatientID
        assert sr.SeriesInstanceUID != sources[0].SeriesInstanceUID
        groups = sr.content.get_image_measurement_groups()
        assert len(groups) == len(LABELS)
        probs = np.array([[s["probabilities"][label] for label in LABELS] for s in entry["slices"]])
        for j, (label, group) in enumerate(zip(LABELS, groups)):
            (measurement,) = group.get_measurements()
            assert measurement.value == pytest.approx(entry["max"][label], abs=1e-9)
            (decision,) = group.get_qualitative_evaluations()
            expected = codes.SCT.Present if entry["max"][label] >= THRESHOLD else codes.SCT.Absent
            assert decision.value == expected
            referenced = {img.referenced_sop_instance_uid for img in group.source_images}
            assert referenced == {sources[i].SOPInstanceUID for i in top_rows(probs, j)}
            assert len(referenced) == min(TOP_K, len(sources))
            versions = find_content_items(group[0], name=codes.DCM.AlgorithmVersion, recursive=True)  # TID 4019
            assert versions and all(weights in v.TextValue for v in versions)
            parameters = [p.TextValue for p in find_content_items(group[0], name=codes.DCM.AlgorithmParameters, recursive=True)]
            assert "calibration: none" in parameters and f"decision threshold: {THRESHOLD:g}" in parameters
            if label == "any":
                assert (group.finding_type.value, group.finding_type.scheme_designator) == ("1386000", "SCT")
            else:
                assert (group.finding_type.value, group.finding_type.scheme_designator) == (label, "99MEDSEG")


@pytest.mark.slow
def test_captures_one_per_flagged_slice_with_text_burned_in(run):
    for entry in _written(run):
        sources = _source_headers(run, entry)
        captures = entry["dicom"]["captures"]
        flagged = [i for i, s in enumerate(entry["slices"]) if max(s["probabilities"].values()) >= THRESHOLD]
        expected = flagged or [max(range(len(sources)), key=lambda i: entry["slices"][i]["probabilities"]["any"])]
        assert [c["slice_idx"] for c in captures["files"]] == expected
        assert captures["flagged"] == bool(flagged)
        for item in captures["files"]:
            path = os.path.join(run["dicom_out"], item["file"])
            ds = dcmread(path)
            image = hd.imread(path)
            assert image.SOPInstanceUID == item["sop_instance_uid"] == ds.SOPInstanceUID
            assert ds.SeriesInstanceUID == captures["series_instance_uid"]
            assert ds.StudyInstanceUID == sources[0].StudyInstanceUID and ds.PatientID == sources[0].PatientID
            assert ds.BurnedInAnnotation == "YES"
            assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == sources[item["slice_idx"]].SOPInstanceUID
            pixels = ds.pixel_array.astype(int)
            # The window is grey and the map at most MAP_ALPHA coloured: red this strong is the warning text.
            assert ((pixels[:32, :, 0] - pixels[:32, :, 1]) > 150).sum() > 50
            assert (pixels[SIDE:] > 128).any()  # the caption band below the image holds text


@pytest.mark.slow
def test_dciodvfy_reports_no_error(run):
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.skip("dciodvfy is not installed (`make dicom-tools` installs Debian's dicom3tools; `make test` does it)")
    files = run["summary"].dicom_files
    assert len(files) >= 8 and all(f.startswith(run["dicom_out"]) for f in files)
    warnings = set()
    for path in files:
        out = subprocess.run([binary, path], capture_output=True, text=True, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        assert not [line for line in lines if line.startswith("Error")], f"{path}:\n" + "\n".join(lines)
        warnings.update(line for line in lines if line.startswith("Warning"))
    print("dciodvfy warnings:\n" + "\n".join(sorted(warnings)))


@pytest.mark.slow
def test_invalid_study_uid_gets_no_outputs_and_a_reason(run):
    (entry,) = [s for s in run["json"]["series"] if s.get("dicom") and not s["dicom"]["written"]]
    assert entry["study_id"].startswith("ID_")
    assert "StudyInstanceUID" in entry["dicom"]["reason"] and "not a valid DICOM UID" in entry["dicom"]["reason"]
    assert "sr" not in entry["dicom"] and "captures" not in entry["dicom"]


@pytest.mark.slow
def test_dicom_out_inside_input_is_neither_read_nor_clobbered(run):
    summary, first, second = run["summary"], run["first_json"], run["json"]
    assert second["files"] == first["files"]  # the first run's outputs were not scanned as input
    assert [s["series_id"] for s in second["series"]] == [s["series_id"] for s in first["series"]]
    now = tree_state(run["dicom_out"])
    assert all(now[k] == v for k, v in run["first_state"].items())  # first run's files untouched
    new = {os.path.relpath(f, run["dicom_out"]) for f in summary.dicom_files}
    assert new.isdisjoint(run["first_state"]) and new <= set(now)
    # Each series' SR comes first, then its captures (what a node forwards).
    order = [f for s in _written(run) for f in [s["dicom"]["sr"]["file"], *[c["file"] for c in s["dicom"]["captures"]["files"]]]]
    assert [os.path.relpath(f, run["dicom_out"]) for f in summary.dicom_files] == order


def test_invalid_slice_uid_is_not_referenced_and_nothing_flagged(tmp_path):
    paths = write_valid_series(str(tmp_path / "series"), seed=5, n_slices=4)
    bad = dcmread(paths[0])
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = "ID_0badc0de"
    bad.save_as(paths[0])
    probs = np.full((4, len(LABELS)), 0.1)
    probs[0], probs[2, -1] = 0.3, 0.4  # slice 0 tops every subtype; nothing reaches the threshold
    files = [os.path.relpath(p, tmp_path) for p in paths]
    result = SeriesResult("s", "st", "p", files, [f"x{i}" for i in range(4)], np.arange(4.0), probs,
                          np.zeros((4, 8, 8), np.uint8), [])
    image = np.tile(np.linspace(0, 255, SIZE, dtype=np.uint8), (SIZE, 1))
    capture = SeriesCaptures("s", 4, [CaptureSlice(2, image, probs[2], None)], False, "40/80", "", "no map: test")
    identity = ModelIdentity("medseg test", "medseg 0 weights sha256:00", ("calibration: none",), generate_uid(), "00" * 32)
    entry = write_dicom_series(str(tmp_path / "out"), str(tmp_path), result, capture, THRESHOLD, identity, 0)
    assert entry["written"] and any("not a valid DICOM UID" in n and files[0] in n for n in entry["notes"])
    sr = hd.sr.srread(os.path.join(tmp_path, "out", entry["sr"]["file"]))
    referenced = {img.referenced_sop_instance_uid for g in sr.content.get_image_measurement_groups() for img in g.source_images}
    assert "ID_0badc0de" not in referenced and referenced
    assert [c["slice_idx"] for c in entry["captures"]["files"]] == [2] and not entry["captures"]["flagged"]
    lines = caption(capture, capture.slices[0], THRESHOLD, identity)
    assert any("no slice at or above the threshold" in line for line in lines)
    plain = render(capture.slices[0], [])[:SIDE]
    burned = render(capture.slices[0], lines)
    assert burned.shape[0] > SIDE and (burned[SIDE:] > 0).any() and np.array_equal(burned[:SIDE], plain)


def test_cli_passes_dicom_out(monkeypatch, tmp_path):
    import medseg.predict.run as run_module

    seen = {}
    monkeypatch.setattr(run_module, "run_predict", lambda *a, **k: seen.update(k) or _Summary())
    config = write_config(str(tmp_path / "c.yml"))
    assert predict_main(["--config", config, "--model", "m", "--dicom_dir", "d", "--out", "o", "--dicom_out", "x"]) == 0
    assert seen["dicom_out"] == "x"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        run_module.check_predict_args(str(tmp_path), 0.5, 1, None, 1, str(tmp_path / "file"))


class _Summary:
    def format(self) -> str:
        return "done"


def test_calibration_is_named_with_its_temperatures_and_checksum(tmp_path):
    (tmp_path / "calibration.json").write_text("{}")
    model = SimpleNamespace(calibration=SimpleNamespace(temperature=[1.5, 1, 1, 1, 1, 2.25]))
    text = calibration_text(model, [str(tmp_path)])
    digest = hashlib.sha256(b"{}").hexdigest()[:16]
    assert text.startswith("calibration: temperature scaling") and f"{LABELS[0]}=1.5" in text
    assert f"{LABELS[-1]}=2.25" in text and digest in text
