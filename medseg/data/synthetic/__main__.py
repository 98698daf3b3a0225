"""CLI: ``python -m medseg.data.synthetic --out DIR --series N --seed S [...]`` (see the package doc)."""

from __future__ import annotations

import sys

from medseg.data.synthetic.cohort import format_summary, generate_cohort
from medseg.data.synthetic.sites import SITES
from medseg.utils.cli import ArgumentParser, run_cli


def generate(argv: list[str] | None = None) -> dict:
    """Parse the flags, write the cohort, print its summary; returns the summary."""
    parser = ArgumentParser(prog="python -m medseg.data.synthetic",
                            description="Write a synthetic RSNA-style head-CT cohort in the Kaggle layout.")
    parser.add_argument("--out", required=True, help="output folder (Kaggle layout)")
    parser.add_argument("--series", type=int, required=True, help="number of series (= studies)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=512, help="image rows = columns")
    parser.add_argument("--test_fraction", type=float, default=0.2, help="share of patients in stage_2_test")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (one series each)")
    parser.add_argument("--n_slices", type=int, default=None, help="fix every series' length (tests)")
    parser.add_argument("--overwrite", action="store_true", help="replace another cohort found in --out")
    parser.add_argument("--sites", default="classic",
                        help="scanner sites the series are spread over: 'all' or a comma list of "
                             f"{', '.join(SITES)} (default classic: the cohort as before sites existed)")
    args = parser.parse_args(argv)
    summary = generate_cohort(args.out, args.series, args.seed, size=args.size, test_fraction=args.test_fraction,
                              workers=args.workers, n_slices=args.n_slices, overwrite=args.overwrite,
                              sites=args.sites)
    print(format_summary(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: generate(argv))


if __name__ == "__main__":
    sys.exit(main())
