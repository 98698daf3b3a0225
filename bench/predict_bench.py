"""Predict speed: one synthetic 40-slice 512 × 512 study, DICOM read → probabilities, on 2 cores.

The demo CNN config (ResNet-18 at 128 px + sequence transformer) with an untrained checkpoint
(weights do not change the cost), run two ways, each in its own process (so peak memory is its
own): the training checkpoint in dygraph, and the same weights exported with ``export.py`` and
run by Paddle Inference. Each process loads the model once, then predicts the study ``--reps``
times through ``medseg.predict.run.folder_results`` (header scan, decode, windows, crop,
transforms, model). Prints a table; targets: ≤ 3 s per study, exported ≥ 1.5× faster than
dygraph for the model part, peak RSS ≤ 3 GiB. Exits 1 when a target is missed (``--no_fail`` or
``BENCH_NO_FAIL=1``: 0). The first line printed is the provenance (``bench/provenance.py``);
``--toy`` (or ``BENCH_TOY=1``): a small study, one repetition, to check the bench runs (its
numbers mean nothing).

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python bench/predict_bench.py [--slices 40] [--size 512] [--reps 3] [--toy]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from provenance import provenance_line  # bench/*.py: this script's folder is on sys.path
from targets import finish, no_fail_default, toy_default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "config", "demo_cpu.yml")
TARGET_S, TARGET_SPEEDUP, TARGET_GIB = 3.0, 1.5, 3.0
FULL = {"slices": 40, "size": 512, "reps": 3}
TOY = {"slices": 6, "size": 64, "reps": 1}  # --toy / BENCH_TOY=1; a flag given wins


def make_inputs(work: str, slices: int, size: int) -> dict[str, str]:
    """The study (DICOM files), an untrained checkpoint and its export."""
    import paddle

    from medseg.config import Config
    from medseg.data.synthetic import synthesize_series
    from medseg.data.synthetic.dicom_writer import write_series
    from medseg.export import export_model

    study = os.path.join(work, "study", "series")
    os.makedirs(study)
    write_series(synthesize_series(2019, 0, size=size, n_slices=slices), study)
    cfg = Config(CONFIG)
    paddle.seed(0)
    checkpoint = os.path.join(work, "ckpt")
    os.makedirs(checkpoint)
    paddle.save(cfg.build("model").state_dict(), os.path.join(checkpoint, "model.pdparams"))
    export_model(cfg, checkpoint, os.path.join(work, "export"))
    return {"study": os.path.dirname(study), "checkpoint": checkpoint, "export": os.path.join(work, "export")}


def worker(model_path: str, study: str, reps: int, threads: int, probs_out: str) -> dict:
    """One backend in this process: load once, predict ``reps`` times; report medians and peak RSS."""
    import numpy as np

    from medseg.config import Config
    from medseg.constants import DEFAULT_WINDOWS
    from medseg.predict.backend import load_model
    from medseg.data.build import build_eval_transforms, eval_transform_config
    from medseg.predict.run import folder_results

    cfg = Config(CONFIG)
    tic = time.perf_counter()
    model = load_model(cfg, model_path, threads=threads)
    load_s = time.perf_counter() - tic
    transforms = build_eval_transforms(eval_transform_config(cfg))
    totals, parts = [], []
    for _ in range(reps + 1):  # the first pass warms caches and kernels; not counted
        tic = time.perf_counter()
        _, results, skipped, seconds = folder_results(model, study, transforms, DEFAULT_WINDOWS, progress=False)
        totals.append(time.perf_counter() - tic)
        parts.append(seconds)
    if skipped or len(results) != 1:
        raise RuntimeError(f"{study}: expected one clean series, got {len(results)} and {len(skipped)} skipped")
    np.save(probs_out, results[0].probs)
    med = lambda xs: float(np.median(xs[1:]))  # noqa: E731
    return {"kind": model.kind, "load_s": load_s, "total_s": med(totals), "model_s": med([p["model"] for p in parts]),
            "read_s": med([p["scan"] + p["read"] + p["preprocess"] for p in parts]), "slices": len(results[0].slice_ids),
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_worker(name: str, model_path: str, study: str, reps: int, threads: int, work: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    probs = os.path.join(work, f"{name}.npy")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", model_path, "--study", study, "--reps", str(reps),
           "--threads", str(threads), "--probs", probs]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} worker failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["probs"] = probs
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, help=f"default {FULL['slices']} (--toy {TOY['slices']})")
    p.add_argument("--size", type=int, help=f"default {FULL['size']} (--toy {TOY['size']})")
    p.add_argument("--reps", type=int, help=f"default {FULL['reps']} (--toy {TOY['reps']})")
    p.add_argument("--toy", action="store_true", default=toy_default(),
                   help="toy size (also BENCH_TOY=1): checks the bench runs, its numbers mean nothing")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no_fail", action="store_true", default=no_fail_default(), help="exit 0 even if a target is missed")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--study", help=argparse.SUPPRESS)
    p.add_argument("--probs", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.study, args.reps, args.threads, args.probs)))
        return 0
    print(provenance_line(), flush=True)
    for key, value in (TOY if args.toy else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="predict_bench_") as work:
        paths = make_inputs(work, args.slices, args.size)
        rows = {name: run_worker(name, paths[key], paths["study"], args.reps, args.threads, work)
                for name, key in (("dygraph", "checkpoint"), ("exported", "export"))}
        diff = float(np.abs(np.load(rows["dygraph"]["probs"]) - np.load(rows["exported"]["probs"])).max())
    speedup = rows["dygraph"]["model_s"] / rows["exported"]["model_s"]
    print(f"predict, one {args.slices}-slice {args.size}² study, demo CNN ({CONFIG}), {args.threads} threads, median of {args.reps}"
          + (" -- toy size: checks the bench runs, the numbers mean nothing" if args.toy else ""))
    print(f"{'backend':<10} {'load s':>7} {'read+prep s':>12} {'model s':>8} {'total s/study':>14} {'peak RSS GiB':>13}")
    for name, r in rows.items():
        print(f"{name:<10} {r['load_s']:7.2f} {r['read_s']:12.3f} {r['model_s']:8.3f} {r['total_s']:14.3f} {r['peak_gib']:13.2f}")
    print(f"model-part speed-up (exported vs dygraph): {speedup:.2f}x; max |Δp| between backends {diff:.1e}")
    checks = [
        (f"total ≤ {TARGET_S:g} s/study (exported)", rows["exported"]["total_s"] <= TARGET_S),
        (f"total ≤ {TARGET_S:g} s/study (dygraph)", rows["dygraph"]["total_s"] <= TARGET_S),
        (f"speed-up ≥ {TARGET_SPEEDUP:g}x", speedup >= TARGET_SPEEDUP),
        (f"peak ≤ {TARGET_GIB:g} GiB", max(r["peak_gib"] for r in rows.values()) <= TARGET_GIB),
    ]
    return finish(checks, args.no_fail)


if __name__ == "__main__":
    sys.exit(main())
