"""Summary of ``bench/semi.sh``: each seed's scores, mean ± sd over seeds, the targets on the mean.

Run from the repository root as ``python -m bench.semi_summary --out DIR --seeds S...`` (what
``bench/semi.sh`` does).

Reads ``<out>/seed_<S>/`` as the bench left it (``<arm>_<split>.csv`` predictions, ``scored_on``,
the pseudo-label table and the training truth). Targets, on the mean over seeds: student / teacher
<= 0.95 and student / control < 1, where the control (the student's run without the pseudo-labelled
source) is the teacher's run itself, so both targets read the one ratio; each is said to be met or
missed by a margin beyond the spread or within it (the gap between the mean ratio and its bound,
either way, larger than the ratio's sd over seeds or not). Exits 1 when a target is missed, 0 with
``--no_fail`` or ``BENCH_NO_FAIL=1``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pandas as pd

from bench.targets import finish, no_fail_default
from medseg.constants import LABELS
from medseg.engine.metrics import prior_baseline, weighted_log_loss
from medseg.outputs.predictions import read_table
from medseg.outputs.report import align

ARMS = ("teacher", "student")
RATIO = ("student", "teacher")
# (target name, bound, comparison) on the mean of student / teacher; the control is the teacher's run
TARGETS = (("student / teacher", 0.95, "<="), ("student / control (the teacher's run)", 1.0, "<"))


def score_seed(seed_dir: str) -> dict[str, float]:
    """Weighted log loss of each arm, the prior, and the pseudo-labels' quality on the hidden series."""
    split, truth_path = open(os.path.join(seed_dir, "scored_on"), encoding="utf-8").read().split()
    truth, _ = read_table(truth_path)
    labels = [f"t_{name}" for name in LABELS]
    out: dict[str, float] = {}
    for arm in ARMS:  # both arms or no verdict: a missing file must not read as "all targets met"
        pred_path = os.path.join(seed_dir, f"{arm}_{split}.csv")
        if not os.path.isfile(pred_path):
            raise FileNotFoundError(f"{pred_path}: the {arm}'s predictions are missing (did bench/semi.sh finish this seed?)")
        frame = align(read_table(pred_path)[0], truth, pred_path, truth_path)
        out[arm] = weighted_log_loss(frame[labels].to_numpy(), frame[[f"p_{n}" for n in LABELS]].to_numpy())
    out["prior"] = prior_baseline(truth[list(LABELS)].to_numpy())
    hidden_truth = pd.read_csv(os.path.join(seed_dir, "train_meta.csv"), dtype={"slice_id": str}).set_index("slice_id")
    pseudo = pd.read_csv(os.path.join(seed_dir, "semi_pseudo_meta.csv"), dtype={"slice_id": str}).set_index("slice_id")
    hidden = pseudo.index.intersection(hidden_truth.index)
    kept = np.isfinite(pseudo.loc[hidden, list(LABELS)].to_numpy()).all(axis=1)
    out["pseudo_vs_hidden"] = weighted_log_loss(hidden_truth.loc[hidden[kept], list(LABELS)].to_numpy(),
                                                pseudo.loc[hidden[kept], list(LABELS)].to_numpy())
    out["split"] = split
    return out


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (ddof 1; 0 for a single seed)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", nargs="+", required=True)
    p.add_argument("--no_fail", action="store_true", default=no_fail_default())
    args = p.parse_args(argv)
    try:
        rows = {seed: score_seed(os.path.join(args.out, f"seed_{seed}")) for seed in args.seeds}
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    columns = ["prior", "pseudo_vs_hidden", *ARMS]
    a, b = RATIO
    ratio = f"{a}/{b}"
    splits = sorted({r["split"] for r in rows.values()})
    print(f"weighted log loss on the {'/'.join(splits)} split, per seed (pseudo_vs_hidden: the teacher's "
          "pseudo-labels of the hidden training series against their true labels)")
    header = columns + [ratio]
    print(f"{'seed':>6} " + " ".join(f"{h:>16}" for h in header))
    for seed, r in rows.items():
        values = [r[c] for c in columns] + [r[a] / r[b]]
        print(f"{seed:>6} " + " ".join(f"{v:>16.5f}" for v in values))
    stats = {c: mean_sd([r[c] for r in rows.values()]) for c in columns}
    stats[ratio] = mean_sd([r[a] / r[b] for r in rows.values()])
    print(f"{'mean':>6} " + " ".join(f"{stats[h][0]:>16.5f}" for h in header))
    print(f"{'sd':>6} " + " ".join(f"{stats[h][1]:>16.5f}" for h in header))
    checks = []
    mean, sd = stats[ratio]
    for name, bound, op in TARGETS:
        ok = mean <= bound if op == "<=" else mean < bound
        # the margin either way: a target met, or missed, by more than the seeds' sd
        side = "met" if ok else "missed"
        spread = "beyond" if abs(bound - mean) > sd else "within"
        print(f"{name}: {mean:.3f} ± {sd:.3f} over {len(rows)} seed(s); target {op} {bound:g} on the mean; "
              f"{side} by a margin {spread} the spread (bound - mean {bound - mean:+.3f}, sd {sd:.3f})")
        checks.append((f"{name} mean {op} {bound:g}", ok))
    return finish(checks, args.no_fail)


if __name__ == "__main__":
    sys.exit(main())
