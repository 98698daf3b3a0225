"""The synthetic RSNA cohort: files, headers, quirks, labels and CSVs match the truth and Kaggle."""

from __future__ import annotations

import filecmp
import os
import re
import warnings
from collections import Counter

import numpy as np
import pytest

import pydicom
from dicom_fixtures import read_hu
from medseg.constants import LABELS, SAMPLE_SUBMISSION_CSV, SUBTYPES, TEST_DIR, TEST_TRUTH_CSV, TRAIN_CSV, TRAIN_DIR
from medseg.data.synthetic import (PIXEL_QUIRKS, WINDOW_MODES, generate_cohort, min_positive_pixels, plan_series,
                                   synthesize_series)
from medseg.data.synthetic.__main__ import generate as cli_generate
from medseg.data.synthetic.anatomy import build_head, draw_head_params
from medseg.data.synthetic.dicom_writer import write_series
from medseg.data.synthetic.lesions import _extra_axial, _intraparenchymal, _subarachnoid
from medseg.data.synthetic.sites import SITES, SiteParams, parse_sites
from medseg.dicom.validation import convert_elements, disable_value_validation

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
    """dcmread that fails on any warning: the files must not spam logs (read as our reader does,
    with the RSNA-style ids' UID validation off)."""
    with warnings.catch_warnings(), disable_value_validation():
        warnings.simplefilter("error")
        return convert_elements(pydicom.dcmread(path))


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
    summary = cli_generate(["--out", out, "--series", str(N_SERIES), "--seed", str(SEED), "--size", str(SIZE),
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


@pytest.mark.slow  # multi-process
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


# --------------------------------------------------------------------------- scanner sites
# Each factor is switched on alone over the neutral site path (every factor off) for the same
# series; the difference must show in the pixels read back from the written DICOM files with the
# project's reader. Factors draw from their own streams, so nothing else changes.

SITE_SEED, SITE_SIZE = 5, 96
QUIET = SiteParams(site="neutral", slices=30)  # noise-free: a factor's effect is the whole difference


def site_series(tmp_path, params: SiteParams, index: int | None = None, size: int = SITE_SIZE):
    """(truth, HU read back from the DICOM files in InstanceNumber order)."""
    if index is None:
        index = next(i for i in range(50) if not plan_series(SITE_SEED, i).subtypes)
    series = synthesize_series(SITE_SEED, index, size, site_params=params)
    folder = tmp_path / f"{params.site}_{abs(hash(params))}"
    paths = write_series(series, str(folder))
    hu = np.maximum(np.stack([read_hu(p) for p in paths]), -1000).astype(np.int16)  # padding → air
    assert np.array_equal(hu, series.hu), "the reader decodes exactly what was written"
    return series, hu


def low_high(series) -> tuple[np.ndarray, np.ndarray]:
    """Slice indices of the lowest and highest third of the head (by z)."""
    order = np.argsort(series.positions)
    third = len(order) // 3
    return order[:third], order[-third:]


def grad_energy(hu: np.ndarray) -> float:
    return float(np.mean(np.abs(np.diff(hu.astype(np.float32), axis=-1))))


def test_site_option_parses_and_classic_is_the_old_generator(tmp_path):
    assert parse_sites("all") == SITES and len(SITES) >= 5 and "classic" in SITES
    assert parse_sites("smooth, sharp,smooth") == ("smooth", "sharp")
    with pytest.raises(ValueError, match="unknown site"):
        parse_sites("smooth,nowhere")
    plans = [plan_series(3, i, sites=SITES) for i in range(60)]
    assert {p.site for p in plans} == set(SITES)
    old = synthesize_series(SEED, 2, SIZE, n_slices=SLICES)
    assert np.array_equal(old.hu, synthesize_series(SEED, 2, SIZE, n_slices=SLICES, sites=("classic",)).hu)
    looks = {site: synthesize_series(SEED, 2, SIZE, n_slices=SLICES, sites=(site,)) for site in SITES}
    assert all(np.array_equal(s.hu, synthesize_series(SEED, 2, SIZE, n_slices=SLICES, sites=(site,)).hu)
               for site, s in looks.items()), "deterministic per seed"
    hus = [s.hu for s in looks.values()]
    assert all(not np.array_equal(a, b) for k, a in enumerate(hus) for b in hus[k + 1:]), "every site looks different"


def test_cohort_spreads_series_over_the_chosen_sites(tmp_path):
    summary = cli_generate(["--out", str(tmp_path / "c"), "--series", "8", "--seed", "2", "--size", "48",
                            "--n_slices", "3", "--sites", "sharp,legacy"])
    assert set(summary["sites"]) == {"sharp", "legacy"} and sum(summary["sites"].values()) == 8
    ds = read_strict(next(str(p) for p in (tmp_path / "c" / TRAIN_DIR).iterdir()))
    assert 2.0 <= float(ds.SliceThickness) <= 7.0


def test_noise_level(tmp_path):
    series, off = site_series(tmp_path, QUIET)
    _, low = site_series(tmp_path, SiteParams(site="n4", slices=30, noise_sd=4.0))
    _, high = site_series(tmp_path, SiteParams(site="n12", slices=30, noise_sd=12.0))
    inside = np.broadcast_to(series.fov, off.shape) & (off > -500) & (off < 1000)
    sd_low, sd_high = (float((x - off)[inside].std()) for x in (low, high))
    scale = float(np.clip(0.5 / series.pixel_mm, 0.35, 1.0))
    assert sd_low == pytest.approx(4.0 * scale, rel=0.25) and sd_high == pytest.approx(12.0 * scale, rel=0.25)


def test_noise_grain_follows_the_kernel(tmp_path):
    _, off = site_series(tmp_path, QUIET)
    corr = {}
    for name, params in {"fine": SiteParams(site="white", slices=30, noise_sd=10.0),
                         "coarse": SiteParams(site="coarse", slices=30, noise_sd=10.0, grain_mm=3.0),
                         "sharp": SiteParams(site="sharpn", slices=30, noise_sd=10.0, sharpen=1.0)}.items():
        _, on = site_series(tmp_path, params)
        noise = (on - off).astype(np.float64)[:, 20:-20, 20:-20]
        corr[name] = float(np.corrcoef(noise[..., 1:].ravel(), noise[..., :-1].ravel())[0, 1])
    assert abs(corr["fine"]) < 0.1 and corr["coarse"] > 0.5 and corr["sharp"] < -0.05, corr


def test_reconstruction_kernel_smooth_and_sharp(tmp_path):
    _, off = site_series(tmp_path, QUIET)
    _, smooth = site_series(tmp_path, SiteParams(site="smooth_k", slices=30, kernel_mm=1.5))
    _, sharp = site_series(tmp_path, SiteParams(site="sharp_k", slices=30, sharpen=1.0))
    assert grad_energy(smooth) < 0.8 * grad_energy(off) < 0.8 * grad_energy(sharp)


def test_slice_thickness_partial_volume(tmp_path):
    index = next(i for i in range(200) if plan_series(SITE_SEED, i).subtypes
                 and set(plan_series(SITE_SEED, i).subtypes) <= {"intraparenchymal", "intraventricular"})
    series, off = site_series(tmp_path, QUIET, index=index)
    _, thick = site_series(tmp_path, SiteParams(site="thick", slices=30, thickness_mm=2 * series.plan.spacing_mm),
                           index=index)
    along_z = lambda v: float(np.mean(np.abs(np.diff(v.astype(np.float32), axis=0))))  # noqa: E731
    assert along_z(thick) < 0.85 * along_z(off)
    blood = np.zeros(off.shape, bool)
    for mask in series.lesion_masks.values():
        blood |= mask
    # Blood at the top or bottom of a bleed (a z neighbour is brain, neither neighbour is bone).
    order = np.argsort(series.positions)
    below, above = order[:-2], order[2:]
    edge = np.zeros(off.shape, bool)
    edge[order[1:-1]] = (off[below] < 100) & (off[above] < 100) & ~(blood[below] & blood[above])
    blood &= edge
    assert blood.sum() > 20 and thick[blood].mean() < off[blood].mean() - 5, "bleeds lose contrast in thick slices"


def test_falx(tmp_path):
    series, off = site_series(tmp_path, QUIET)
    _, on = site_series(tmp_path, SiteParams(site="falx", slices=30, falx_hu=80.0))
    changed = (on - off) > 10
    low, high = low_high(series)
    per_slice = changed.sum(axis=(1, 2))
    assert per_slice[high].sum() > 40 and per_slice[low].sum() < per_slice[high].sum() / 4
    assert per_slice.max() < 3 * SITE_SIZE, "a thin sheet: about one line per slice"
    assert (on - off)[changed].mean() > 15


def test_tentorium(tmp_path):
    series, off = site_series(tmp_path, QUIET)
    _, on = site_series(tmp_path, SiteParams(site="tent", slices=30, tentorium_hu=70.0))
    changed = (np.abs(on - off) > 10).sum(axis=(1, 2))
    low, high = low_high(series)
    assert changed.sum() > 20 and changed[high].sum() == 0, "a tent over the posterior fossa only"


@pytest.mark.parametrize("factor", ["pineal_hu", "plexus_hu"])
def test_calcifications(tmp_path, factor):
    series, off = site_series(tmp_path, QUIET)
    _, on = site_series(tmp_path, SiteParams(site=factor, slices=30, **{factor: 300.0}))
    bright = (on - off) > 60
    assert 0 < bright.sum() < 400 and on[bright].max() > 150
    assert not bright[low_high(series)[0]].any() and not bright[low_high(series)[1]].any(), "deep, mid-scan structures"


def test_dural_plaques(tmp_path):
    _, off = site_series(tmp_path, QUIET)
    _, on = site_series(tmp_path, SiteParams(site="dura", slices=30, dural_plaques=3))
    bright = (on - off) > 100
    assert 0 < bright.sum() < 2000 and on[bright].min() > 150


def test_skull_base_mastoid_air(tmp_path):
    series, off = site_series(tmp_path, QUIET)
    _, on = site_series(tmp_path, SiteParams(site="mastoid", slices=30, mastoid=True))
    air = (on < -500) & (off > -500)
    low, high = low_high(series)
    assert air[low].sum() > 5 and not air[high].any()
    assert ((on > 700) & (off < 700))[low].sum() > 5, "dense petrous bone around the air cells"


def test_beam_hardening_streaks_near_bone(tmp_path):
    series, off = site_series(tmp_path, QUIET)
    _, on = site_series(tmp_path, SiteParams(site="streak", slices=30, streak_hu=60.0))
    dark = (on - off) < -10
    low, high = low_high(series)
    assert dark[low].sum() > 20 and dark[low].sum() > 5 * dark[high].sum()
    assert (on - off).max() <= 0, "beam hardening darkens"


def test_motion_blurs_a_run_of_slices(tmp_path):
    _, off = site_series(tmp_path, QUIET)
    _, on = site_series(tmp_path, SiteParams(site="motion", slices=30, motion_px=4.0))
    moved = np.flatnonzero(np.any(on != off, axis=(1, 2)))
    assert 0 < len(moved) < len(on) and np.all(np.diff(moved) == 1), "one contiguous run"
    assert grad_energy(on[moved]) < 0.9 * grad_energy(off[moved])


def test_head_size_shape_and_position(tmp_path):
    def head_stats(hu):
        mid = (hu[len(hu) // 2] > -50) & (hu[len(hu) // 2] < 100)  # soft tissue: not the headrest
        rows, cols = np.nonzero(mid)
        return mid.sum(), rows.mean(), cols.mean(), np.ptp(rows) / max(np.ptp(cols), 1)

    base = head_stats(site_series(tmp_path, SiteParams(site="h0", slices=30, head_shift=(0.0, 0.0)))[1])
    small = head_stats(site_series(tmp_path, SiteParams(site="h1", slices=30, head_shift=(0.0, 0.0), head_scale=0.8))[1])
    long = head_stats(site_series(tmp_path, SiteParams(site="h2", slices=30, head_shift=(0.0, 0.0), head_aspect=1.2))[1])
    moved = head_stats(site_series(tmp_path, SiteParams(site="h3", slices=30, fov_mm=330.0, head_shift=(0.9, -0.9)))[1])
    assert small[0] < 0.75 * base[0]
    assert long[3] > base[3] * 1.08
    assert moved[2] > SITE_SIZE / 2 + 5 and moved[1] < SITE_SIZE / 2 - 5


def test_field_of_view_and_matrix(tmp_path):
    series, off = site_series(tmp_path, SiteParams(site="f0", slices=30, fov_mm=230.0, head_shift=(0.0, 0.0)))
    wide, hu_wide = site_series(tmp_path, SiteParams(site="f1", slices=30, fov_mm=330.0, head_shift=(0.0, 0.0)))
    ds = read_strict(write_series(wide, str(tmp_path / "fov"))[0])
    assert float(ds.PixelSpacing[0]) == pytest.approx(330.0 / SITE_SIZE, abs=1e-4)
    area = lambda hu: (hu[len(hu) // 2] > -500).sum()  # noqa: E731
    assert area(hu_wide) == pytest.approx(area(off) * (230.0 / 330.0) ** 2, rel=0.15)
    _, coarse = site_series(tmp_path, SiteParams(site="f2", slices=30, fov_mm=230.0, head_shift=(0.0, 0.0), matrix=0.5))
    assert coarse.shape == off.shape and grad_energy(coarse) < 0.85 * grad_energy(off)


def test_scanner_hu_offset(tmp_path):
    series, off = site_series(tmp_path, QUIET)
    _, on = site_series(tmp_path, SiteParams(site="offset", slices=30, hu_offset=7.0))
    tissue = (off > -100) & (off < 200)
    assert np.median((on - off)[tissue]) == 7


def test_hard_lesions_are_thin_focal_isodense_and_next_to_bone():
    rng = np.random.default_rng(0)
    positions = np.linspace(-60.0, 90.0, 30)
    head = build_head(draw_head_params(rng, 250.0, -60.0, 90.0), rng, 128, 250.0 / 128, positions)
    thin = [head.inner[_extra_axial(head, np.random.default_rng(k), False, thin=True)] for k in range(5)]
    thick = [head.inner[_extra_axial(head, np.random.default_rng(k), False)] for k in range(5)]
    assert max(t.max() for t in thin if t.size) <= 3.0 < max(t.max() for t in thick if t.size)
    focal = np.mean([_subarachnoid(head, np.random.default_rng(k), focal=True).sum() for k in range(5)])
    broad = np.mean([_subarachnoid(head, np.random.default_rng(k)).sum() for k in range(5)])
    assert 0 < focal < broad / 3
    field = np.zeros(head.inner.shape, np.float32)
    contusion = [head.inner[_intraparenchymal(head, np.random.default_rng(k), field, contusion=True)[0]] for k in range(5)]
    assert min(float(np.median(c)) for c in contusion if c.size) < 8.0
    # isodense subacute subdurals appear among the hard series, labelled, a few HU over brain
    contrasts = [synthesize_series(1, i, 48, n_slices=6, site_params=SiteParams(site="hard", hard_lesions=True))
                 .contrast.get("subdural") for i in range(80) if "subdural" in plan_series(1, i).subtypes]
    assert any(c is not None and c < 10 for c in contrasts) and any(c is not None and c > 50 for c in contrasts)
