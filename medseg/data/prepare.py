"""``python -m medseg.data.prepare``: Kaggle layout → meta tables + windowed series cache.

Steps: header scan (parallel, :mod:`medseg.data.scan`) → label table and file/label check →
series assembly → per-series cache (parallel, resumable, :mod:`medseg.data.series_volume`) →
patient folds and ``{train,val,test}_meta.csv`` + ``prepare_errors.csv`` + the manifest
``prepare.json`` (:mod:`medseg.data.prepare_tables`) → printed summary. A bad file is recorded and
skipped, never fatal. ``--crop released`` stores what the paper's released code feeds its model
(its crops and slice order; :mod:`medseg.data.crop`) instead of this project's head crops. The
workers (:mod:`medseg.utils.pool`) return values; this module only orchestrates.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.pool import Pool
from operator import attrgetter

import cv2
import numpy as np
import pandas as pd

from medseg.constants import DEFAULT_WINDOWS, LABELS, TEST_DIR, TRAIN_CSV, TRAIN_DIR
from medseg.data import cache as cache_io
from medseg.data.kaggle_tables import MismatchReport, label_file_mismatch, read_label_table
from medseg.data.crop import CROP_MODES, DEFAULT_CROP, check_crop_mode
from medseg.data.meta import MANIFEST, META_SUFFIX, PREPARED_TAGS, manifest_path, read_manifest
from medseg.data.prepare_tables import ERRORS_CSV, manifest, meta_table, split_tables, write_tables
from medseg.data.records import ErrorRow, SeriesRecord
from medseg.data.scan import TRIAGE_KIND, collect_headers, list_dicom_files, plan_tasks, scan_header
from medseg.data.series_volume import process_series
from medseg.data.split import check_n_folds
from medseg.data.windows import Window, format_windows, parse_windows
from medseg.dicom.header import SliceHeader
from medseg.predict.triage import rule_of
from medseg.utils.cli import ArgumentParser, run_cli
from medseg.utils.logger import get_logger
from medseg.utils.pool import default_workers, parallel_map, worker_pool

logger = get_logger("data.prepare")


@dataclass
class PrepareSummary:
    series: dict[str, int] = field(default_factory=dict)
    slices: dict[str, int] = field(default_factory=dict)
    prevalence: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    mismatch: MismatchReport | None = None
    reused: int = 0
    triaged: Counter = field(default_factory=Counter)  # series left out by series triage, per rule

    def count(self, tables: dict[str, pd.DataFrame]) -> None:
        """Series, slices and label prevalence of each split's meta table."""
        for split, frame in tables.items():
            self.series[split] = int(frame["series_id"].nunique())
            self.slices[split] = len(frame)
            self.prevalence[split] = {n: float(frame[n].mean()) if len(frame) else float("nan") for n in LABELS}

    def format(self) -> str:
        lines = ["split   series   slices  " + "  ".join(f"{name[:8]:>8}" for name in LABELS)]
        for split in PREPARED_TAGS:
            prev = self.prevalence.get(split, {})
            cells = "  ".join(f"{prev[n]:8.3f}" if n in prev and np.isfinite(prev[n]) else f"{'-':>8}" for n in LABELS)
            lines.append(f"{split:<6} {self.series.get(split, 0):>7} {self.slices.get(split, 0):>8}  {cells}")
        lines.append(f"errors: {sum(self.errors.values())} files (details in prepare_errors.csv)" + "".join(f"\n  {n:>6}  {kind}" for kind, n in sorted(self.errors.items())))
        if self.mismatch is not None:
            lines.append(f"labels vs files: {self.mismatch.summary()}")
        lines.append(f"series left out by triage (localizers, secondary captures, reports): {sum(self.triaged.values())}"
                     + "".join(f"\n  {n:>6}  {rule}" for rule, n in sorted(self.triaged.items())))
        lines.append(f"series reused from an earlier run: {self.reused}")
        return "\n".join(lines)


def _limit_threads() -> None:
    """Worker set-up: one OpenCV thread per worker, as the workers already fill the cores."""
    cv2.setNumThreads(1)


def _worker_pool(workers: int) -> AbstractContextManager[Pool | None]:
    """One pool for the whole run (scan and cache), this module preloaded in the fork server so
    workers start with everything they need imported; None for in-process work."""
    return worker_pool(workers, preload=[__name__], initializer=_limit_threads)


def _read_labels(raw_root: str, files: dict[str, list[str]]) -> tuple[pd.DataFrame | None, MismatchReport | None]:
    """The label table (None without a train split) and how it matches the train files."""
    if "train" not in files:
        return None, None
    csv_path = os.path.join(raw_root, TRAIN_CSV)
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"{csv_path}: label table missing for {TRAIN_DIR}/")
    labels = read_label_table(csv_path)
    mismatch = label_file_mismatch(labels.index, (os.path.splitext(os.path.basename(p))[0] for p in files["train"]))
    if not mismatch.ok:
        logger.warning("labels vs files: %s", mismatch.summary())
    return labels, mismatch


def _drop_unlabelled(headers: dict[str, list[SliceHeader]], labels: pd.DataFrame | None,
                     raw_root: str) -> tuple[dict[str, list[SliceHeader]], list[ErrorRow]]:
    """``headers`` without the train files that have no label rows, and an error row for each."""
    if labels is None:
        return headers, []
    labelled = set(labels.index)
    errors = [ErrorRow(os.path.relpath(h.path, raw_root), h.series_id, f"no label rows in {TRAIN_CSV}", "UnlabelledFile")
              for h in headers["train"] if h.slice_id not in labelled]
    return {**headers, "train": [h for h in headers["train"] if h.slice_id in labelled]}, errors


def prepare(
    raw_root: str,
    dataset_root: str,
    workers: int = 1,
    val_fraction: float = 0.1,
    seed: int = 42,
    windows: tuple[Window, ...] = DEFAULT_WINDOWS,
    val_fold: int = 0,
    fsync: bool = False,
    crop: str = DEFAULT_CROP,
    folds: int | None = None,
) -> PrepareSummary:
    """Run the whole preparation; safe to rerun (finished series made the same way are reused).
    ``fsync``: also wait for every cache file to reach the disk (see :mod:`medseg.data.cache`; the
    meta tables, the error list and the manifest are always fsynced). ``crop``: ``head`` or
    ``released`` (:mod:`medseg.data.crop`); another mode than the root's rebuilds every series.
    ``folds``: K patient folds for K-fold training (``medseg.tools.kfold``) instead of
    ``round(1 / val_fraction)``; fold ``val_fold`` is still written as ``val_meta.csv``."""
    check_crop_mode(crop, "prepare --crop")
    if folds is not None:
        check_n_folds(folds)  # before the long scan
    raw_root, dataset_root = os.path.abspath(raw_root), os.path.abspath(dataset_root)
    cache_dir = os.path.join(dataset_root, cache_io.CACHE_DIR)
    os.makedirs(cache_dir, exist_ok=True)
    cache_io.remove_stale_temporaries(cache_dir)
    cache_io.remove_stale_temporaries(dataset_root, [f"{tag}{META_SUFFIX}" for tag in PREPARED_TAGS] + [ERRORS_CSV, MANIFEST])
    wanted = manifest(crop, windows)
    previous = read_manifest(dataset_root)
    if previous is not None and previous != wanted:
        # The caches are about to change under the old tables: until the new manifest is written
        # with the new tables, the root says nothing about how it was made.
        logger.info("%s: prepared with %s before, now %s: rebuilding", dataset_root, previous, wanted)
        os.unlink(manifest_path(dataset_root))
    legacy = cache_io.legacy_files(cache_dir)
    if legacy:
        logger.warning("%s: %d series cached in the old format (uncompressed full-frame .npy, ~10x the disk): "
                       "rebuilding them as compressed head crops (%s); each .npy is deleted once its series is rebuilt",
                       cache_dir, len(legacy), cache_io.SUFFIX)
    summary = PrepareSummary()

    files = list_dicom_files(raw_root)
    records: dict[str, list[SeriesRecord]] = {"train": [], "test": []}
    with _worker_pool(workers) as pool:
        scan = parallel_map(scan_header, [path for paths in files.values() for path in paths], pool, "scan", "file", chunksize=64)
        labels, summary.mismatch = _read_labels(raw_root, files)  # while the workers scan
        scanned = collect_headers(scan, files, raw_root)
        headers, unlabelled = _drop_unlabelled(scanned.headers, labels, raw_root)
        tasks, assembly_errors = plan_tasks(headers, raw_root, crop)
        errors = scanned.errors + unlabelled + assembly_errors
        # Longest series first keeps the workers busy until the end.
        order = [task for _, task in sorted(tasks, key=lambda st: (-len(st[1].files), st[1].series_id))]
        split_of = {task.series_id: split for split, task in tasks}
        run = partial(process_series, dataset_root=dataset_root, windows=tuple(windows), durable=fsync, crop=crop)
        for record in parallel_map(run, order, pool, "cache", "series", name=attrgetter("series_id")):
            summary.reused += record.reused
            errors.extend(record.errors)
            if record.slice_ids:
                records[split_of[record.series_id]].append(record)
        if pool is not None:
            pool.close()  # the workers exit while the tables are written

        train, test = meta_table(records["train"], labels), meta_table(records["test"], None)
        tables = split_tables(train, test, val_fraction, seed, val_fold, folds)
        summary.count(tables)
        errors = sorted(set(errors))
        write_tables(dataset_root, tables, errors, wanted)
    summary.errors = Counter(e.kind for e in errors)
    summary.triaged = Counter(rule for _, rule in {(e.series_id, rule_of(e.reason)) for e in errors if e.kind == TRIAGE_KIND})
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m medseg.data.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--raw_root", required=True, help=f"folder holding {TRAIN_DIR}/, {TEST_DIR}/ and {TRAIN_CSV}")
    parser.add_argument("--dataset_root", required=True, help="output folder (meta CSVs, cache/, prepare_errors.csv)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="processes (default: all cores)")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of patients in val (folds = 1/val_fraction)")
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="K patient folds (stratified, as the val split) for K-fold training "
                             "(python -m medseg.tools.kfold); default: 1/val_fraction")
    parser.add_argument("--val_fold", type=int, default=0, help="which fold is written as val_meta.csv")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--windows", default=format_windows(DEFAULT_WINDOWS), help="CENTRE/WIDTH,... in HU")
    parser.add_argument("--crop", choices=CROP_MODES, default=DEFAULT_CROP,
                        help="head: this project's per-slice head box (default); released: exactly the crops and "
                             "slice order the paper's released code feeds its model (for its checkpoints and the "
                             "paper configs, whose datasets say crop: released)")
    parser.add_argument("--fsync", action="store_true",
                        help="fsync every cache file (survives a power cut; slower). Without it a rerun still "
                             "finds and rebuilds any cache file the disk lost")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        windows = parse_windows(args.windows)
    except ValueError as exc:
        parser.error(f"--windows: {exc}")

    def job() -> None:
        summary = prepare(args.raw_root, args.dataset_root, args.workers, args.val_fraction, args.seed, windows,
                          args.val_fold, args.fsync, args.crop, args.folds)
        print(summary.format())

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
