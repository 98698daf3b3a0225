"""The cohort seed lists: dev, report and holdout cohorts never coincide, and the CLI the benches read."""

import subprocess
import sys

from medseg.data.cohort_seeds import DEV_SEEDS, REPORT_SEEDS, holdout_seed


def test_holdout_cohorts_are_neither_dev_nor_report():
    cohorts = set(DEV_SEEDS) | set(REPORT_SEEDS)
    holdouts = {holdout_seed(seed) for seed in cohorts}
    assert len(holdouts) == len(cohorts) and not holdouts & cohorts


def test_cli_prints_lists_and_a_holdout_seed():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "medseg.data.cohort_seeds", *args], capture_output=True, text=True)
    assert run("report").stdout.split() == [str(s) for s in REPORT_SEEDS]
    assert run("holdout", "101").stdout.strip() == str(holdout_seed(101))
    missing = run("holdout")
    assert missing.returncode == 2 and "holdout needs the cohort seed" in missing.stderr
