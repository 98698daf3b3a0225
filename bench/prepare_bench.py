"""Speed of ``medseg.data.prepare`` against the original method and the pydicom decode floor.

Generates a synthetic Kaggle-layout set (reused across runs), warms the page cache, then times on
the same files with the same worker count:

- ours: the whole ``prepare`` (header scan, labels, split, windows, crop, cache, meta CSVs), as
  run by default (cache files not fsynced) and with ``--fsync`` (every cache file on disk before
  its rename: the wait for the disk is in the time);
- original: the released preprocess (PaddlePaddle/Research easymia, re-implemented faithfully in
  ``bench/released_preprocess.py``): whole-file header reads, the sorted table, labels, split and
  meta CSVs, then per series SimpleITK ``ReadImage(file list)``, three uint8 windows in float64
  into one ``[S, H, W, 3]`` array, the series' nonzero box (exclusive max), ``np.savez_compressed``
  (the truncated file is left out, the release would crash on it). ``tests/test_bench_scripts.py``
  checks that it reproduces the release's array on a real GE head series;
- floor: ``dcmread`` + ``pixel_array`` + ``apply_modality_lut`` per file, nothing written (the
  truncated file is left out here too).

It also prints the peak RSS of a fresh worker process building one 80-slice series (``--rss_slices``).
Targets (wall time): ours >= 3x original, ours >= 0.6x floor, peak RSS < 1 GiB; exits 1 when one
is missed (``--no_fail`` or ``BENCH_NO_FAIL=1``: 0). The first line printed is the provenance
(``bench/provenance.py``). ``--toy`` (or ``BENCH_TOY=1``): a few tiny series, one repeat, a short
RSS probe: seconds, to check the bench runs; its numbers mean nothing.

Every run of every method is a cold start in a fresh process, so start-up counts alike on both
sides: our fork server and its preload, the original's SimpleITK import in its workers, each
pool's worker start. (Timing them in one process favoured ours: its fork server, ~1.9 s, started
once and served the later runs, while the original imported SimpleITK in fresh workers every
run.) Only the interpreter and the bench's own imports are left out, for every method. Wall time
on a shared machine is noisy, so each method runs ``--repeats`` times interleaved (best counts)
and CPU time (process + workers) is printed too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

import psutil
import pydicom
from pydicom.pixels import apply_modality_lut

from medseg.constants import DEFAULT_WINDOWS, TEST_DIR, TRAIN_DIR
from medseg.data.prepare import prepare
from medseg.data.scan import list_dicom_files
from medseg.data.synthetic import generate_cohort
from medseg.dicom.validation import disable_value_validation
from medseg.utils.logger import setup_logger

from provenance import provenance_line  # bench/*.py: this script's folder is on sys.path
from released_preprocess import run_released
from targets import finish, no_fail_default, toy_default

METHODS = ("floor", "original", "ours", "ours_fsync")
# size knobs: the full bench, and --toy (BENCH_TOY=1) for the smoke test; a flag given wins
FULL = {"series": 20, "slices": 32, "size": 512, "repeats": 2, "rss_slices": 80}
TOY = {"series": 6, "slices": 6, "size": 64, "repeats": 1, "rss_slices": 8}


def _floor_one(path: str) -> int:
    with disable_value_validation():  # RSNA-style ids are not valid UIDs
        ds = pydicom.dcmread(path)
        return int(apply_modality_lut(ds.pixel_array, ds).size > 0)


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


class _DescendantCpu:
    """CPU seconds of every descendant process seen while running, sampled every 10 ms.

    prepare's workers are children of a fork server, not of this process, so RUSAGE_CHILDREN never
    sees them; polling the process tree does (it can miss each worker's last few milliseconds).
    """

    def __enter__(self) -> "_DescendantCpu":
        self.seen: dict[int, float] = {}
        self.baseline = self._snapshot()  # a process that outlives one run (the fork server) counts its delta
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _snapshot() -> dict[int, float]:
        out = {}
        for child in psutil.Process().children(recursive=True):
            try:
                times = child.cpu_times()
                out[child.pid] = times.user + times.system
            except psutil.Error:
                continue
        return out

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.seen.update(self._snapshot())
            self._stop.wait(0.01)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(t - self.baseline.get(pid, 0.0) for pid, t in self.seen.items())


def run_floor(files: list[str], workers: int) -> float:
    start = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        sum(pool.imap_unordered(_floor_one, files, chunksize=16))
    return time.perf_counter() - start


def run_original(raw: str, out: str, workers: int, skip: set[str]) -> float:
    start = time.perf_counter()
    run_released(raw, out, workers, skip)
    return time.perf_counter() - start


def run_ours(raw: str, out: str, workers: int, fsync: bool = False) -> float:
    start = time.perf_counter()
    prepare(raw, out, workers=workers, val_fraction=0.2, seed=0, fsync=fsync)
    return time.perf_counter() - start


def _rss_child(raw: str, out: str, queue) -> None:
    """A fresh process doing exactly a worker's job on one series: header scan, order, build."""
    import glob

    from medseg.data.scan import scan_header, task_for
    from medseg.data.series_volume import process_series
    from medseg.dicom.header import SliceHeader
    from medseg.dicom.series import group_series

    paths = sorted(glob.glob(os.path.join(raw, TRAIN_DIR, "*.dcm")) + glob.glob(os.path.join(raw, TEST_DIR, "*.dcm")))
    headers = [h for h in map(scan_header, paths) if isinstance(h, SliceHeader)]  # the truncated file is skipped
    series = max(group_series(headers)[0], key=lambda s: len(s.slices))
    before = _peak_rss_mib()
    record = process_series(task_for(series, raw), out, DEFAULT_WINDOWS)
    queue.put((_peak_rss_mib(), before, len(record.slice_ids)))


def _peak_rss_mib() -> float:
    """VmHWM of this process (ru_maxrss would include the parent's peak from before exec)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_rss(work: str, size: int, slices: int = 80) -> tuple[float, float, int]:
    """(peak RSS, RSS before the series, slices) in MiB of a fresh process building one series."""
    raw = os.path.join(work, f"rss_{slices}x{size}")
    generate_cohort(raw, 2, seed=1, size=size, test_fraction=0.5, n_slices=slices)
    out = os.path.join(work, "rss_out")
    shutil.rmtree(out, ignore_errors=True)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_child, args=(raw, out, queue))
    proc.start()
    while True:  # a child that dies must not leave the bench waiting forever
        try:
            value = queue.get(timeout=1.0)
            break
        except Exception:
            if not proc.is_alive():
                raise RuntimeError(f"RSS probe exited with code {proc.exitcode}") from None
    proc.join()
    shutil.rmtree(out, ignore_errors=True)
    return value


def run_method(name: str, raw: str, work: str, workers: int) -> dict[str, float]:
    """One cold run of one method in this (fresh) process: wall and CPU seconds, outputs deleted."""
    found = list_dicom_files(raw)
    files = found.get("train", []) + found.get("test", [])
    truncated = {os.path.join(raw, json.load(open(os.path.join(work, "truncated.json"), encoding="utf-8")))}
    out = os.path.join(work, f"out_{name}")
    shutil.rmtree(out, ignore_errors=True)
    runs = {
        "floor": lambda: run_floor([f for f in files if f not in truncated], workers),
        "original": lambda: run_original(raw, out, workers, truncated),
        "ours": lambda: run_ours(raw, out, workers),
        "ours_fsync": lambda: run_ours(raw, out, workers, fsync=True),
    }
    before = _own_cpu_seconds()
    with _DescendantCpu() as workers_cpu:  # the same accounting for every method
        wall = runs[name]()
    cpu = _own_cpu_seconds() - before + workers_cpu.seconds
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "cpu": cpu}


def cold_run(name: str, raw: str, args: argparse.Namespace) -> dict[str, float]:
    """``run_method`` in a fresh interpreter (this file with ``--method``); its last stdout line is JSON."""
    cmd = [sys.executable, os.path.abspath(__file__), "--method", name, "--raw", raw, "--work", args.work,
           "--workers", str(args.workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, help=f"default {FULL['series']} (--toy {TOY['series']})")
    parser.add_argument("--slices", type=int, help=f"default {FULL['slices']} (--toy {TOY['slices']})")
    parser.add_argument("--size", type=int, help=f"default {FULL['size']} (--toy {TOY['size']})")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, help="interleaved cold runs of each method; the best counts "
                        f"(default {FULL['repeats']}, --toy {TOY['repeats']})")
    parser.add_argument("--rss_slices", type=int, help=f"slices of the RSS probe's series (default {FULL['rss_slices']}, "
                        f"--toy {TOY['rss_slices']})")
    parser.add_argument("--toy", action="store_true", default=toy_default(),
                        help="toy size (also BENCH_TOY=1): checks the bench runs, its numbers mean nothing")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "medseg_prepare_bench"),
                        help="folder for the generated set (kept and reused) and the outputs (deleted)")
    parser.add_argument("--no_fail", action="store_true", default=no_fail_default(), help="exit 0 even if a target is missed")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # one cold run (internal)
    parser.add_argument("--raw", help=argparse.SUPPRESS)
    args = parser.parse_args()
    setup_logger(level=40)  # errors only: the bench prints its own table
    if args.method:
        print(json.dumps(run_method(args.method, args.raw, args.work, args.workers)))
        return 0
    print(provenance_line(), flush=True)
    for key, value in (TOY if args.toy else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    raw = os.path.join(args.work, f"raw_{args.series}x{args.slices}_{args.size}")
    print(f"generating/reusing {args.series} series x {args.slices} slices at {args.size}^2 in {raw}", flush=True)
    cohort = generate_cohort(raw, args.series, seed=0, size=args.size, test_fraction=0.2, workers=args.workers, n_slices=args.slices)
    with open(os.path.join(args.work, "truncated.json"), "w", encoding="utf-8") as fh:
        json.dump(cohort["truncated_file"], fh)
    found = list_dicom_files(raw)
    files = found.get("train", []) + found.get("test", [])
    for path in files:  # warm the page cache so every method reads from memory
        with open(path, "rb") as fh:
            fh.read()
    n = len(files)
    wall, cpu = defaultdict(list), defaultdict(list)
    for _ in range(args.repeats):  # interleaved, best of N cold runs: the machine is shared
        for name in METHODS:
            result = cold_run(name, raw, args)
            wall[name].append(result["wall"])
            cpu[name].append(result["cpu"])
    seconds = {name: min(v) for name, v in wall.items()}
    cpu_seconds = {name: min(v) for name, v in cpu.items()}
    rss, baseline, rss_slices = peak_rss(args.work, args.size, args.rss_slices)
    print(f"\n{n} files ({args.series} series x {args.slices} slices, {args.size}x{args.size}), {args.workers} workers, "
          f"best of {args.repeats} cold runs (each in a fresh process, start-up included for every method)"
          + (" -- toy size: checks the bench runs, the numbers mean nothing" if args.toy else ""))
    print(f"{'method':<46}{'wall s':>8}{'slices/s':>10}{'CPU s':>8}{'slices/CPU s':>14}  all wall s")
    labels = {"ours": "ours (medseg.data.prepare, whole run)", "ours_fsync": "ours with --fsync",
              "original": "original (the released preprocess)", "floor": "floor (dcmread + pixel_array + modality LUT)"}
    for name in ("ours", "ours_fsync", "original", "floor"):
        print(f"{labels[name]:<46}{seconds[name]:>8.2f}{n / seconds[name]:>10.0f}{cpu_seconds[name]:>8.2f}"
              f"{n / cpu_seconds[name]:>14.0f}  {' '.join(f'{w:.2f}' for w in wall[name])}")
    checks = []
    for other, target in (("original", 3.0), ("floor", 0.6)):
        ratio = seconds[other] / seconds["ours"]
        print(f"ours / {other:<9} wall {ratio:.2f}x, CPU {cpu_seconds[other] / cpu_seconds['ours']:.2f}x "
              f"(target: wall >= {target})")
        checks.append((f"ours / {other} wall {ratio:.2f}x >= {target}", ratio >= target))
    print(f"ours --fsync / floor wall {seconds['floor'] / seconds['ours_fsync']:.2f}x, "
          f"CPU {cpu_seconds['floor'] / cpu_seconds['ours_fsync']:.2f}x (for information: waits for the disk)")
    print(f"peak RSS of one worker process, {rss_slices}-slice {args.size}^2 series: {rss:.0f} MiB "
          f"(imports and header scan alone: {baseline:.0f} MiB; target < 1024)")
    checks.append((f"peak RSS {rss:.0f} MiB < 1024", rss < 1024))
    return finish(checks, args.no_fail)


if __name__ == "__main__":
    sys.exit(main())
