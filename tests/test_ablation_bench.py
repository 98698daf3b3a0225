"""bench/ablation.sh in miniature: two seeds, a tiny encoder, a few iterations per arm.

Checks the shell glue (cohort per seed, stage 1 with selection, equal stage-2 arms, test-split
scoring), the summary (mean ± sd, ratios computed from the per-seed scores) and the exit status
(non-zero exactly when the transformer misses its target, unless ``--no_fail``). The two-seed run
trains the two arms the target needs (``ABL_ARMS``); the rerun on one seed trains all four.
"""

import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from test_end_to_end import TINY  # the demo configs at toy scale (heads are replaced per arm)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARMS = ("no_context", "transformer", "transformer_paper", "bigru")
TARGET_ARMS = ("no_context", "transformer")  # the first run's (ABL_ARMS)
pytestmark = pytest.mark.slow  # end to end: bench/ablation.sh (cohorts, training, inference)
LINE = re.compile(r"ablation head=(\w+) weighted_logloss=([0-9.]+) ratio_to_slice_only=([0-9.]+) ratio_to_no_context=([0-9.]+)")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    env = dict(os.environ, PYTHON=sys.executable, ABL_OUT=str(tmp / "out"), ABL_SEEDS="1 2", ABL_SERIES="8",
               ABL_SIZE="64", ABL_SLICES="6", ABL_PRETRAIN_ITERS="4", ABL_ITERS="2", ABL_PROCS="1", ABL_WORKERS="1",
               ABL_ARMS=" ".join(TARGET_ARMS))
    for key, base, batch in (("ABL_PRETRAIN_CONFIG", "demo_cpu_pretrain.yml", 4), ("ABL_CONFIG", "demo_cpu.yml", 1)):
        (tmp / base).write_text(TINY.format(base=os.path.join(ROOT, "config", base), batch=batch, head="{}"))
        env[key] = str(tmp / base)
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "ablation.sh")], env=env, capture_output=True, text=True, timeout=900)
    return tmp / "out", proc, env


def test_ablation_bench_ends_with_one_line_per_arm(bench_run):
    out, proc, _ = bench_run
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()[-len(TARGET_ARMS):]
    parsed = [LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert tuple(m.group(1) for m in parsed) == TARGET_ARMS
    # The printed means are those of the per-seed test scores.
    rows = [line.split("\t") for line in (out / "scores.tsv").read_text().splitlines()]
    score = {(s, a): float(x) for s, a, x in rows}
    assert {s for s, _ in score} == {"1", "2"} and len(score) == 2 * (len(TARGET_ARMS) + 1)
    for m in parsed:
        arm = m.group(1)
        assert float(m.group(2)) == pytest.approx(np.mean([score[s, arm] for s in ("1", "2")]), abs=1e-5)
        assert float(m.group(4)) == pytest.approx(np.mean([score[s, arm] / score[s, "no_context"] for s in ("1", "2")]), abs=1e-3)
        assert float(m.group(3)) == pytest.approx(np.mean([score[s, arm] / score[s, "slice_only"] for s in ("1", "2")]), abs=1e-3)
    assert "mean ± sd" in proc.stdout
    # Every stage-2 arm started from stage 1's selected checkpoint and kept its own best_model.
    for seed in ("1", "2"):
        assert (out / f"seed_{seed}" / "slice_only" / "best_model").is_dir()
        for arm in TARGET_ARMS:
            assert (out / f"seed_{seed}" / arm / "best_model").is_dir(), arm


def test_ablation_bench_exits_non_zero_exactly_when_the_target_is_missed(bench_run):
    _, proc, _ = bench_run
    ratio = float(LINE.fullmatch(proc.stdout.strip().splitlines()[-1]).group(4))  # the transformer line
    assert proc.returncode == (0 if ratio <= 0.85 else 1), proc.stdout[-2000:]
    assert ("NOT met" in proc.stdout) == (ratio > 0.85)


def test_a_rerun_reuses_stage_1_only_when_its_settings_match(bench_run):
    """Same seed and settings: cohort, prepare and stage 1 are reused (the stage-2 arms rerun, here
    all four); a changed stage-1 budget retrains. Bad arm lists are refused before any work."""
    out, first, env = bench_run
    assert "of an earlier run" not in first.stdout
    weights = out / "seed_1" / "slice_only" / "best_model"
    stamp = (weights / "model.pdparams").stat().st_mtime_ns
    rerun = subprocess.run(["bash", os.path.join(ROOT, "bench", "ablation.sh"), "--no_fail"],
                           env=dict(env, ABL_SEEDS="1", ABL_ARMS=" ".join(ARMS)), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "seed 1: cohort, prepare and stage 1 of an earlier run" in rerun.stdout
    assert (weights / "model.pdparams").stat().st_mtime_ns == stamp
    lines = [LINE.fullmatch(line) for line in rerun.stdout.strip().splitlines()[-len(ARMS):]]
    assert all(lines) and tuple(m.group(1) for m in lines) == ARMS
    for arm in ARMS:
        assert (out / "seed_1" / arm / "best_model").is_dir(), arm
    for arms, message in (("no_context bogus transformer", "unknown arm bogus"), ("transformer", "no_context is required")):
        refused = subprocess.run(["bash", os.path.join(ROOT, "bench", "ablation.sh")], env=dict(env, ABL_ARMS=arms),
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    # a changed stage-1 budget, and another training seed on the same cohort (ABL_TRAIN_SEED_OFFSET)
    changed = subprocess.run(["bash", os.path.join(ROOT, "bench", "ablation.sh"), "--no_fail"],
                             env=dict(env, ABL_SEEDS="1", ABL_PRETRAIN_ITERS="3", ABL_ITERS="1", ABL_TRAIN_SEED_OFFSET="1000"),
                             capture_output=True, text=True, timeout=900)
    assert changed.returncode == 0, changed.stdout[-3000:] + changed.stderr[-3000:]
    assert "of an earlier run" not in changed.stdout and "stage 1 (slice_only), 3 iterations" in changed.stdout
    assert "offset=1000 " in (out / "seed_1" / "stage1.done").read_text()
    assert "iters=3 " in (out / "seed_1" / "stage1.done").read_text()
    for arm in ("slice_only", *TARGET_ARMS):
        states = sorted((out / "seed_1" / arm).glob("iter_*/train_state.pkl"))
        assert states, arm
        for state in states:
            with open(state, "rb") as fh:
                assert pickle.load(fh)["seed"] == 1001, state
