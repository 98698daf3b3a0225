"""The synthetic RSNA cohort: files, headers, quirks, labels and CSVs match the truth and Kaggle."""

from __future__ import annotations

import filecmp
import os
import re
import warnings
from collections import Counter

import numpy as np
import pytest

import medseg.dicom  # noqa: F401  (relaxed UID validation, as every reader in the project)
import pydicom
from medseg.constants import LABELS, SAMPLE_SUBMISSION_CSV, SUBTYPES, TEST_DIR, TEST_TRUTH_CSV, TRAIN_CSV, TRAIN_DIR
from medseg.data.synthetic import (PIXEL_QUIRKS, WINDOW_MODES, generate_cohort, min_positive_pixels, plan_series,
                                   synthesize_series)
from medseg.data.synthetic.__main__ import main as cli_main
from medseg.data.synthetic.dicom_writer import write_series

SEED, N_SERIES, SIZE, SLICES = 11, 6, 64, 5
SOP_RE = re.compile(r"^ID_[0-9a-f]{9}$")
ROW_RE = re.compile(r"^(ID_[0-9a-f]{9})_([a-z]+),([01])$")


def decode_hu(ds: pydicom.Dataset) -> np.ndarray:
    """The documented fix: slope/intercept, the RSNA 12-bit intercept rule, padding → air."""
    raw = ds.pixel_array.astype(np.int32)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    if int(ds.BitsStored) == 12 and int(ds.PixelRepresentation) == 0 and intercept > -100:
        raw = raw + 1000
        raw[raw >= 4096] -= 4096
        intercept = -1000.0
    return np.maximum(raw * slope + intercept, -1000).astype(np.int16)


def read_strict(path: str) -> pydicom.Dataset:
    """dcmread that fails on any warning: the files must not spam logs."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return pydicom.dcmread(path)


def read_label_csv(path: str) -> list[tuple[str, str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        lines = fh.read().split("\n")
    assert lines[0] == "ID,Label" and lines[-1] == "", f"{path}: header or final newline wrong"
    return [tuple(line.rsplit(",", 1)[0].rsplit("_", 1)) + (line.rsplit(",", 1)[1],) for line in lines[1:-1]]


def label_groups(path: str) -> list[tuple[str, list[int]]]:
    """Six rows per slice in LABELS order, exactly the Kaggle row format."""
    with open(path, encoding="utf-8") as fh:
        rows = fh.read().splitlines()[1:]
    assert len(rows) % 6 == 0
    groups = []
    for start in range(0, len(rows), 6):
        matches = [ROW_RE.match(row) for row in rows[start:start + 6]]
        assert all(matches), rows[start:start + 6]
        assert [m.group(2) for m in matches] == list(LABELS)
        assert len({m.group(1) for m in matches}) == 1
        groups.append((matches[0].group(1), [int(m.group(3)) for m in matches]))
    return groups


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cohort"))
    summary = cli_main(["--out", out, "--series", str(N_SERIES), "--seed", str(SEED), "--size", str(SIZE),
                        "--test_fraction", "0.34", "--n_slices", str(SLICES)])
    truth = {i: synthesize_series(SEED, i, SIZE, n_slices=SLICES) for i in range(N_SERIES)}
    return out, summary, truth


def test_plans_cover_every_quirk_direction_and_length():
    plans = [plan_series(3, i) for i in range(150)]
    assert set(p.pixel_quirk for p in plans) == set(PIXEL_QUIRKS)
    assert set(p.window_mode for p in plans) == set(WINDOW_MODES)
    assert {p.ascending for p in plans} == {True, False}
    lengths = [p.n_slices for p in plans]
    assert min(lengths) >= 20 and max(lengths) <= 80 and any(n > 60 for n in lengths)
    assert 0.25 <= np.mean([bool(p.subtypes) for p in plans]) <= 0.55
    assert any(len(p.subtypes) > 1 for p in plans)
    assert max(Counter(p.patient_id for p in plans).values()) > 1, "some patients must have several studies"
    assert len({p.study_id for p in plans}) == len(plans) == len({p.series_id for p in plans})


def test_label_rule_scales_with_pixel_area():
    assert min_positive_pixels(512) == 48
    assert min_positive_pixels(256) == 12
    assert min_positive_pixels(64) == 2


def test_series_is_pure_and_labels_follow_masks():
    index = next(i for i in range(40) if len(plan_series(SEED, i).subtypes) >= 2)
    a = synthesize_series(SEED, index, 96, n_slices=14)
    b = synthesize_series(SEED, index, 96, n_slices=14)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels) and a.sop_ids == b.sop_ids
    assert a.hu.dtype == np.int16 and a.hu.shape == (14, 96, 96)
    assert a.hu.min() >= -1000 and a.hu.max() <= 3000
    assert np.all(a.hu[:, ~a.fov] == -1000)
    steps = np.diff(a.positions)
    assert np.all(steps > 0) if a.ascending else np.all(steps < 0)
    for j, subtype in enumerate(SUBTYPES):
        counts = a.lesion_masks[subtype].sum(axis=(1, 2))
        assert np.array_equal(a.labels[:, j], (counts >= a.min_pixels).astype(np.uint8)), subtype
    assert np.array_equal(a.labels[:, 5], a.labels[:, :5].max(axis=1))
    for subtype in a.plan.subtypes:
        assert a.labels[:, SUBTYPES.index(subtype)].sum() >= 1, f"{subtype} planned but never labelled"
        assert a.hu[a.lesion_masks[subtype]].mean() > 40, f"{subtype} blood must be brighter than brain"
    other = synthesize_series(SEED + 1, index, 96, n_slices=14)
    assert not np.array_equal(a.hu, other.hu) and a.sop_ids != other.sop_ids


def test_every_quirk_decodes_to_the_true_hu(tmp_path):
    firsts = {}
    for i in range(100):
        firsts.setdefault(plan_series(SEED, i).pixel_quirk, i)
    assert set(firsts) == set(PIXEL_QUIRKS)
    for quirk, index in firsts.items():
        series = synthesize_series(SEED, index, SIZE, n_slices=3)
        for k, path in enumerate(write_series(series, str(tmp_path / quirk))):
            ds = read_strict(path)
            assert np.array_equal(decode_hu(ds), series.hu[k]), f"{quirk}: {path}"
            if quirk == "signed_padded":
                assert np.all(ds.pixel_array[~series.fov] == -2000)
            if quirk == "bug12":  # the naive decoding is wrong, as with the real files
                assert not np.array_equal(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
                                          series.hu[k])


def test_files_are_real_dicom_matching_the_truth(cohort):
    out, summary, truth = cohort
    assert sorted(os.listdir(out)) == sorted([TRAIN_DIR, TEST_DIR, TRAIN_CSV, SAMPLE_SUBMISSION_CSV, TEST_TRUTH_CSV,
                                              "synthetic_cohort.json"])
    by_sop = {sop: (i, k) for i, s in truth.items() for k, sop in enumerate(s.sop_ids)}
    seen, truncated, patients = set(), [], {TRAIN_DIR: set(), TEST_DIR: set()}
    for folder in (TRAIN_DIR, TEST_DIR):
        for name in os.listdir(os.path.join(out, folder)):
            path = os.path.join(out, folder, name)
            assert name.endswith(".dcm") and SOP_RE.match(name[:-4]), name
            with open(path, "rb") as fh:
                assert fh.read(132)[128:] == b"DICM"
            ds = read_strict(path)
            i, k = by_sop[name[:-4]]
            series = truth[i]
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
            assert ds.SOPInstanceUID == name[:-4] and ds.PatientID == series.patient_id
            assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (series.study_id, series.series_id)
            assert all(re.match(r"^ID_[0-9a-f]+$", v) for v in (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID))
            assert int(ds.InstanceNumber) == k + 1 and float(ds.ImagePositionPatient[2]) == series.positions[k]
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert float(ds.PixelSpacing[0]) == series.pixel_mm and (ds.Rows, ds.Columns) == (SIZE, SIZE)
            assert ("WindowCenter" in ds) == (series.window_mode != "absent")
            patients[folder].add(ds.PatientID)
            seen.add(name[:-4])
            try:
                hu = decode_hu(ds)
            except ValueError:
                truncated.append((folder, name))
                continue
            assert np.array_equal(hu, series.hu[k]), path
    assert seen == set(by_sop)
    assert len(truncated) == 1 and truncated[0][0] == TRAIN_DIR
    assert summary["truncated_file"] == f"{TRAIN_DIR}/{truncated[0][1]}"
    assert patients[TRAIN_DIR] and patients[TEST_DIR] and not patients[TRAIN_DIR] & patients[TEST_DIR]


def test_csvs_match_kaggle_and_the_truth(cohort):
    out, summary, truth = cohort
    labels = {sop: s.labels[k].tolist() for s in truth.values() for k, sop in enumerate(s.sop_ids)}
    train_files = {n[:-4] for n in os.listdir(os.path.join(out, TRAIN_DIR))}
    test_files = {n[:-4] for n in os.listdir(os.path.join(out, TEST_DIR))}

    train = label_groups(os.path.join(out, TRAIN_CSV))
    counts = Counter(sop for sop, _ in train)
    assert set(counts) == train_files, "every train slice, the truncated one included, has label rows"
    twice = sorted(sop for sop, n in counts.items() if n == 2)
    assert len(twice) >= 2 and max(counts.values()) == 2 and twice == sorted(summary["duplicated_slices"])
    assert all(values == labels[sop] for sop, values in train)
    assert [sop for sop, _ in train] != sorted(sop for sop, _ in train), "slice order is shuffled"

    truth_groups = label_groups(os.path.join(out, TEST_TRUTH_CSV))
    assert sorted(sop for sop, _ in truth_groups) == sorted(test_files)
    assert all(values == labels[sop] for sop, values in truth_groups)

    rows = read_label_csv(os.path.join(out, SAMPLE_SUBMISSION_CSV))
    assert len(rows) == 6 * len(test_files)
    assert [name for _, name, _ in rows] == list(LABELS) * len(test_files)
    assert {sop for sop, _, _ in rows} == test_files and {value for _, _, value in rows} == {"0.5"}

    train_summary = summary["splits"]["train"]
    assert train_summary["slices"] == len(train_files) and summary["splits"]["test"]["slices"] == len(test_files)
    unique = np.array([labels[sop] for sop in train_files], dtype=float)
    assert train_summary["prevalence"]["any"] == round(float(unique[:, 5].mean()), 4)


def test_same_seed_same_bytes_any_workers_other_seed_differs(cohort, tmp_path):
    out, _, _ = cohort
    again = str(tmp_path / "again")
    generate_cohort(again, N_SERIES, SEED, size=SIZE, test_fraction=0.34, workers=2, n_slices=SLICES)
    compare = filecmp.dircmp(out, again)
    assert not compare.left_only and not compare.right_only
    for folder in ("", TRAIN_DIR, TEST_DIR):
        names = sorted(os.listdir(os.path.join(out, folder)) if folder else
                       [n for n in os.listdir(out) if os.path.isfile(os.path.join(out, n))])
        _, mismatch, errors = filecmp.cmpfiles(os.path.join(out, folder), os.path.join(again, folder), names,
                                               shallow=False)
        assert not mismatch and not errors, (folder, mismatch, errors)

    other = str(tmp_path / "other")
    generate_cohort(other, N_SERIES, SEED + 1, size=SIZE, test_fraction=0.34, n_slices=SLICES)
    assert not set(os.listdir(os.path.join(out, TRAIN_DIR))) & set(os.listdir(os.path.join(other, TRAIN_DIR)))
    with open(os.path.join(out, TRAIN_CSV)) as a, open(os.path.join(other, TRAIN_CSV)) as b:
        assert a.read() != b.read()


def test_rerun_reuses_a_complete_cohort_and_never_clobbers_another(cohort):
    out, summary, _ = cohort
    mtime = os.path.getmtime(os.path.join(out, TRAIN_CSV))
    again = generate_cohort(out, N_SERIES, SEED, size=SIZE, test_fraction=0.34, n_slices=SLICES)
    assert again["reused"] and again["splits"] == summary["splits"]
    assert os.path.getmtime(os.path.join(out, TRAIN_CSV)) == mtime
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate_cohort(out, N_SERIES, SEED + 5, size=SIZE, n_slices=SLICES)
