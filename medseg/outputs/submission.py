"""Per-slice predictions → a Kaggle submission whose IDs are exactly the sample submission's.

``python -m medseg.outputs.submission --pred PRED.csv --sample stage_2_sample_submission.csv
--out submission.csv [--eps 1e-7]``

A submission with a missing, extra or repeated ID is rejected by Kaggle (or scored wrongly), so
any difference from the sample is an error here, with counts and examples, before writing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from medseg.engine.metrics import METRIC_EPS
from medseg.outputs.predictions import format_examples, read_kaggle, read_table, wide_to_kaggle
from medseg.utils.atomic import atomic_write_csv
from medseg.utils.cli import ArgumentParser, run_cli
from medseg.utils.logger import get_logger

logger = get_logger("outputs.submission")


class SubmissionError(ValueError):
    """The submission's IDs do not match the sample submission's."""


def check_ids(ids: Iterable[str], expected: Iterable[str], source: str, reference: str) -> None:
    """Raise :class:`SubmissionError` unless ``ids`` and ``expected`` are the same set without repeats."""
    ids = pd.Series(list(ids), dtype=object)
    expected = pd.Series(list(expected), dtype=object)
    problems = []
    for name, series in ((source, ids), (reference, expected)):
        dup = series[series.duplicated()].unique()
        if len(dup):
            problems.append(f"{len(dup)} duplicate ID(s) in {name}, e.g. {format_examples(dup)}")
    have, want = set(ids), set(expected)
    missing = [i for i in expected.drop_duplicates() if i not in have]
    extra = [i for i in ids.drop_duplicates() if i not in want]
    if missing:
        problems.append(f"{len(missing)} ID(s) of {reference} missing from {source}, e.g. {format_examples(missing)}")
    if extra:
        problems.append(f"{len(extra)} extra ID(s) in {source} not in {reference}, e.g. {format_examples(extra)}")
    if problems:
        raise SubmissionError("; ".join(problems))


def make_submission(pred: pd.DataFrame, sample: pd.DataFrame, eps: float = METRIC_EPS, source: str = "<predictions>", reference: str = "<sample>") -> pd.DataFrame:
    """Wide predictions + sample ``ID,Label`` → ``ID,Label`` in the sample's row order, clipped to [eps, 1-eps]."""
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"eps must be in [0, 0.5), got {eps}")
    rows = wide_to_kaggle(pred)
    check_ids(rows["ID"], sample["ID"].astype(str), source, reference)
    labels = rows.set_index("ID")["Label"].reindex(sample["ID"].astype(str))
    return pd.DataFrame({"ID": labels.index.to_numpy(), "Label": np.clip(labels.to_numpy(np.float64), eps, 1.0 - eps)})


def write_submission(pred_path: str, sample_path: str, out_path: str, eps: float = METRIC_EPS) -> pd.DataFrame:
    """Read, check, convert and atomically write; returns the written table."""
    pred, _ = read_table(pred_path)
    sample = read_kaggle(sample_path)
    submission = make_submission(pred, sample, eps, source=pred_path, reference=sample_path)
    atomic_write_csv(out_path, submission)
    logger.info("wrote %s: %d rows (%d slices), clipped to [%g, 1-%g]", out_path, len(submission), len(pred), eps, eps)
    return submission


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m medseg.outputs.submission", description=__doc__.split("\n")[0])
    parser.add_argument("--pred", required=True, help="predictions CSV (slice_id, series_id, six labels) or a Kaggle ID,Label table")
    parser.add_argument("--sample", required=True, help="stage_2_sample_submission.csv: the exact ID set to produce")
    parser.add_argument("--out", required=True, help="submission CSV to write")
    parser.add_argument("--eps", type=float, default=METRIC_EPS, help=f"clip probabilities to [eps, 1-eps] (default {METRIC_EPS:g})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        write_submission(args.pred, args.sample, args.out, args.eps)
        print(f"submission written to {args.out}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
