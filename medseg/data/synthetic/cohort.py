"""A whole synthetic cohort in the Kaggle RSNA layout, generated in parallel over series.

Every series is a pure function of (seed, series index), so the files do not depend on the number
of workers. Cohort-level choices (test patients, the one truncated file, duplicated CSV rows, row
order) come from their own seeded streams. A manifest written last marks a complete cohort; a
rerun with the same parameters reuses it instead of regenerating.
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import time
from collections import Counter

import numpy as np
from tqdm import tqdm

from medseg.constants import LABELS, SAMPLE_SUBMISSION_CSV, TEST_DIR, TEST_TRUTH_CSV, TRAIN_CSV, TRAIN_DIR
from medseg.data.synthetic import ids
from medseg.data.synthetic.dicom_writer import write_series
from medseg.data.synthetic.series import synthesize_series
from medseg.data.synthetic.sites import CLASSIC, parse_sites
from medseg.utils.atomic import atomic_open, atomic_write_json
from medseg.utils.logger import get_logger

MANIFEST = "synthetic_cohort.json"
GENERATOR_VERSION = 1
# A few slices are listed twice in stage_2_train.csv, as in the real file (4 of 752 807 groups);
# at least two so that small cohorts exercise the de-duplication too.
DUPLICATES_PER_SLICE = 1 / 5000
MIN_DUPLICATES = 2

logger = get_logger("synthetic")


def _split_patients(seed: int, patients: np.ndarray, test_fraction: float) -> set[int]:
    """Test patients: a seeded, patient-grouped share (at least one patient left on each side)."""
    unique = np.unique(patients)
    n_test = int(round(test_fraction * len(unique)))
    if test_fraction > 0 and len(unique) >= 2:
        n_test = min(max(n_test, 1), len(unique) - 1)
    rng = np.random.default_rng([seed, 3])
    return set(int(p) for p in rng.permutation(unique)[:n_test])


def _make_series(task: tuple) -> dict:
    """Worker: synthesise one series, write its files, return what the CSVs and summary need."""
    seed, index, size, n_slices, folder, truncate_at, sites = task
    series = synthesize_series(seed, index, size, n_slices=n_slices, sites=sites)
    truncate = None if truncate_at is None else min(int(truncate_at * len(series.sop_ids)), len(series.sop_ids) - 1)
    write_series(series, folder, truncate_slice=truncate)
    return {
        "index": index, "sop_ids": series.sop_ids, "labels": series.labels.tolist(),
        "quirk": series.quirk, "window_mode": series.window_mode, "ascending": series.ascending, "site": series.site,
        "patient_id": series.patient_id, "study_id": series.study_id,
        "truncated": None if truncate is None else series.sop_ids[truncate],
    }


def _label_csv(path: str, rows: list[tuple[str, list[int]]]) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("ID,Label\n")
        for sop, labels in rows:
            fh.writelines(f"{sop}_{name},{int(value)}\n" for name, value in zip(LABELS, labels))


def _write_csvs(out_dir: str, seed: int, records: list[dict], test_series: set[int]) -> list[str]:
    """The three Kaggle CSVs; returns the SOP ids listed twice in the train CSV."""
    rng = np.random.default_rng([seed, 4])
    train = [(sop, lab) for r in records if r["index"] not in test_series for sop, lab in zip(r["sop_ids"], r["labels"])]
    test = [(sop, lab) for r in records if r["index"] in test_series for sop, lab in zip(r["sop_ids"], r["labels"])]
    train = [train[i] for i in rng.permutation(len(train))]
    n_dup = min(len(train), max(MIN_DUPLICATES, int(round(len(train) * DUPLICATES_PER_SLICE))))
    duplicated = [train[i] for i in sorted(rng.choice(len(train), size=n_dup, replace=False))]
    for row in duplicated:
        train.insert(int(rng.integers(0, len(train) + 1)), row)
    _label_csv(os.path.join(out_dir, TRAIN_CSV), train)
    _label_csv(os.path.join(out_dir, TEST_TRUTH_CSV), [test[i] for i in rng.permutation(len(test))])
    with atomic_open(os.path.join(out_dir, SAMPLE_SUBMISSION_CSV), "w", encoding="utf-8", newline="") as fh:
        fh.write("ID,Label\n")
        for i in rng.permutation(len(test)):
            fh.writelines(f"{test[i][0]}_{name},0.5\n" for name in LABELS)
    return [sop for sop, _ in duplicated]


def _split_summary(records: list[dict]) -> dict:
    labels = np.array([lab for r in records for lab in r["labels"]], dtype=np.float64).reshape(-1, len(LABELS))
    return {
        "patients": len({r["patient_id"] for r in records}),
        "studies": len({r["study_id"] for r in records}),
        "series": len(records),
        "slices": int(labels.shape[0]),
        "prevalence": {name: (round(float(labels[:, j].mean()), 4) if len(labels) else 0.0)
                       for j, name in enumerate(LABELS)},
    }


def _prepare_out_dir(out_dir: str, params: dict, overwrite: bool) -> dict | None:
    """The saved summary if ``out_dir`` already holds this exact cohort; else make room for it."""
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
        if manifest.get("params") == params and not overwrite:
            return manifest
    existing = [p for d in (TRAIN_DIR, TEST_DIR) for p in glob.glob(os.path.join(out_dir, d, "*.dcm"))]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {len(existing)} DICOM files of another cohort (or an interrupted run); "
            "choose an empty --out or pass --overwrite to replace them"
        )
    for path in existing + [os.path.join(out_dir, n) for n in (MANIFEST, TRAIN_CSV, TEST_TRUTH_CSV, SAMPLE_SUBMISSION_CSV)]:
        if os.path.exists(path):
            os.remove(path)
    return None


def generate_cohort(out_dir: str, n_series: int, seed: int, size: int = 512, test_fraction: float = 0.2,
                    workers: int = 1, n_slices: int | None = None, overwrite: bool = False,
                    sites: str | tuple[str, ...] = CLASSIC) -> dict:
    """Write the Kaggle layout under ``out_dir`` and return the summary (see ``format_summary``).

    ``n_slices`` fixes the length of every series (tests); ``overwrite`` replaces the DICOM files
    and CSVs of a different cohort found in ``out_dir``; ``sites`` (``"all"``, ``"smooth,sharp"``
    …) are the scanner sites the series are spread over (``sites`` module).
    """
    sites = parse_sites(sites)
    if n_series < 2:
        raise ValueError(f"n_series must be at least 2 (one train and one test series), got {n_series}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    start = time.perf_counter()
    params = {"version": GENERATOR_VERSION, "seed": seed, "n_series": n_series, "size": size,
              "test_fraction": test_fraction, "n_slices": n_slices}
    if sites != (CLASSIC,):  # a classic cohort keeps the manifest it had before sites existed
        params["sites"] = list(sites)
    saved = _prepare_out_dir(out_dir, params, overwrite)
    if saved is not None:
        logger.info("%s already holds this cohort (%s); reusing it", out_dir, MANIFEST)
        return {**saved["summary"], "out_dir": out_dir, "seconds": 0.0, "reused": True}

    patients = ids.patient_indices(seed, n_series)
    test_patients = _split_patients(seed, patients, test_fraction)
    test_series = {i for i in range(n_series) if int(patients[i]) in test_patients}
    train_series = [i for i in range(n_series) if i not in test_series]
    rng = np.random.default_rng([seed, 5])
    truncated_series, truncate_at = int(rng.choice(train_series)), float(rng.random())
    for folder in (TRAIN_DIR, TEST_DIR):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    tasks = [(seed, i, size, n_slices, os.path.join(out_dir, TEST_DIR if i in test_series else TRAIN_DIR),
              truncate_at if i == truncated_series else None, sites) for i in range(n_series)]

    bar = dict(total=n_series, desc="synthetic series", unit="series")
    if workers == 1:
        records = [_make_series(t) for t in tqdm(tasks, **bar)]
    else:
        with multiprocessing.get_context("spawn").Pool(min(workers, n_series)) as pool:
            records = list(tqdm(pool.imap(_make_series, tasks), **bar))
    duplicated = _write_csvs(out_dir, seed, records, test_series)

    truncated = next(r["truncated"] for r in records if r["truncated"])
    summary = {
        "seed": seed, "size": size, "n_series": n_series, "test_fraction": test_fraction,
        "splits": {"train": _split_summary([r for r in records if r["index"] not in test_series]),
                   "test": _split_summary([r for r in records if r["index"] in test_series])},
        "sites": {name: sum(r["site"] == name for r in records) for name in sites},
        "quirks": dict(sorted(Counter(r["quirk"] for r in records).items())),
        "window_modes": dict(sorted(Counter(r["window_mode"] for r in records).items())),
        "z_order": {"ascending": sum(r["ascending"] for r in records),
                    "descending": sum(not r["ascending"] for r in records)},
        "truncated_file": f"{TRAIN_DIR}/{truncated}.dcm",
        "duplicated_slices": duplicated,
    }
    atomic_write_json(os.path.join(out_dir, MANIFEST), {"params": params, "summary": summary})
    return {**summary, "out_dir": out_dir, "seconds": round(time.perf_counter() - start, 2), "reused": False}


def format_summary(summary: dict) -> str:
    """Human-readable summary for the CLI."""
    head = f"{'split':<6}{'patients':>9}{'studies':>9}{'series':>8}{'slices':>8}  " + \
        "  ".join(f"{name[:8]:>8}" for name in LABELS)
    lines = [f"synthetic RSNA cohort in {summary['out_dir']} (seed {summary['seed']}, {summary['size']} px)"
             + (" [reused]" if summary.get("reused") else ""), head]
    for split, s in summary["splits"].items():
        lines.append(f"{split:<6}{s['patients']:>9}{s['studies']:>9}{s['series']:>8}{s['slices']:>8}  "
                     + "  ".join(f"{s['prevalence'][name]:>8.3f}" for name in LABELS))
    lines.append("sites: " + ", ".join(f"{k} {v}" for k, v in summary.get("sites", {CLASSIC: summary["n_series"]}).items()))
    lines.append("pixel quirks: " + ", ".join(f"{k} {v}" for k, v in summary["quirks"].items()))
    lines.append("window tags: " + ", ".join(f"{k} {v}" for k, v in summary["window_modes"].items()))
    lines.append("z order: " + ", ".join(f"{k} {v}" for k, v in summary["z_order"].items()))
    lines.append(f"truncated PixelData: {summary['truncated_file']}; listed twice in {TRAIN_CSV}: "
                 + ", ".join(summary["duplicated_slices"]))
    lines.append(f"seconds: {summary['seconds']:.1f}")
    return "\n".join(lines)
