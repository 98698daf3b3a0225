"""``python -m medseg.semi.subset``: split a labelled tag into a labelled part and a hidden part.

Semi-supervised experiments need "a fraction of the training series is labelled, the rest is
not". This writes two new tags next to the source table, pointing at the same cache:
``<labelled_tag>_meta.csv`` (labels kept) and ``<unlabelled_tag>_meta.csv`` (label columns
emptied, as docs/design.md specifies for unlabelled splits). The split is by patient, so no
patient is on both sides and the leakage check can hold the pseudo table to patient level.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from medseg.constants import LABELS
from medseg.data.meta import SEMI_COLUMNS, meta_path, read_meta, write_meta
from medseg.utils.cli import ArgumentParser, run_cli
from medseg.utils.logger import get_logger

logger = get_logger("semi.subset")


def split_labelled(meta: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labelled rows, hidden rows): about ``fraction`` of the patients keep their labels."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    patients = meta["patient_id"].to_numpy()
    if len(np.unique(patients)) < 2:
        raise ValueError("need at least two patients to split into labelled and unlabelled parts")
    splitter = GroupShuffleSplit(n_splits=1, train_size=fraction, random_state=seed)
    keep_idx, hide_idx = next(splitter.split(np.zeros(len(meta)), groups=patients))
    labelled = meta.iloc[np.sort(keep_idx)].reset_index(drop=True)
    hidden = meta.iloc[np.sort(hide_idx)].reset_index(drop=True)
    hidden[list(LABELS)] = np.nan
    return labelled, hidden


def main(argv: Iterable[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m medseg.semi.subset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_root", required=True)
    p.add_argument("--split", default="train", help="labelled tag to split (default: train)")
    p.add_argument("--fraction", type=float, default=0.3, help="share of patients that keep their labels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labelled_tag", default="train_labelled")
    p.add_argument("--unlabelled_tag", default="train_unlabelled")
    args = p.parse_args(list(argv) if argv is not None else None)

    def job() -> None:
        meta = read_meta(args.dataset_root, args.split, required=SEMI_COLUMNS)
        labelled, hidden = split_labelled(meta, args.fraction, args.seed)
        for tag, frame in ((args.labelled_tag, labelled), (args.unlabelled_tag, hidden)):
            path = meta_path(args.dataset_root, tag)
            write_meta(path, frame)
            logger.info("wrote %s: %d series, %d slices, %d patients", path, frame["series_id"].nunique(), len(frame),
                        frame["patient_id"].nunique())

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
