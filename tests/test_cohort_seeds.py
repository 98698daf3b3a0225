"""The cohort seed lists: dev, report, holdout and pool cohorts never coincide, and the CLI the benches read."""

import subprocess
import sys

from medseg.data.cohort_seeds import DEV_SEEDS, REPORT_SEEDS, holdout_seed, pool_seed


def test_holdout_and_pool_cohorts_are_their_own():
    cohorts = set(DEV_SEEDS) | set(REPORT_SEEDS)
    holdouts = {holdout_seed(seed) for seed in cohorts}
    pools = {pool_seed(seed) for seed in cohorts}
    assert len(holdouts) == len(pools) == len(cohorts)
    assert not holdouts & cohorts and not pools & cohorts and not pools & holdouts


def test_cli_prints_lists_and_a_holdout_seed():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "medseg.data.cohort_seeds", *args], capture_output=True, text=True)
    assert run("report").stdout.split() == [str(s) for s in REPORT_SEEDS]
    assert run("holdout", "101").stdout.strip() == str(holdout_seed(101))
    assert run("pool", "101").stdout.strip() == str(pool_seed(101))
    for purpose in ("holdout", "pool"):
        missing = run(purpose)
        assert missing.returncode == 2 and f"{purpose} needs the cohort seed" in missing.stderr
