"""Series triage (medseg.predict.triage) on real exports: which series predict takes, which it
leaves out and why, lenient identifiers, duplicates, thin slices and slabs; and the rules prepare
shares. Real files: ../shared/real_ct (a tilted GE head series, a Philips localizer and exam
summary) and pydicom's 693 head slice stored three ways; variants are written with pydicom into
tmp_path, never into ../shared."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_fixtures import read_hu
from medseg.data.windows import DEFAULT_WINDOWS, apply_windows
from medseg.dicom.errors import MissingTagError
from medseg.dicom.header import read_header
from medseg.predict.discover import list_files, scan_headers
from medseg.predict.triage import MAX_AXIAL_DEG, sharp_kernel, triage_folder
from tests.predict_fixtures import tree_state, write_checkpoint, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("MEDSEG_SHARED_DIR") or os.path.join(os.path.dirname(ROOT), "shared")
GE, LOCALIZER, SUMMARY = "ge_head_tilted", "philips_localizer", "philips_exam_summary"


def real(folder: str) -> str:
    path = os.path.join(SHARED, "real_ct", folder)
    if not os.path.isdir(path):
        pytest.fail(f"{path} is missing: put real_ct in ../shared beside the checkout or set MEDSEG_SHARED_DIR")
    return path


def pydicom_file(name: str) -> str:
    path = get_testdata_file(name)  # by name: a glob would trigger downloads
    if path is None:
        pytest.fail(f"pydicom test file {name} not found: install pydicom-data (requirements.txt)")
    return path


def copy_real(dest, *folders: str, files: tuple[str, ...] | None = None) -> str:
    """Copies (writable, unlike ../shared) of whole real folders, or of some GE files."""
    for folder in folders:
        names = sorted(os.listdir(real(folder))) if files is None else list(files)
        os.makedirs(dest / folder, exist_ok=True)
        for name in names:
            shutil.copyfile(os.path.join(real(folder), name), dest / folder / name)
    return str(dest)


def edit(paths, change) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


def triage_dir(folder: str, min_slices: int = 1):
    headers, errors = scan_headers(list_files(folder), progress=False)
    return triage_folder(headers, errors, folder, min_slices)


def reasons(result) -> dict[str, str]:
    return {s.file: s.reason for s in result.skipped}


GE_THREE = ("10.dcm", "11.dcm", "12.dcm")


# --- the real export --------------------------------------------------------------------------

def test_ge_series_is_kept_whole_with_its_tilt_and_spacing(tmp_path):
    result = triage_dir(copy_real(tmp_path, GE))
    assert not result.skipped and len(result.series) == 1
    series = result.series[0]
    assert [os.path.basename(s.path) for s in series.slices] == [f"{i:02d}.dcm" for i in range(28, 0, -1)]
    assert np.all(np.diff(series.positions) < 0)  # head to foot along the tilted normal
    info = result.info[series.series_id]
    assert info.predicted and info.reason == "" and info.files == 28
    assert info.tilt_deg == pytest.approx(18.5) and info.kernel == "STD+"
    assert info.spacing_mm == pytest.approx(4.0, abs=0.01) and info.spacing_spread_mm == pytest.approx(5.92, abs=0.01)
    assert any(n.startswith("tilted: slice normal 18.5°") for n in info.notes)
    assert any(n.startswith("uneven slice spacing") for n in info.notes)
    assert not any("short series" in n or "sharp kernel" in n for n in info.notes)


def test_localizer_and_exam_summary_are_left_out_file_by_file(tmp_path):
    folder = copy_real(tmp_path, LOCALIZER, SUMMARY)
    result = triage_dir(folder)
    assert result.series == []
    why = reasons(result)
    assert set(why) == {f"{LOCALIZER}/I10"} | {f"{SUMMARY}/I{k}0" for k in range(1, 7)}
    assert why[f"{LOCALIZER}/I10"] == "localizer: ImageType ORIGINAL\\PRIMARY\\LOCALIZER"
    for k in range(1, 7):  # the RGB pages too: a secondary capture before a colour image
        assert why[f"{SUMMARY}/I{k}0"].startswith("secondary capture: SOP Class 1.2.840.10008.5.1.4.1.1.7 ")
    assert all(s.series_id for s in result.skipped)
    infos = sorted(result.info.values(), key=lambda i: i.files)
    assert [(i.files, i.predicted, i.reason.split(":")[0]) for i in infos] == [(1, False, "localizer"), (6, False, "secondary capture")]
    assert infos[1].description == "Exam Summary" and "other reasons" not in infos[1].reason


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("triage_model")
    config = write_config(str(root / "tiny.yml"))
    return config, write_checkpoint(config, str(root / "ckpt"))


def _predict(model, dicom_dir: str, out, *extra: str) -> int:
    from medseg.predict.__main__ import main

    config, checkpoint = model
    return main(["--config", config, "--model", checkpoint, "--dicom_dir", dicom_dir, "--out", str(out), "--no_progress",
                 "--no_saliency", *extra])


def test_real_export_end_to_end(model, tmp_path):
    """The GE series predicted in full, in order, with its notes; the localizer and every page
    of the exam summary named in skipped.csv with their series and reason; nothing written
    outside --out."""
    folder = copy_real(tmp_path / "export", GE, LOCALIZER, SUMMARY)
    out = tmp_path / "out"
    before = tree_state(str(tmp_path), skip=str(out))
    assert _predict(model, folder, out) == 0
    assert tree_state(str(tmp_path), skip=str(out)) == before

    frame = pd.read_csv(out / "predictions.csv", dtype={"slice_id": str})
    assert list(frame["file"]) == [f"{GE}/{i:02d}.dcm" for i in range(28, 0, -1)]
    assert frame["series_id"].nunique() == 1 and np.all(np.diff(frame["position"]) < 0)
    skipped = pd.read_csv(out / "skipped.csv")
    assert len(skipped) == 7 and skipped["series_id"].nunique() == 2
    assert set(skipped["reason"].str.split(":").str[0]) == {"localizer", "secondary capture"}
    series = json.loads((out / "predictions.json").read_text())["series"]
    assert sorted((s["predicted"], s["files"]) for s in series) == [(False, 1), (False, 6), (True, 28)]
    ge = next(s for s in series if s["predicted"])
    assert ge["n_slices"] == 28 and ge["tilt_deg"] == pytest.approx(18.5) and ge["kernel"] == "STD+"
    assert any("tilted" in n for n in ge["notes"]) and set(ge["max"]) and len(ge["slices"]) == 28
    assert all(s["reason"] and "slices" not in s for s in series if not s["predicted"])


# --- one test per rule ------------------------------------------------------------------------

def _rotate(angle_deg: float):
    """Orientation tilted by ``angle_deg`` about the patient x axis (0: axial, 90: coronal)."""
    a = np.radians(angle_deg)

    def change(ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0, round(float(np.cos(a)), 6), round(float(-np.sin(a)), 6)]
        ds.GantryDetectorTilt = angle_deg
    return change


@pytest.mark.parametrize("angle", [0.0, 30.0, 40.0, 90.0])
def test_orientation_more_than_35_degrees_off_axial_is_left_out(tmp_path, angle):
    folder = copy_real(tmp_path, GE, files=GE_THREE)
    edit([os.path.join(folder, GE, f) for f in GE_THREE], _rotate(angle))
    result = triage_dir(folder)
    (info,) = result.info.values()
    if angle <= MAX_AXIAL_DEG:
        assert info.predicted and len(result.series[0].slices) == 3 and not result.skipped
        assert any(n.startswith("tilted") for n in info.notes) == (angle > 0)
    else:
        assert not info.predicted and info.reason.startswith(f"not axial: slice normal {angle:.1f}°")
        assert len(result.skipped) == 3 and {s.reason for s in result.skipped} == {info.reason}


def test_sagittal_series_is_left_out(tmp_path):
    folder = copy_real(tmp_path, GE, files=GE_THREE)
    edit([os.path.join(folder, GE, f) for f in GE_THREE], lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]))
    (info,) = triage_dir(folder).info.values()
    assert not info.predicted and info.reason.startswith("not axial: slice normal 90.0°")


@pytest.mark.parametrize("image_type", [["DERIVED", "SECONDARY", "MPR"], ["SECONDARY"]])
def test_secondary_image_type_is_a_secondary_capture(tmp_path, image_type):
    folder = copy_real(tmp_path, GE, files=GE_THREE)
    edit([os.path.join(folder, GE, f) for f in GE_THREE], lambda ds: setattr(ds, "ImageType", image_type))
    result = triage_dir(folder)
    expected = "secondary capture: ImageType " + "\\".join(image_type)
    assert result.series == [] and set(reasons(result).values()) == {expected}


def test_report_colour_and_other_modality_are_left_out(tmp_path):
    folder = copy_real(tmp_path, GE, files=GE_THREE)
    paths = [os.path.join(folder, GE, f) for f in GE_THREE]

    def dose_report(ds):
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
        ds.Modality = "SR"
        del ds.PixelData

    def colour(ds):
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"

    for path, change in zip(paths, (dose_report, colour, lambda ds: setattr(ds, "Modality", "MR"))):
        edit([path], lambda ds: (change(ds), setattr(ds, "SeriesInstanceUID", generate_uid(entropy_srcs=[path]))))
    result = triage_dir(folder)
    why = reasons(result)
    assert result.series == [] and len(result.info) == 3 and not any(i.predicted for i in result.info.values())
    assert why[f"{GE}/10.dcm"].startswith("structured report: SOP Class 1.2.840.10008.5.1.4.1.1.88.67 (X-Ray Radiation Dose SR")
    assert why[f"{GE}/11.dcm"] == "UnsupportedImageError: colour image (SamplesPerPixel=3, RGB), expected greyscale"
    assert why[f"{GE}/12.dcm"] == "NotCTError: Modality is 'MR', expected 'CT'"
    assert {i.reason for i in result.info.values()} == set(why.values())


def test_single_slice_is_predicted_with_a_note_unless_min_slices(tmp_path):
    """A real head slice given alone is a common input: predicted, with a note; --min_slices
    leaves out shorter series with the reason."""
    os.makedirs(tmp_path / "one")
    shutil.copyfile(pydicom_file("693_UNCI.dcm"), tmp_path / "one" / "693_UNCI.dcm")
    result = triage_dir(str(tmp_path / "one"))
    (info,) = result.info.values()
    assert info.predicted and any(n.startswith("short series: 1 slice(s)") for n in info.notes)
    result = triage_dir(str(tmp_path / "one"), min_slices=10)
    assert result.series == [] and reasons(result) == {"693_UNCI.dcm": "too few slices: 1, fewer than --min_slices 10"}
    assert result.info[info.series_id].reason == "too few slices: 1, fewer than --min_slices 10"


def test_single_slice_described_as_scout_is_left_out(tmp_path):
    folder = copy_real(tmp_path, GE, files=("14.dcm",))
    edit([os.path.join(folder, GE, "14.dcm")], lambda ds: setattr(ds, "SeriesDescription", "Head Scout"))
    result = triage_dir(folder)
    assert result.series == [] and reasons(result)[f"{GE}/14.dcm"] == "scout: a single slice described as scout (Head Scout)"


def test_sharp_kernels():
    for kernel in ("BONE", "BONEPLUS", "EDGE", "LUNG", "H60s", "B70f", "Hr64", "Br60\\3", "FC30", "FC52", "very sharp"):
        assert sharp_kernel(kernel), kernel
    for kernel in ("STD+", "STANDARD", "SOFT", "H30s", "Hr38\\3", "B31f", "FC21", "FC26", "11", "UB", "", None):
        assert not sharp_kernel(kernel), kernel


def test_bone_kernel_series_is_predicted_with_a_note(tmp_path):
    folder = copy_real(tmp_path, GE, files=GE_THREE)
    edit([os.path.join(folder, GE, f) for f in GE_THREE], lambda ds: setattr(ds, "ConvolutionKernel", "BONE"))
    (info,) = triage_dir(folder).info.values()
    assert info.predicted and info.kernel == "BONE"
    assert "sharp kernel BONE: the model saw soft-tissue (brain) reconstructions" in info.notes


def test_missing_identifiers_get_placeholders_in_predict_not_in_prepare(tmp_path):
    folder = copy_real(tmp_path, GE, files=GE_THREE)
    paths = [os.path.join(folder, GE, f) for f in GE_THREE]

    def strip(ds):
        del ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID
    edit(paths, strip)
    edit(paths[:1], lambda ds: delattr(ds, "InstanceNumber"))
    result = triage_dir(folder)
    (series,) = result.series
    info = result.info[series.series_id]
    assert info.predicted and len(series.slices) == 3 and not result.skipped
    assert series.series_id == f"MISSING-SeriesInstanceUID:{GE}" and series.patient_id == "MISSING-PatientID"
    assert info.study_id == "MISSING-StudyInstanceUID"
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert any(n.startswith(f"{keyword} missing on 3 file(s): placeholder MISSING-{keyword}") for n in info.notes)
    with pytest.raises(MissingTagError, match="SeriesInstanceUID missing"):  # prepare reads strictly
        read_header(paths[0])


def test_duplicates_one_file_per_image_and_per_position(tmp_path):
    """693 stored three ways: J2KI (lossy JPEG 2000) and UNCI (its decompressed pixels, still
    LossyImageCompression 01) share a SOPInstanceUID, one image: the uncompressed UNCI is kept.
    J2KR, the lossless original, is another image at the same position: kept over UNCI."""
    folder = tmp_path / "dup"
    os.makedirs(folder)
    for name in ("693_J2KI.dcm", "693_J2KR.dcm", "693_UNCI.dcm"):
        shutil.copyfile(pydicom_file(name), folder / name)
    result = triage_dir(str(folder))
    (series,) = result.series
    assert [os.path.basename(s.path) for s in series.slices] == ["693_J2KR.dcm"]
    why = reasons(result)
    assert why["693_J2KI.dcm"].startswith("duplicate: same SOPInstanceUID as 693_UNCI.dcm, which is kept")
    assert why["693_UNCI.dcm"].startswith("duplicate: same position (")
    assert "as 693_J2KR.dcm, which is kept" in why["693_UNCI.dcm"]
    assert "2 duplicate file(s) left out (skipped.csv)" in result.info[series.series_id].notes


def test_duplicate_position_keeps_the_higher_instance_number(tmp_path):
    folder = copy_real(tmp_path, GE)
    os.makedirs(tmp_path / GE / "again")
    shutil.copyfile(tmp_path / GE / "05.dcm", tmp_path / GE / "again" / "05.dcm")  # the same file twice
    shutil.copyfile(tmp_path / GE / "06.dcm", tmp_path / GE / "again" / "06b.dcm")

    def retake(ds):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["06b"])
        ds.InstanceNumber = 99
    edit([tmp_path / GE / "again" / "06b.dcm"], retake)
    result = triage_dir(folder)
    (series,) = result.series
    files = [os.path.relpath(s.path, folder) for s in series.slices]
    assert len(files) == 28 and f"{GE}/again/06b.dcm" in files and f"{GE}/06.dcm" not in files
    why = reasons(result)
    assert why[f"{GE}/again/05.dcm"].startswith(f"duplicate: same SOPInstanceUID as {GE}/05.dcm")
    assert why[f"{GE}/06.dcm"].startswith("duplicate: same position") and f"as {GE}/again/06b.dcm" in why[f"{GE}/06.dcm"]


def _thin(folder: str, step_mm: float = 1.0) -> list[str]:
    """The GE series re-spaced to ``step_mm`` along its normal, SliceThickness ``step_mm``."""
    paths = [os.path.join(folder, GE, f"{i:02d}.dcm") for i in range(1, 29)]
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    origin = np.asarray(first.ImagePositionPatient, dtype=float)
    normal = np.cross(*np.reshape(np.asarray(first.ImageOrientationPatient, dtype=float), (2, 3)))
    for k, path in enumerate(paths):
        edit([path], lambda ds, k=k: (setattr(ds, "ImagePositionPatient", [round(float(v), 4) for v in origin + k * step_mm * normal]),
                                      setattr(ds, "SliceThickness", step_mm)))
    return paths


def test_thin_series_note_and_slab_groups(tmp_path):
    from medseg.predict.study import slab_groups

    folder = copy_real(tmp_path, GE)
    _thin(folder)
    (info,) = triage_dir(folder).info.values()
    assert info.predicted and info.spacing_mm == pytest.approx(1.0) and info.thickness_mm == 1.0
    assert any(n.startswith("thin slices (1 mm)") for n in info.notes)
    assert not any(n.startswith("uneven") for n in info.notes)
    positions = np.arange(28.0)
    assert [len(g) for g in slab_groups(positions, 1.0, 5.0)] == [5, 5, 5, 5, 4, 4]
    assert [len(g) for g in slab_groups(positions, 0.625, 5.0)] == [7, 7, 7, 7]  # 8 per slab: 3.5 slabs -> 4
    assert slab_groups(positions, 5.0, 5.0) is None and slab_groups(positions, 3.0, 5.0) is not None
    assert slab_groups(positions, 4.0, 5.0) is None and slab_groups(positions, 1.0, None) is None


def test_slabs_average_hu_and_name_their_sources(model, tmp_path):
    """--slab_mm 5 on a 1 mm series: 6 rows of 4-5 slices each, each row's image the windows of
    the mean HU of its source slices, its file column naming them in order."""
    from medseg.data.series_volume import SeriesTask
    from medseg.predict.study import _slab_volume

    folder = copy_real(tmp_path / "thin", GE)
    paths = _thin(folder)
    out = tmp_path / "out"
    assert _predict(model, folder, out, "--slab_mm", "5") == 0
    frame = pd.read_csv(out / "predictions.csv", dtype={"slice_id": str})
    sources = [f.split(";") for f in frame["file"]]
    assert [len(s) for s in sources] == [5, 5, 5, 5, 4, 4]
    assert sum(sources, []) == [f"{GE}/{i:02d}.dcm" for i in range(28, 0, -1)]  # head to foot, each slice once
    assert list(frame["slice_id"]) == [f"{s[0][-6:-4]}..{s[-1][-6:-4]}" for s in sources]
    assert np.all(np.diff(frame["position"]) < 0)
    (entry,) = json.loads((out / "predictions.json").read_text())["series"]
    assert [s["sources"] for s in entry["slices"]] == sources
    assert any(n.startswith("averaged into 6 slabs of ~5 mm (4-5 slices each)") for n in entry["notes"])

    order = paths[::-1]  # head to foot
    task = SeriesTask("s", "t", "p", folder, tuple(os.path.relpath(p, folder) for p in order), tuple(range(28)),
                      tuple(float(-k) for k in range(28)), 1.0, 512, 512)
    volume, groups, _, errors, _ = _slab_volume(task, DEFAULT_WINDOWS, "head", 5.0)
    assert not errors and [list(g) for g in groups][0] == [0, 1, 2, 3, 4]
    total = np.zeros((512, 512))
    for p in order[:5]:
        total += read_hu(p)
    np.testing.assert_array_equal(volume[0], apply_windows(total / 5, DEFAULT_WINDOWS))


# --- prepare ----------------------------------------------------------------------------------

def test_prepare_leaves_out_localizers_and_secondary_captures(tmp_path):
    from medseg.constants import TEST_DIR
    from medseg.data.prepare import prepare

    raw = tmp_path / "raw" / TEST_DIR
    os.makedirs(raw)
    for name in ("13.dcm", "14.dcm", "15.dcm"):
        shutil.copyfile(os.path.join(real(GE), name), raw / f"ge_{name}")
    shutil.copyfile(os.path.join(real(LOCALIZER), "I10"), raw / "localizer.dcm")
    for name in os.listdir(real(SUMMARY)):
        shutil.copyfile(os.path.join(real(SUMMARY), name), raw / f"summary_{name}.dcm")
    summary = prepare(str(tmp_path / "raw"), str(tmp_path / "prepared"), workers=1)
    assert summary.series["test"] == 1 and summary.slices["test"] == 3  # the GE slices only
    assert dict(summary.triaged) == {"localizer": 1, "secondary capture": 1}
    assert "series left out by triage (localizers, secondary captures, reports): 2" in summary.format()
    errors = pd.read_csv(tmp_path / "prepared" / "prepare_errors.csv")
    why = dict(zip(errors["file"], errors["reason"]))
    assert why[f"{TEST_DIR}/localizer.dcm"].startswith("localizer: ImageType")
    assert {why[f"{TEST_DIR}/summary_I{k}0.dcm"].split(":")[0] for k in (1, 2, 3)} == {"secondary capture"}
    for k in (4, 5, 6):  # the colour pages: rejected by the header scan already
        assert why[f"{TEST_DIR}/summary_I{k}0.dcm"] == "colour image (SamplesPerPixel=3, RGB), expected greyscale"
