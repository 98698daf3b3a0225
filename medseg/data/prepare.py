"""``python -m medseg.data.prepare``: Kaggle layout → meta tables + windowed series cache.

Steps: header scan (parallel) → label table and file/label check → series assembly → patient
folds → per-series cache (parallel, resumable) → ``{train,val,test}_meta.csv`` and
``prepare_errors.csv`` → printed summary. A bad file is recorded and skipped, never fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.pool import Pool

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from medseg.constants import DEFAULT_WINDOWS, LABELS, TEST_DIR, TRAIN_CSV, TRAIN_DIR
from medseg.data import cache as cache_io
from medseg.data.kaggle_tables import MismatchReport, label_file_mismatch, read_label_table
from medseg.data.meta import CROP_COLUMNS, META_COLUMNS, META_SUFFIX, PREPARED_TAGS, meta_path, sort_meta, write_meta
from medseg.data.series_volume import SeriesTask, process_series
from medseg.data.split import assign_folds
from medseg.data.windows import Window, format_windows, parse_windows
from medseg.dicom.errors import DicomReadError
from medseg.dicom.header import SliceHeader, read_header
from medseg.dicom.series import Series, group_series
from medseg.utils.atomic import atomic_write_csv
from medseg.utils.cli import ArgumentParser, run_cli
from medseg.utils.logger import get_logger

logger = get_logger("data.prepare")

# What the meta tables need from a series record (the rest, e.g. its input list, is dropped).
RECORD_FIELDS = ("series_id", "study_id", "patient_id", "slice_ids", "positions", "spacing", "crops", "cache")
ERROR_COLUMNS = ["file", "series_id", "reason"]
ERRORS_CSV = "prepare_errors.csv"


@dataclass
class PrepareSummary:
    series: dict[str, int] = field(default_factory=dict)
    slices: dict[str, int] = field(default_factory=dict)
    prevalence: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    mismatch: MismatchReport | None = None
    reused: int = 0

    def format(self) -> str:
        lines = ["split   series   slices  " + "  ".join(f"{name[:8]:>8}" for name in LABELS)]
        for split in PREPARED_TAGS:
            prev = self.prevalence.get(split, {})
            cells = "  ".join(f"{prev[n]:8.3f}" if n in prev and np.isfinite(prev[n]) else f"{'-':>8}" for n in LABELS)
            lines.append(f"{split:<6} {self.series.get(split, 0):>7} {self.slices.get(split, 0):>8}  {cells}")
        lines.append(f"errors: {sum(self.errors.values())} files (details in prepare_errors.csv)" + "".join(f"\n  {n:>6}  {kind}" for kind, n in sorted(self.errors.items())))
        if self.mismatch is not None:
            lines.append(f"labels vs files: {self.mismatch.summary()}")
        lines.append(f"series reused from an earlier run: {self.reused}")
        return "\n".join(lines)


def _init_worker() -> None:
    """Pool initializer. On Linux a worker gets SIGKILL when prepare is killed, so a killed run
    leaves no orphan writing into the output folder while the rerun starts. One OpenCV thread per
    worker: the workers already fill the cores."""
    cv2.setNumThreads(1)
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent


@contextlib.contextmanager
def _worker_pool(workers: int) -> Iterator[Pool | None]:
    """One pool for the whole run (scan and cache), None for in-process work (``workers`` <= 1).

    One, because each worker start costs tens of ms of CPU (fork, bootstrap, first imports),
    paid again by every extra pool. forkserver, not fork: a forked child inherits the locks of
    threads the parent runs (OpenCV's pool, Paddle's OpenMP when prepare is called from a
    process that imported it) and can deadlock. The fork server is a clean process started once,
    with this module preloaded, so workers still start fast. (Python 3.11's fork server imports
    the preload with its default ``sys.path``: the installed package, or the current folder.
    Where it cannot, each worker imports the package itself, ~1.3 s more per worker.)
    """
    if workers <= 1:
        yield None
        return
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        yield pool


def _parallel_map(func: Callable, items: list, pool: Pool | None, desc: str, unit: str, chunksize: int = 1) -> Iterator:
    """Results of ``func`` over ``items`` in completion order, with a progress bar. With a pool
    the work is submitted now, so the caller can do something else before iterating; without
    one (or for one item) it runs in-process as the results are taken."""
    results = map(func, items) if pool is None or len(items) <= 1 else pool.imap_unordered(func, items, chunksize=chunksize)
    return _with_progress(results, len(items), desc, unit)


def _with_progress(results: Iterator, total: int, desc: str, unit: str) -> Iterator:
    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5)
    try:
        for result in results:
            yield result
            bar.update()
    finally:
        bar.close()


def _scan_one(path: str) -> SliceHeader | DicomReadError:
    try:
        return read_header(path)
    except DicomReadError as exc:
        return exc
    except Exception as exc:  # never let one odd header stop a 750k-file scan
        return DicomReadError(path, f"unexpected {type(exc).__name__}: {exc}")


def list_dicom_files(raw_root: str) -> dict[str, list[str]]:
    """``{"train": [...], "test": [...]}`` absolute paths under the Kaggle stage folders."""
    found = {}
    for split, folder in (("train", TRAIN_DIR), ("test", TEST_DIR)):
        directory = os.path.join(raw_root, folder)
        if os.path.isdir(directory):
            with os.scandir(directory) as entries:
                found[split] = sorted(e.path for e in entries if e.name.lower().endswith(".dcm") and e.is_file())
    if not found:
        raise FileNotFoundError(f"{raw_root}: neither {TRAIN_DIR}/ nor {TEST_DIR}/ found")
    return found


def _relative(path: str, root: str) -> str:
    """``os.path.relpath`` for the paths :func:`list_dicom_files` builds (``root/folder/name``),
    by slicing: relpath normalises both paths on every call, seconds over 750k files."""
    return path[len(root) + 1 :] if path.startswith(root + os.sep) else os.path.relpath(path, root)


def _task_for(series: Series, raw_root: str) -> SeriesTask:
    return SeriesTask(
        series_id=series.series_id,
        study_id=series.study_id,
        patient_id=series.patient_id,
        raw_root=raw_root,
        files=tuple(_relative(s.path, raw_root) for s in series.slices),
        slice_ids=tuple(s.slice_id for s in series.slices),
        positions=tuple(float(p) for p in series.positions),
        spacing=series.spacing,
        rows=series.shape[0],
        cols=series.shape[1],
        slices=tuple(series.slices),
    )


def _series_labels(meta: pd.DataFrame) -> pd.DataFrame:
    grouped = meta.groupby("series_id")
    frame = grouped[list(LABELS)].max()
    frame["patient_id"] = grouped["patient_id"].first()
    return frame


def _meta_table(records: list[dict], labels: pd.DataFrame | None) -> pd.DataFrame:
    """The meta rows of finished series, built at once: a DataFrame per series costs ~5 ms of
    pandas overhead, about 100 s over the ~20k RSNA series."""
    if not records:
        return pd.DataFrame(columns=list(META_COLUMNS))
    counts = [len(r["slice_ids"]) for r in records]

    def per_series(key: str) -> list:
        return [r[key] for r, n in zip(records, counts) for _ in range(n)]

    frame = pd.DataFrame(
        {
            "slice_id": [s for r in records for s in r["slice_ids"]],
            "series_id": per_series("series_id"),
            "study_id": per_series("study_id"),
            "patient_id": per_series("patient_id"),
            "slice_idx": np.concatenate([np.arange(n) for n in counts]),
            "position": np.asarray([p for r in records for p in r["positions"]], dtype=np.float64),
            "spacing": np.asarray(per_series("spacing"), dtype=np.float64),
        }
    )
    if labels is not None:
        frame[list(LABELS)] = labels.reindex(frame["slice_id"]).to_numpy()
    else:
        frame[list(LABELS)] = np.nan
    frame["fold"] = -1
    crops = np.asarray([c for r in records for c in r["crops"]], dtype=np.int64).reshape(len(frame), 4)
    for j, name in enumerate(CROP_COLUMNS):
        frame[name] = crops[:, j]
    frame["cache"] = per_series("cache")
    return frame


ErrorRow = tuple[str, str, str, str]  # file (relative to raw_root), series_id, reason, error kind


def _collect_headers(scan: Iterator, files: dict[str, list[str]], raw_root: str, errors: list[ErrorRow]) -> dict[str, list[SliceHeader]]:
    """The scan's headers per split; unreadable files go to ``errors``."""
    split_of = {path: split for split, paths in files.items() for path in paths}
    headers: dict[str, list[SliceHeader]] = {split: [] for split in files}
    for result in scan:
        if isinstance(result, DicomReadError):
            errors.append((os.path.relpath(result.path, raw_root), result.series_id, result.reason, type(result).__name__))
        else:
            headers[split_of[result.path]].append(result)
    return headers


def _read_labels(raw_root: str, files: dict[str, list[str]], summary: PrepareSummary) -> pd.DataFrame | None:
    """The label table (None without a train split), checked against the train files."""
    if "train" not in files:
        return None
    csv_path = os.path.join(raw_root, TRAIN_CSV)
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"{csv_path}: label table missing for {TRAIN_DIR}/")
    labels = read_label_table(csv_path)
    summary.mismatch = label_file_mismatch(labels.index, (os.path.splitext(os.path.basename(p))[0] for p in files["train"]))
    if not summary.mismatch.ok:
        logger.warning("labels vs files: %s", summary.mismatch.summary())
    return labels


def _drop_unlabelled(headers: dict[str, list[SliceHeader]], labels: pd.DataFrame | None, raw_root: str, errors: list[ErrorRow]) -> None:
    """Train files without label rows are reported and left out."""
    if labels is None:
        return
    labelled = set(labels.index)
    errors.extend((os.path.relpath(h.path, raw_root), h.series_id, f"no label rows in {TRAIN_CSV}", "UnlabelledFile")
                  for h in headers["train"] if h.slice_id not in labelled)
    headers["train"] = [h for h in headers["train"] if h.slice_id in labelled]


def _plan_tasks(headers: dict[str, list[SliceHeader]], raw_root: str, errors: list[ErrorRow]) -> list[tuple[str, SeriesTask]]:
    """Assemble series per split; one task per series, each with its own cache name."""
    tasks: list[tuple[str, SeriesTask]] = []
    taken: set[str] = set()
    for split in ("train", "test"):
        series_list, assembly_errors = group_series(headers.get(split, []))
        series_of = {h.path: h.series_id for h in headers.get(split, [])}
        errors.extend((os.path.relpath(e.path, raw_root), series_of.get(e.path, ""), e.reason, type(e).__name__) for e in assembly_errors)
        for series in series_list:
            name = cache_io.safe_name(series.series_id)
            if name in taken:
                errors.extend((os.path.relpath(s.path, raw_root), series.series_id, "series id also used in the other split", "SeriesIdClash")
                              for s in series.slices)
                continue
            taken.add(name)
            tasks.append((split, _task_for(series, raw_root)))
    return tasks


def _split_tables(train: pd.DataFrame, test: pd.DataFrame, val_fraction: float, seed: int, val_fold: int,
                  summary: PrepareSummary) -> dict[str, pd.DataFrame]:
    """``{split: meta table}`` with the patient folds, sorted; the summary gets their counts."""
    if len(train):
        folds = assign_folds(_series_labels(train), val_fraction, seed)
        if val_fold not in set(folds):
            raise ValueError(f"--val_fold {val_fold}: folds are 0..{folds.max()}")
        train["fold"] = train["series_id"].map(folds).astype(int)
    tables = {"train": train[train["fold"] != val_fold], "val": train[train["fold"] == val_fold], "test": test}
    for split, frame in tables.items():
        tables[split] = frame = sort_meta(frame[list(META_COLUMNS)])
        summary.series[split] = int(frame["series_id"].nunique())
        summary.slices[split] = len(frame)
        summary.prevalence[split] = {n: float(frame[n].mean()) if len(frame) else float("nan") for n in LABELS}
    return tables


def _write_tables(dataset_root: str, tables: dict[str, pd.DataFrame], errors: pd.DataFrame) -> None:
    """Write the tables side by side: each waits for its fsync and rename, waits that overlap."""
    jobs = [(write_meta, meta_path(dataset_root, split), frame) for split, frame in tables.items()]
    jobs.append((atomic_write_csv, os.path.join(dataset_root, ERRORS_CSV), errors))
    with ThreadPoolExecutor(len(jobs)) as threads:
        list(threads.map(lambda job: job[0](job[1], job[2]), jobs))


def prepare(
    raw_root: str,
    dataset_root: str,
    workers: int = 1,
    val_fraction: float = 0.1,
    seed: int = 42,
    windows: tuple[Window, ...] = DEFAULT_WINDOWS,
    val_fold: int = 0,
    fsync: bool = False,
) -> PrepareSummary:
    """Run the whole preparation; safe to rerun (finished series are reused). ``fsync``: also wait
    for every cache file to reach the disk (see :mod:`medseg.data.cache`; the meta tables and the
    error list are always fsynced)."""
    raw_root, dataset_root = os.path.abspath(raw_root), os.path.abspath(dataset_root)
    cache_dir = os.path.join(dataset_root, cache_io.CACHE_DIR)
    os.makedirs(cache_dir, exist_ok=True)
    cache_io.remove_stale_temporaries(cache_dir)
    cache_io.remove_stale_temporaries(dataset_root, [f"{tag}{META_SUFFIX}" for tag in PREPARED_TAGS] + [ERRORS_CSV])
    legacy = cache_io.legacy_files(cache_dir)
    if legacy:
        logger.warning("%s: %d series cached in the old format (uncompressed full-frame .npy, ~10x the disk): "
                       "rebuilding them as compressed head crops (%s); each .npy is deleted once its series is rebuilt",
                       cache_dir, len(legacy), cache_io.SUFFIX)
    summary = PrepareSummary()
    errors: list[ErrorRow] = []

    files = list_dicom_files(raw_root)
    records: dict[str, list[dict]] = {"train": [], "test": []}
    with _worker_pool(workers) as pool:
        scan = _parallel_map(_scan_one, [path for paths in files.values() for path in paths], pool, "scan", "file", chunksize=64)
        labels = _read_labels(raw_root, files, summary)  # while the workers scan
        headers = _collect_headers(scan, files, raw_root, errors)
        _drop_unlabelled(headers, labels, raw_root, errors)
        tasks = _plan_tasks(headers, raw_root, errors)
        # Longest series first keeps the workers busy until the end.
        order = [task for _, task in sorted(tasks, key=lambda st: (-len(st[1].files), st[1].series_id))]
        split_of = {task.series_id: split for split, task in tasks}
        run = partial(process_series, dataset_root=dataset_root, windows=tuple(windows), durable=fsync)
        for record in _parallel_map(run, order, pool, "cache", "series"):
            summary.reused += bool(record.get("reused"))
            errors.extend((f, record["series_id"], reason, kind) for f, reason, kind in record["errors"])
            if record["slice_ids"]:
                records[split_of[record["series_id"]]].append({key: record[key] for key in RECORD_FIELDS})
        if pool is not None:
            pool.close()  # the workers exit while the tables are written

        train, test = _meta_table(records["train"], labels), _meta_table(records["test"], None)
        tables = _split_tables(train, test, val_fraction, seed, val_fold, summary)
        errors = sorted(set(errors))
        _write_tables(dataset_root, tables, pd.DataFrame([e[:3] for e in errors], columns=ERROR_COLUMNS))
    summary.errors = Counter(e[3] for e in errors)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m medseg.data.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--raw_root", required=True, help=f"folder holding {TRAIN_DIR}/, {TEST_DIR}/ and {TRAIN_CSV}")
    parser.add_argument("--dataset_root", required=True, help="output folder (meta CSVs, cache/, prepare_errors.csv)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)), help="processes (default: all cores)")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of patients in val (folds = 1/val_fraction)")
    parser.add_argument("--val_fold", type=int, default=0, help="which fold is written as val_meta.csv")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--windows", default=format_windows(DEFAULT_WINDOWS), help="CENTRE/WIDTH,... in HU")
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
                          args.val_fold, args.fsync)
        print(summary.format())

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
