"""Smoke run of bench/semi.sh: every step of the bench (cohorts, prepare, labelled subset, teacher,
pseudo-labels, student, control, scoring, the summary over seeds) on a tiny cohort with two
training steps per run. Two seeds, so the mean ± sd lines are exercised; the target cannot be met
in two steps, so the bench must exit 1, and 0 with BENCH_NO_FAIL=1."""

import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = ("1", "2")  # dev seeds (medseg/data/cohort_seeds.py)


def test_semi_bench_smoke(tmp_path):
    out = tmp_path / "semi"
    env = dict(os.environ, PYTHON=sys.executable, SEMI_OUT=str(out), SEMI_SEEDS=" ".join(SEEDS), SEMI_SERIES="12",
               SEMI_SIZE="48", SEMI_SLICES="6", TEACHER_ITERS="2", STUDENT_ITERS="2", SEMI_PROCS="1",
               SEMI_TRAIN_FLAGS="--batch_size 2")
    env.pop("BENCH_NO_FAIL", None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "semi.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]  # two steps cannot make student <= 0.95 x teacher
    assert "target: student / teacher mean <= 0.95 MISS" in proc.stdout, log[-3000:]
    rows = {m.group(1): [float(v) for v in m.group(2).split()]
            for m in re.finditer(r"^\s*(\d+|mean|sd)\s+([0-9.\s]+?)$", proc.stdout, re.M)}
    assert set(rows) == {*SEEDS, "mean", "sd"}, proc.stdout
    header = re.search(r"^\s*seed\s+(.*)$", proc.stdout, re.M).group(1).split()
    assert header == ["prior", "pseudo_vs_hidden", "teacher", "student", "control", "student/teacher", "student/control"]
    per_seed = np.array([rows[s] for s in SEEDS])
    col = header.index
    np.testing.assert_allclose(per_seed[:, col("student/teacher")], per_seed[:, col("student")] / per_seed[:, col("teacher")],
                               rtol=1e-3)
    np.testing.assert_allclose(rows["mean"], per_seed.mean(axis=0), atol=2e-5)
    np.testing.assert_allclose(rows["sd"], per_seed.std(axis=0, ddof=1), atol=2e-5)
    assert "on the test split" in proc.stdout  # the synthetic cohorts have test truth
    for seed in SEEDS:
        assert (out / f"seed_{seed}" / "student_test.csv").is_file()
    again = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "semi_summary.py"), "--out", str(out),
                            "--seeds", *SEEDS], env=dict(env, BENCH_NO_FAIL="1"), capture_output=True, text=True)
    assert again.returncode == 0 and "MISS" in again.stdout, again.stdout + again.stderr
