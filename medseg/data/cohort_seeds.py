"""Which synthetic cohorts may shape a recipe and which may report it.

A number is evidence only if nothing about the recipe was chosen by looking at it. So the seeds of
the synthetic generator are split in two, once, here:

- ``dev``: cohorts for developing recipes. Any choice (recipe, augmentation, head, learning rate,
  iteration count, pseudo-label knobs) is made on these cohorts, or on a validation split.
- ``report``: cohorts whose *test* splits give the numbers we publish (the demo's score line,
  ``bench/semi.sh``, ``bench/ablation.sh``). Nobody tunes on them; a recipe change is re-measured
  on all of them and reported as measured, good or bad.

Seed 0 is ``dev``: the semi-supervised recipe was tuned on its validation split, and earlier
demo numbers were read on its test split. In ``bench/semi.sh`` one seed drives the cohort, its
patient split and the training runs, so the report seeds give three independent replicates.

Shell scripts read the lists with ``python -m medseg.data.cohort_seeds {dev,report}`` (one line,
space-separated).
"""

from __future__ import annotations

from medseg.utils.cli import ArgumentParser

DEV_SEEDS: tuple[int, ...] = (0, 1, 2)
REPORT_SEEDS: tuple[int, ...] = (101, 102, 103)
SEEDS: dict[str, tuple[int, ...]] = {"dev": DEV_SEEDS, "report": REPORT_SEEDS}


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m medseg.data.cohort_seeds",
                                     description="Print the synthetic cohort seeds of one purpose.")
    parser.add_argument("purpose", choices=sorted(SEEDS))
    args = parser.parse_args(argv)
    print(" ".join(map(str, SEEDS[args.purpose])))


if __name__ == "__main__":
    main()
