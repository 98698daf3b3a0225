"""Which synthetic cohorts may shape a recipe, which may report it, and which only score.

A number is evidence only if nothing about the recipe was chosen by looking at it. So the seeds of
the synthetic generator are split, once, here:

- ``dev``: cohorts for developing recipes. Any choice (recipe, augmentation, head, learning rate,
  iteration count, pseudo-label knobs) is made on these cohorts, or on a validation split.
- ``report``: cohorts whose *test* splits give the numbers we publish (the demo's score line,
  ``bench/semi.sh``, ``bench/ablation.sh``). Nobody tunes on them; a recipe change is re-measured
  on all of them and reported as measured, good or bad.
- ``holdout``: for each cohort seed S, an independent cohort at seed ``HOLDOUT_OFFSET + S`` that
  ``bench/semi.sh`` only scores on (never trained on, never pseudo-labelled). Its ~285 test series
  are about five times a 300-series cohort's test split, whose ~60 series move a seed's
  student / teacher ratio by up to ±0.18 (bootstrap sd over series, report seed 101): too coarse to
  resolve a 5 % difference.
- ``pool``: for each cohort seed S, an independent cohort at seed ``POOL_OFFSET + S`` whose test
  series (images only) ``bench/semi.sh`` adds, with ``SEMI_POOL_SERIES`` > 0, to the unlabelled
  series the teacher pseudo-labels: a pool several times the labelled series, as self-training
  wants. Never scored, never a holdout.

Seed 0 is ``dev``: the semi-supervised recipe was tuned on its validation split, and earlier
demo numbers were read on its test split. In ``bench/semi.sh`` one seed drives the cohort, its
patient split and the training runs, so the report seeds give three independent replicates.

Shell scripts read the lists with ``python -m medseg.data.cohort_seeds {dev,report}`` (one line,
space-separated) and a cohort's holdout or pool seed with
``python -m medseg.data.cohort_seeds {holdout,pool} S``.
"""

from __future__ import annotations

from medseg.utils.cli import ArgumentParser

DEV_SEEDS: tuple[int, ...] = (0, 1, 2)
REPORT_SEEDS: tuple[int, ...] = (101, 102, 103)
SEEDS: dict[str, tuple[int, ...]] = {"dev": DEV_SEEDS, "report": REPORT_SEEDS}
HOLDOUT_OFFSET = 10000  # above every dev and report seed, so no holdout cohort is one of theirs
POOL_OFFSET = 20000  # above every holdout seed of a cohort seed below 10000


def holdout_seed(seed: int) -> int:
    """The generator seed of cohort ``seed``'s scoring-only holdout cohort."""
    return HOLDOUT_OFFSET + int(seed)


def pool_seed(seed: int) -> int:
    """The generator seed of cohort ``seed``'s extra unlabelled pool (pseudo-labelled, never scored)."""
    return POOL_OFFSET + int(seed)


DERIVED = {"holdout": holdout_seed, "pool": pool_seed}  # purpose -> cohort seed's derived seed


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m medseg.data.cohort_seeds",
                                     description="Print the synthetic cohort seeds of one purpose.")
    parser.add_argument("purpose", choices=[*sorted(SEEDS), *DERIVED])
    parser.add_argument("seed", nargs="?", type=int, help="holdout, pool: the cohort seed whose derived seed to print")
    args = parser.parse_args(argv)
    if args.purpose in DERIVED:
        if args.seed is None:
            parser.error(f"{args.purpose} needs the cohort seed, e.g. {args.purpose} 101")
        print(DERIVED[args.purpose](args.seed))
    else:
        print(" ".join(map(str, SEEDS[args.purpose])))


if __name__ == "__main__":
    main()
