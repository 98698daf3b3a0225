"""The student's source shares when ``bench/semi.sh`` adds a pool cohort: prints ``[l, a, b]``.

Run from the repository root as ``python -m bench.semi_pool_ratios --config STUDENT_YML --pseudo
COHORT_TABLE POOL_TABLE [--ratios "[l, p]"]``. The labelled : pseudo-labelled share stays what the
student config (or ``--ratios``) says; the pseudo-labelled share is split between the cohort's own
pseudo-labelled series and the pool's in proportion to their series counts, so every
pseudo-labelled series is drawn as often as any other, wherever it comes from.
"""

from __future__ import annotations

import sys
from typing import Sequence

import pandas as pd
import yaml

from medseg.config import Config
from medseg.utils.cli import ArgumentParser


def split_pseudo_share(ratios: Sequence[float], series_counts: Sequence[int]) -> list[float]:
    """``[labelled, pseudo]`` and the pseudo sources' series counts → one share per source."""
    if len(ratios) != 2:
        raise ValueError(f"expected two shares (labelled, pseudo-labelled), got {list(ratios)}")
    if not series_counts or min(series_counts) <= 0:
        raise ValueError(f"every pseudo-labelled source needs series, got counts {list(series_counts)}")
    labelled, pseudo = map(float, ratios)
    total = float(sum(series_counts))
    return [labelled, *(pseudo * n / total for n in series_counts)]


def series_count(path: str) -> int:
    """Distinct series of a pseudo-label table; a missing or empty table is an error naming it."""
    try:
        table = pd.read_csv(path, usecols=["series_id"])
    except (FileNotFoundError, ValueError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: not a pseudo-label table ({err})") from err
    if table.empty:
        raise ValueError(f"{path}: no pseudo-labelled series")
    return int(table["series_id"].nunique())


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m bench.semi_pool_ratios", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the resolved student config (two sources)")
    parser.add_argument("--ratios", help='labelled : pseudo-labelled, e.g. "[1, 3]" (default: the config\'s)')
    parser.add_argument("--pseudo", nargs="+", required=True, help="pseudo-label tables, one per pseudo source")
    args = parser.parse_args(argv)
    try:
        ratios = yaml.safe_load(args.ratios) if args.ratios else Config(args.config).get("train_dataset.ratios")
        if ratios is None:
            raise ValueError(f"{args.config}: train_dataset.ratios is not set")
        shares = split_pseudo_share(ratios, [series_count(path) for path in args.pseudo])
    except ValueError as err:
        print(f"semi_pool_ratios: {err}", file=sys.stderr)
        sys.exit(2)
    print("[" + ", ".join(f"{share:.6g}" for share in shares) + "]")


if __name__ == "__main__":
    main()
