"""Summary of ``bench/semi.sh``: each seed's scores, mean ± sd over seeds, the targets on the mean.

Run from the repository root as ``python -m bench.semi_summary --out DIR --seeds S...`` (what
``bench/semi.sh`` does). Its output starts with the provenance line (``bench/provenance.py``).

Reads ``<out>/seed_<S>/`` (or its runs, below) as the bench left it (``<arm>_<split>.csv``
predictions, ``scored_on`` with one ``<split> <truth table>`` line per scored split, the
pseudo-label table and the training truth) and prints one table per scored split. Targets, on the
mean over seeds of the holdout cohort's ratio (the first scored split's when no seed has a holdout):
student / teacher <= 0.95 and student / control < 1, where the control (the student's run without
the pseudo-labelled source) is the teacher's run itself, so both targets read the one ratio; each is
said to be met or missed by a margin beyond the spread or within it (the gap between the mean ratio
and its bound, either way, larger than the ratio's sd over seeds or not). Exits 1 when a target is
missed, 0 with ``--no_fail`` or ``BENCH_NO_FAIL=1``; 2 when a seed's scores are missing.

With ``SEMI_ORACLE=1`` the bench also trains the oracle (the student's run with the true labels of
the same series): on the holdout (the oracle trained on the test split's true labels, so it is
scored there only) its column, oracle / teacher (what perfect pseudo-labels would give: the usual
ceiling of pseudo-labelling, itself one training run) and the share of that gain the pseudo-labels
took, ``(teacher - student) / (teacher - oracle)``, are printed too; the targets do not read them.

With ``SEMI_RUNS=k`` > 1 each seed holds ``run_0`` .. ``run_<k-1>`` (every arm trained once per run,
run r with training seed S + 1000 r): a seed's score per arm is the mean over its runs, its ratio
that of those means, and each run's ratio is printed under the table. Every seed must have the same
number of runs, each scored on the same splits and arms (else exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pandas as pd

from bench.provenance import provenance_line
from bench.targets import finish, no_fail_default
from medseg.constants import LABELS
from medseg.engine.metrics import prior_baseline, weighted_log_loss
from medseg.outputs.predictions import read_table
from medseg.outputs.report import align

ARMS = ("teacher", "student")
ORACLE = "oracle"  # optional arm (SEMI_ORACLE=1), on the holdout only: every seed has it or none
RATIO = ("student", "teacher")
# (target name, bound, comparison) on the mean of student / teacher; the control is the teacher's run
TARGETS = (("student / teacher", 0.95, "<="), ("student / control (the teacher's run)", 1.0, "<"))


def scored_splits(seed_dir: str) -> list[tuple[str, str]]:
    """The ``(split, truth table)`` pairs ``bench/semi.sh`` scored this seed on, in its order."""
    path = os.path.join(seed_dir, "scored_on")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (did bench/semi.sh finish this seed?)")
    with open(path, encoding="utf-8") as fh:
        pairs = [tuple(line.rstrip("\n").split(" ", 1)) for line in fh if line.strip()]
    bad = [" ".join(pair) for pair in pairs if len(pair) != 2]
    if bad or not pairs:
        raise ValueError(f"{path}: expected '<split> <truth table>' lines, got {bad or 'nothing'}")
    return pairs


def score_split(seed_dir: str, split: str, truth_path: str) -> dict[str, float]:
    """Weighted log loss of each arm on one scored split, and the prior's on it."""
    truth, _ = read_table(truth_path)
    labels = [f"t_{name}" for name in LABELS]
    out: dict[str, float] = {}
    # the oracle trained on the test split's labels: scored on the holdout only, where it may be
    # missing (checked across seeds by oracle_columns())
    oracle = os.path.isfile(os.path.join(seed_dir, f"{ORACLE}_{split}.csv")) and split == "holdout"
    for arm in (*ARMS, ORACLE) if oracle else ARMS:  # teacher and student or no verdict: a missing file must not read as "all targets met"
        pred_path = os.path.join(seed_dir, f"{arm}_{split}.csv")
        if not os.path.isfile(pred_path):
            raise FileNotFoundError(f"{pred_path}: the {arm}'s predictions are missing (did bench/semi.sh finish this seed?)")
        frame = align(read_table(pred_path)[0], truth, pred_path, truth_path)
        out[arm] = weighted_log_loss(frame[labels].to_numpy(), frame[[f"p_{n}" for n in LABELS]].to_numpy())
    out["prior"] = prior_baseline(truth[list(LABELS)].to_numpy())
    return out


def pseudo_quality(truth_dir: str, run_dir: str) -> float:
    """Weighted log loss of a run's pseudo-labels of the hidden training series against their labels."""
    hidden_truth = pd.read_csv(os.path.join(truth_dir, "train_meta.csv"), dtype={"slice_id": str}).set_index("slice_id")
    pseudo = pd.read_csv(os.path.join(run_dir, "semi_pseudo_meta.csv"), dtype={"slice_id": str}).set_index("slice_id")
    hidden = pseudo.index.intersection(hidden_truth.index)
    kept = np.isfinite(pseudo.loc[hidden, list(LABELS)].to_numpy()).all(axis=1)
    return weighted_log_loss(hidden_truth.loc[hidden[kept], list(LABELS)].to_numpy(),
                             pseudo.loc[hidden[kept], list(LABELS)].to_numpy())


def run_dirs(seed_dir: str) -> list[str]:
    """A seed's runs: its ``run_<r>`` folders in order (``SEMI_RUNS`` > 1), else the seed's folder itself."""
    runs = sorted((int(name[4:]), name) for name in (os.listdir(seed_dir) if os.path.isdir(seed_dir) else ())
                  if name.startswith("run_") and name[4:].isdigit())
    if [r for r, _ in runs] != list(range(len(runs))):
        raise ValueError(f"{seed_dir}: runs {[name for _, name in runs]} are not run_0 .. run_{len(runs) - 1}")
    return [os.path.join(seed_dir, name) for _, name in runs] or [seed_dir]


def score_run(seed_dir: str, run_dir: str) -> dict[str, dict[str, float]]:
    """Per scored split of one run: prior, pseudo-label quality, each arm's score."""
    quality = pseudo_quality(seed_dir, run_dir)
    return {split: {**score_split(run_dir, split, truth), "pseudo_vs_hidden": quality}
            for split, truth in scored_splits(run_dir)}


def score_seed(seed_dir: str) -> tuple[dict[str, dict[str, float]], list[dict[str, dict[str, float]]]]:
    """The seed's scores (each the mean over its runs) and each run's; its runs must have been scored alike."""
    dirs = run_dirs(seed_dir)
    runs = [score_run(seed_dir, d) for d in dirs]
    shapes = {os.path.basename(d): {split: sorted(r) for split, r in run.items()} for d, run in zip(dirs, runs)}
    if len({str(shape) for shape in shapes.values()}) > 1:
        raise ValueError(f"{seed_dir}: its runs were scored on different splits or arms ({shapes}); rerun the seed")
    mean = {split: {key: float(np.mean([run[split][key] for run in runs])) for key in r} for split, r in runs[0].items()}
    return mean, runs


def target_split(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """The holdout when every seed has one, else the first split every seed was scored on."""
    names = [list(r) for r in rows.values()]
    if any("holdout" in n for n in names):
        lacking = [seed for seed, n in zip(rows, names) if "holdout" not in n]
        if lacking:
            raise ValueError(f"seed(s) {' '.join(lacking)}: no holdout scores while other seeds have them "
                             "(rerun bench/semi.sh for those seeds)")
        return "holdout"
    first = names[0][0]
    if any(first not in n for n in names):
        raise ValueError(f"the seeds were scored on different splits ({names}); rerun them alike")
    return first


def oracle_columns(rows: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """``["oracle"]`` when every seed has the oracle's holdout scores, ``[]`` when none has; a mix is
    an error (a ceiling over some seeds only would not compare)."""
    has = {seed: ORACLE in r.get("holdout", {}) for seed, r in rows.items()}
    if any(has.values()) and not all(has.values()):
        lacking = [seed for seed, ok in has.items() if not ok]
        raise ValueError(f"seed(s) {' '.join(lacking)}: no oracle scores while other seeds have them "
                         "(rerun bench/semi.sh with SEMI_ORACLE=1 for those seeds)")
    return [ORACLE] if all(has.values()) else []


def print_ceiling(split: str, rows: dict[str, dict[str, float]]) -> None:
    """Oracle / teacher and the share of its gain the student took, per seed and mean ± sd."""
    print(f"the ceiling on the {split} split (the oracle: the student's run with the true labels of its "
          "pseudo-labelled series); captured = (teacher - student) / (teacher - oracle)")
    ceiling = {seed: r[ORACLE] / r["teacher"] for seed, r in rows.items()}
    captured = {seed: (r["teacher"] - r["student"]) / (r["teacher"] - r[ORACLE])
                for seed, r in rows.items() if r["teacher"] > r[ORACLE]}
    for seed in rows:
        share = f"{captured[seed]:.3f}" if seed in captured else "n/a (the oracle is no better than the teacher)"
        print(f"{seed:>6} oracle/teacher {ceiling[seed]:.5f} captured {share}")
    mean, sd = mean_sd(list(ceiling.values()))
    line = f"{'mean':>6} oracle/teacher {mean:.3f} ± {sd:.3f}"
    if captured:
        c_mean, c_sd = mean_sd(list(captured.values()))
        line += f" captured {c_mean:.3f} ± {c_sd:.3f} over {len(captured)} seed(s)"
    print(line)


def print_table(split: str, rows: dict[str, dict[str, float]], columns: list[str], ratio: str) -> tuple[float, float]:
    """One split's per-seed rows, mean and sd; returns the ratio's mean and sd."""
    a, b = RATIO
    where = ("the holdout cohort's test split (independent: never trained on, never pseudo-labelled)"
             if split == "holdout" else f"the {split} split")
    print(f"weighted log loss on {where}, per seed (pseudo_vs_hidden: the teacher's "
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
    return stats[ratio]


def print_runs(split: str, runs: dict[str, list[dict[str, float]]]) -> None:
    """Each run's student / teacher on one split, per seed, and their mean ± sd: the training noise
    that averaging the runs shrinks."""
    a, b = RATIO
    print(f"the runs' {a}/{b} on the {split} split, per seed (the table's ratio is of the runs' mean scores)")
    for seed, per_run in runs.items():
        values = [r[a] / r[b] for r in per_run]
        mean, sd = mean_sd(values)
        print(f"{seed:>6} runs " + " ".join(f"{v:.5f}" for v in values) + f" mean {mean:.5f} sd {sd:.5f}")


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
    print(provenance_line(), flush=True)  # the header: what produced these scores' summary
    try:
        scored = {seed: score_seed(os.path.join(args.out, f"seed_{seed}")) for seed in args.seeds}
        rows = {seed: mean for seed, (mean, _) in scored.items()}
        runs = {seed: per_run for seed, (_, per_run) in scored.items()}
        counts = {seed: len(per_run) for seed, per_run in runs.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"the seeds have different numbers of runs ({counts}); rerun them with one SEMI_RUNS")
        target = target_split(rows)
        oracle = oracle_columns(rows)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    columns = ["prior", "pseudo_vs_hidden", *ARMS]
    ratio = "/".join(RATIO)
    splits = [split for split in next(iter(rows.values())) if all(split in r for r in rows.values())]
    n_runs = len(next(iter(runs.values())))
    if n_runs > 1:
        print(f"each seed's scores are the mean over its {n_runs} runs (training seeds S + 1000 r, r = 0 .. {n_runs - 1})")
    ratios = {}
    for split in splits:
        ratios[split] = print_table(split, {seed: r[split] for seed, r in rows.items()},
                                    columns + (oracle if split == "holdout" else []), ratio)
        if n_runs > 1:
            print_runs(split, {seed: [run[split] for run in per_run] for seed, per_run in runs.items()})
    print(f"targets on the {target} split's {ratio}")
    checks = []
    mean, sd = ratios[target]
    for name, bound, op in TARGETS:
        ok = mean <= bound if op == "<=" else mean < bound
        # the margin either way: a target met, or missed, by more than the seeds' sd
        side = "met" if ok else "missed"
        spread = "beyond" if abs(bound - mean) > sd else "within"
        print(f"{name}: {mean:.3f} ± {sd:.3f} over {len(rows)} seed(s); target {op} {bound:g} on the mean; "
              f"{side} by a margin {spread} the spread (bound - mean {bound - mean:+.3f}, sd {sd:.3f})")
        checks.append((f"{name} mean {op} {bound:g}", ok))
    if oracle:
        print_ceiling("holdout", {seed: r["holdout"] for seed, r in rows.items()})
    return finish(checks, args.no_fail)


if __name__ == "__main__":
    sys.exit(main())
