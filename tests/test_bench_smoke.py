"""Smoke runs of bench/semi.sh: every step of the bench (cohorts, prepare, labelled subset, teacher,
each arm's stage 2, pseudo-labels of the cohort and of its pool cohort, student, scoring on the test
split and on a holdout cohort, the oracle arm, the summary over seeds) on a tiny cohort with two
training steps per run. Two seeds, so the mean ± sd lines are exercised; the target cannot be met
in two steps, so the bench must exit 1, and 0 with BENCH_NO_FAIL=1."""

import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from bench.semi_pool_ratios import split_pseudo_share
from medseg.constants import LABELS
from medseg.data.cohort_seeds import holdout_seed, pool_seed
from medseg.engine.metrics import weighted_log_loss
from medseg.outputs.predictions import read_table
from medseg.outputs.report import align

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = ("1", "2")  # dev seeds (medseg/data/cohort_seeds.py)


def semi_env(out, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_NO_FAIL", "RAW")}
    # A tiny cohort: generator, prepare and loaders in-process (a worker pool costs more than it saves)
    env.update(PYTHON=sys.executable, SEMI_OUT=str(out), SEMI_SEEDS=" ".join(SEEDS), SEMI_SERIES="12", SEMI_SIZE="48",
               SEMI_SLICES="6", SEMI_HOLDOUT_SERIES="12", SEMI_POOL_SERIES="12", SEMI_ORACLE="1", TEACHER_ITERS="2",
               HEAD_ITERS="2", SEMI_PROCS="1", SEMI_WORKERS="1", SEMI_TRAIN_FLAGS="--batch_size 2 --num_workers 0")
    return dict(env, **extra)


def run_semi(env):
    return subprocess.run(["bash", os.path.join(ROOT, "bench", "semi.sh")], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def semi_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "semi"
    env = semi_env(out)
    return out, env, run_semi(env)


def summary_tables(stdout):
    """{title line: (header, {seed|mean|sd: values})} for each table bench.semi_summary printed."""
    tables = {}
    for block in re.split(r"^(?=weighted log loss on )", stdout, flags=re.M)[1:]:
        title = block.splitlines()[0]
        header = re.search(r"^\s*seed\s+(.*)$", block, re.M).group(1).split()
        rows = {m.group(1): [float(v) for v in m.group(2).split()]
                for m in re.finditer(r"^\s*(\d+|mean|sd)\s+([0-9.\s]+?)$", block, re.M)}
        tables[title] = (header, rows)
    return tables


@pytest.mark.slow
def test_semi_bench_smoke(semi_run):
    out, env, proc = semi_run
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]  # two steps cannot make student <= 0.95 x teacher
    assert "target: student / teacher mean <= 0.95 MISS" in proc.stdout, log[-3000:]
    # the control is the teacher's run: both targets are checked on the one ratio
    assert "target: student / control (the teacher's run) mean < 1" in proc.stdout, log[-3000:]
    tables = summary_tables(proc.stdout)
    titles = list(tables)
    assert len(titles) == 2 and "on the test split" in titles[0], titles  # the synthetic cohorts have test truth
    assert "on the holdout cohort's test split" in titles[1], titles
    for title, (header, rows) in tables.items():
        assert set(rows) == {*SEEDS, "mean", "sd"}, proc.stdout
        oracle = ["oracle"] if "holdout" in title else []  # the oracle trained on the test split's labels
        assert header == ["prior", "pseudo_vs_hidden", "teacher", "student", *oracle, "student/teacher"]
        per_seed = np.array([rows[s] for s in SEEDS])
        col = header.index
        np.testing.assert_allclose(per_seed[:, col("student/teacher")],
                                   per_seed[:, col("student")] / per_seed[:, col("teacher")], rtol=1e-3)
        np.testing.assert_allclose(rows["mean"], per_seed.mean(axis=0), atol=2e-5)
        np.testing.assert_allclose(rows["sd"], per_seed.std(axis=0, ddof=1), atol=2e-5)
    # the targets read the holdout table's ratio, not the test split's
    assert "targets on the holdout split's student/teacher" in proc.stdout
    mean, sd = map(float, re.search(r"^student / teacher: ([0-9.]+) ± ([0-9.]+)", proc.stdout, re.M).groups())
    holdout = tables[titles[1]][1]
    assert (mean, sd) == (round(holdout["mean"][-1], 3), round(holdout["sd"][-1], 3)), proc.stdout
    # the oracle's ceiling, on the holdout too: oracle / teacher and the share of its gain the student took
    assert "the ceiling on the holdout split" in proc.stdout
    for seed in SEEDS:
        teacher, student, oracle = holdout[seed][2:5]
        line = re.search(rf"^\s*{seed} oracle/teacher ([0-9.]+) captured (\S+)", proc.stdout, re.M)
        assert float(line.group(1)) == pytest.approx(oracle / teacher, abs=2e-5)
        if teacher > oracle:
            captured = (teacher - student) / (teacher - oracle)
            rounding = 1e-5 * (1 + abs(captured)) / (teacher - oracle)  # the table's values carry 5 decimals
            assert float(line.group(2)) == pytest.approx(captured, abs=rounding + 1e-3)
        else:
            assert line.group(2) == "n/a", line.group(0)
    for seed in SEEDS:
        seed_dir = out / f"seed_{seed}"
        for who in ("teacher", "student", "oracle"):
            assert (seed_dir / f"{who}_test.csv").is_file() == (who != "oracle"), who
            assert (seed_dir / f"{who}_holdout.csv").is_file(), who
            # every arm is scored as a whole model (its encoder + the same stage 2), calibrated on validation;
            # the pseudo-labels are the teacher's whole model's calibrated probabilities
            assert list((seed_dir / f"{who}_head").glob("iter_2/calibration.json")), who
        # the holdout is its own cohort (cohort_seeds' holdout seed), whose series nothing trained on or pseudo-labelled
        holdout_truth = (out / f"holdout_raw_{seed}" / "stage_2_test_truth.csv").read_text()
        assert f"holdout_raw_{seed}/stage_2_test_truth.csv" in (seed_dir / "scored_on").read_text()
        pseudo = (seed_dir / "semi_pseudo_meta.csv").read_text()
        held_slices = {line.split(",")[0].rsplit("_", 1)[0] for line in holdout_truth.splitlines()[1:]}
        assert held_slices and not any(slice_id in pseudo for slice_id in held_slices)
        assert f"holdout cohort {out}/holdout_raw_{seed}: generator seed {holdout_seed(int(seed))}," in proc.stdout
        # the pool: its own cohort, its test series pseudo-labelled by the teacher, drawn by the student
        # with the cohort's pseudo-labelled series in proportion to their counts, 1 : 1 with the labelled
        assert f"pool cohort {out}/pool_raw_{seed}: generator seed {pool_seed(int(seed))}," in proc.stdout
        pool, own = (pd.read_csv(seed_dir / f"{name}_pseudo_meta.csv") for name in ("pool", "semi"))
        assert len(pool) and not set(pool.slice_id) & (held_slices | set(own.slice_id))
        counts = [own.series_id.nunique(), pool.series_id.nunique()]
        shares = re.search(rf"== seed {seed}, 5/6 student: .* shares (\[[^]]+\])", proc.stdout).group(1)
        np.testing.assert_allclose(yaml.safe_load(shares), split_pseudo_share([1, 1], counts), rtol=1e-5)
        # the oracle: the rows of each pseudo table with their true labels (the hidden series' from the
        # training table, the test series' from the generator's truth)
        truth = pd.concat([pd.read_csv(seed_dir / "train_meta.csv")[["slice_id", *LABELS]],
                           read_table(str(out / f"raw_{seed}" / "stage_2_test_truth.csv"))[0],
                           read_table(str(out / f"pool_raw_{seed}" / "stage_2_test_truth.csv"))[0]]).set_index("slice_id")
        for pseudo_table, oracle_table in ((own, "semi_oracle_meta.csv"), (pool, "pool_oracle_meta.csv")):
            oracle = pd.read_csv(seed_dir / oracle_table)
            assert oracle.slice_id.tolist() == pseudo_table.slice_id.tolist(), oracle_table
            np.testing.assert_array_equal(oracle[list(LABELS)].to_numpy(), truth.loc[oracle.slice_id, list(LABELS)].to_numpy())
    assert len(re.findall(r"pseudo_label\] teacher .* predicts .*, calibrated$", proc.stdout, re.M)) == 3 * len(SEEDS)
    sources = yaml.safe_load((out / "student_pool.yml").read_text())["train_dataset"]["datasets"]
    assert [(d["type"], d["dataset_root"]) for d in sources] == [
        ("RSNASeriesDataset", str(out / "prepared")), ("PseudoSeriesDataset", str(out / "prepared")),
        ("PseudoSeriesDataset", str(out / "pool_prepared"))]
    oracle_sources = yaml.safe_load((out / "student_pool_oracle.yml").read_text())["train_dataset"]["datasets"]
    assert [d.get("split") for d in oracle_sources] == ["train_labelled", "semi_oracle", "semi_oracle"]
    assert [d["dataset_root"] for d in oracle_sources] == [d["dataset_root"] for d in sources]
    again = subprocess.run([sys.executable, "-m", "bench.semi_summary", "--out", str(out), "--seeds", *SEEDS], cwd=ROOT,
                           env=dict(env, BENCH_NO_FAIL="1"), capture_output=True, text=True)
    assert again.returncode == 0 and "MISS" in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_semi_summary_refuses_incomplete_seeds(semi_run, tmp_path):
    """A seed without the student's predictions, without the holdout the other seeds have, or with a
    malformed scored_on is an error naming it (exit 2), never "all targets met"."""
    out, env, _ = semi_run
    shutil.copytree(out / f"seed_{SEEDS[0]}", tmp_path / f"seed_{SEEDS[0]}")
    (tmp_path / f"seed_{SEEDS[0]}" / "student_test.csv").unlink()
    proc = subprocess.run([sys.executable, "-m", "bench.semi_summary", "--out", str(tmp_path), "--seeds", SEEDS[0]],
                          cwd=ROOT, env=dict(env, BENCH_NO_FAIL="1"), capture_output=True, text=True)
    assert proc.returncode != 0 and "student_test.csv: the student's predictions are missing" in proc.stderr, proc.stderr
    assert "all targets met" not in proc.stdout
    # a seed without holdout scores while another has them: no verdict on a mix of splits
    for seed in SEEDS:
        shutil.copytree(out / f"seed_{seed}", tmp_path / "mixed" / f"seed_{seed}")
    scored_on = tmp_path / "mixed" / f"seed_{SEEDS[1]}" / "scored_on"
    scored_on.write_text(scored_on.read_text().splitlines()[0] + "\n")
    proc = subprocess.run([sys.executable, "-m", "bench.semi_summary", "--out", str(tmp_path / "mixed"), "--seeds", *SEEDS],
                          cwd=ROOT, env=dict(env, BENCH_NO_FAIL="1"), capture_output=True, text=True)
    assert proc.returncode == 2 and f"seed(s) {SEEDS[1]}: no holdout scores" in proc.stderr, proc.stderr
    scored_on.write_text("test\n")  # a split without its truth table
    proc = subprocess.run([sys.executable, "-m", "bench.semi_summary", "--out", str(tmp_path / "mixed"), "--seeds", *SEEDS],
                          cwd=ROOT, env=dict(env, BENCH_NO_FAIL="1"), capture_output=True, text=True)
    assert proc.returncode == 2 and "expected '<split> <truth table>' lines, got ['test']" in proc.stderr, proc.stderr
    # the oracle on some seeds only: no ceiling over a subset
    for seed in SEEDS:
        shutil.copytree(out / f"seed_{seed}", tmp_path / "oracle" / f"seed_{seed}")
    (tmp_path / "oracle" / f"seed_{SEEDS[1]}" / "oracle_holdout.csv").unlink()
    proc = subprocess.run([sys.executable, "-m", "bench.semi_summary", "--out", str(tmp_path / "oracle"), "--seeds", *SEEDS],
                          cwd=ROOT, env=dict(env, BENCH_NO_FAIL="1"), capture_output=True, text=True)
    assert proc.returncode == 2 and f"seed(s) {SEEDS[1]}: no oracle scores" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_semi_bench_takes_an_existing_cohort(semi_run, tmp_path):
    """RAW=DIR: nothing generated; a folder without test truth is scored on its validation split."""
    out, _, _ = semi_run
    site = tmp_path / "site"
    shutil.copytree(out / f"raw_{SEEDS[0]}", site)
    (site / "stage_2_test_truth.csv").unlink()
    # the oracle trains on the test split's labels, so only a holdout can score it: refused before anything runs
    for extra in ({"RAW": str(site)}, {"SEMI_HOLDOUT_SERIES": "0"}):
        no_holdout = run_semi(semi_env(tmp_path / "semi", SEMI_SEEDS=SEEDS[0], **extra))
        assert no_holdout.returncode == 2 and "SEMI_ORACLE=1 needs a holdout cohort" in no_holdout.stderr, extra
        assert not (tmp_path / "semi").exists()
    # without calibration (the smoke run covers it): what differs here is the cohort and the scored split
    proc = run_semi(semi_env(tmp_path / "semi", RAW=str(site), SEMI_SEEDS=SEEDS[0], SEMI_ORACLE="0", SEMI_CALIBRATE="0",
                             BENCH_NO_FAIL="1"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert f"cohort {site} + prepare" in proc.stdout and "on the val split" in proc.stdout
    assert "targets on the val split's" in proc.stdout and "holdout" not in proc.stdout  # nothing generated
    assert "pool cohort" not in proc.stdout and "shares" not in proc.stdout  # the student of the two-source config
    assert not [p for pattern in ("raw_*", "holdout_*", "pool_*") for p in (tmp_path / "semi").glob(pattern)]
    bad = run_semi(semi_env(tmp_path / "semi2", RAW=str(tmp_path / "missing")))
    assert bad.returncode == 2 and "not a directory" in bad.stderr
    bad = run_semi(semi_env(tmp_path / "semi2", SEMI_ORACLE="yes"))
    assert bad.returncode == 2 and "SEMI_ORACLE=yes: expected 0 or 1" in bad.stderr


@pytest.mark.slow
def test_semi_bench_runs_every_arm_several_times_per_seed(tmp_path):
    """SEMI_RUNS=2: per seed one cohort, split, labelled subset and holdout, and two runs of every arm
    (training seeds S and S + 1000), each a whole bench run in its own folder; the seed's scores are
    the mean over its runs and its ratio that of the means; a gap in the runs or seeds with different
    numbers of runs are refused. Without the pool and calibration (the smoke run above covers them;
    each costs processes per run)."""
    seed = SEEDS[0]
    out = tmp_path / "semi"
    proc = run_semi(semi_env(out, SEMI_SEEDS=seed, SEMI_RUNS="2", SEMI_POOL_SERIES="0", SEMI_CALIBRATE="0",
                             BENCH_NO_FAIL="1"))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert proc.stdout.count(f"holdout cohort {out}/holdout_raw_{seed}: generator seed") == 1, proc.stdout  # the seed's, made once
    seed_dir = out / f"seed_{seed}"
    assert sorted(p.name for p in seed_dir.glob("run_*")) == ["run_0", "run_1"]
    assert not (seed_dir / "teacher").exists()  # every model is a run's
    holdout_truth, _ = read_table(str(out / f"holdout_raw_{seed}" / "stage_2_test_truth.csv"))
    scores = {}
    for run in (0, 1):
        run_dir = seed_dir / f"run_{run}"
        assert f"seed {seed} run {run} (training seed {int(seed) + 1000 * run}), 5/6 student" in proc.stdout
        for who in ("teacher", "student", "oracle"):
            with open(run_dir / who / "iter_2" / "train_state.pkl", "rb") as fh:
                assert pickle.load(fh)["seed"] == int(seed) + 1000 * run, (run, who)
            frame = align(read_table(str(run_dir / f"{who}_holdout.csv"))[0], holdout_truth, who, "truth")
            scores[run, who] = weighted_log_loss(frame[[f"t_{n}" for n in LABELS]].to_numpy(),
                                                 frame[[f"p_{n}" for n in LABELS]].to_numpy())
        # each run pseudo-labels with its own teacher, and its oracle reads the same rows' true labels
        assert (run_dir / "semi_pseudo_meta.csv").is_file() and (run_dir / "semi_oracle_meta.csv").is_file()
    assert (seed_dir / "run_0" / "teacher_holdout.csv").read_bytes() != (seed_dir / "run_1" / "teacher_holdout.csv").read_bytes()
    assert (seed_dir / "run_0" / "semi_pseudo_meta.csv").read_bytes() != (seed_dir / "run_1" / "semi_pseudo_meta.csv").read_bytes()
    tables = summary_tables(proc.stdout)
    header, rows = next(v for k, v in tables.items() if "holdout" in k)
    assert "each seed's scores are the mean over its 2 runs" in proc.stdout
    for who in ("teacher", "student", "oracle"):
        assert rows[seed][header.index(who)] == pytest.approx((scores[0, who] + scores[1, who]) / 2, abs=2e-5), who
    assert rows[seed][header.index("student/teacher")] == pytest.approx(
        (scores[0, "student"] + scores[1, "student"]) / (scores[0, "teacher"] + scores[1, "teacher"]), rel=1e-3)
    runs = re.search(rf"on the holdout split, per seed.*\n\s*{seed} runs ([0-9.]+) ([0-9.]+) mean", proc.stdout)
    for run, value in zip((0, 1), runs.groups()):
        assert float(value) == pytest.approx(scores[run, "student"] / scores[run, "teacher"], abs=2e-5)

    def summary(*seeds, where=out):
        return subprocess.run([sys.executable, "-m", "bench.semi_summary", "--out", str(where), "--seeds", *seeds],
                              cwd=ROOT, env=dict(os.environ, BENCH_NO_FAIL="1"), capture_output=True, text=True)

    # a gap in the runs, and seeds with different numbers of runs: no verdict
    shutil.copytree(seed_dir, tmp_path / "gap" / f"seed_{seed}")
    (tmp_path / "gap" / f"seed_{seed}" / "run_1").rename(tmp_path / "gap" / f"seed_{seed}" / "run_2")
    proc = summary(seed, where=tmp_path / "gap")
    assert proc.returncode == 2 and "are not run_0 .. run_1" in proc.stderr, proc.stderr
    shutil.copytree(seed_dir, tmp_path / "mixed" / f"seed_{seed}")
    shutil.copytree(seed_dir / "run_0", tmp_path / "mixed" / "seed_9")
    shutil.copy(seed_dir / "train_meta.csv", tmp_path / "mixed" / "seed_9")
    proc = summary(seed, "9", where=tmp_path / "mixed")
    assert proc.returncode == 2 and "different numbers of runs" in proc.stderr, proc.stderr
    bad = run_semi(semi_env(tmp_path / "semi2", SEMI_RUNS="0"))
    assert bad.returncode == 2 and "SEMI_RUNS=0: expected a positive number" in bad.stderr


def test_demo_refuses_a_missing_raw_folder(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, DEMO_OUT=str(tmp_path / "out"), RAW=str(tmp_path / "missing"))
    proc = subprocess.run(["bash", os.path.join(ROOT, "script", "demo.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and f"RAW={tmp_path / 'missing'}: not a directory" in proc.stderr


def test_pool_shares_keep_the_labelled_share_and_weigh_sources_by_series():
    assert split_pseudo_share([1, 1], [191, 571]) == pytest.approx([1.0, 191 / 762, 571 / 762])
    assert split_pseudo_share([1, 3], [50, 50]) == pytest.approx([1.0, 1.5, 1.5])
    with pytest.raises(ValueError, match="two shares"):
        split_pseudo_share([1, 1, 1], [5, 5])
    with pytest.raises(ValueError, match="needs series"):
        split_pseudo_share([1, 1], [5, 0])


def test_pool_ratios_cli_names_a_bad_table(tmp_path):
    (tmp_path / "student.yml").write_text("train_dataset: {ratios: [1, 1]}\n")
    (tmp_path / "a.csv").write_text("slice_id,series_id\ns1,A\ns2,A\ns3,B\n")
    (tmp_path / "empty.csv").write_text("slice_id,series_id\n")
    def run(*tables):
        return subprocess.run([sys.executable, "-m", "bench.semi_pool_ratios", "--config", str(tmp_path / "student.yml"),
                               "--pseudo", *map(str, tables)], cwd=ROOT, capture_output=True, text=True)
    ok = run(tmp_path / "a.csv", tmp_path / "a.csv")
    assert ok.returncode == 0 and yaml.safe_load(ok.stdout) == [1.0, 0.5, 0.5], ok.stderr
    for bad in (tmp_path / "empty.csv", tmp_path / "missing.csv"):
        proc = run(tmp_path / "a.csv", bad)
        assert proc.returncode == 2 and str(bad) in proc.stderr, proc.stderr
