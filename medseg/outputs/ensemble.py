"""Weighted mean of several submissions or prediction files over the same images.

``python -m medseg.outputs.ensemble --inputs a.csv b.csv DIR … [--weights 2 1 …] --out X
[--split test] [--rule_k K --rule_threshold T] [--eps E]``

Inputs may be Kaggle ``ID,Label`` tables or predictions CSVs (detected per file, mixing
allowed); the output takes the format and row order of the first input. A folder stands for its
prediction files (:func:`expand_inputs`): a run folder's ``predictions_<split>.csv`` (what
infer.py writes), or for a K-fold ``SAVE_ROOT`` (``medseg.tools.kfold``) that file of each
``fold_k/``, in fold order; the probabilities are averaged, as for ``test.csv``. The original method's
optional rule sets a probability to 1 where at least ``k`` inputs exceed ``threshold``; it is off
unless both ``--rule_k`` and ``--rule_threshold`` are given.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from typing import Sequence

import numpy as np
import pandas as pd

from medseg.constants import LABELS
from medseg.outputs.predictions import TableError, format_examples, read_kaggle, read_table, wide_to_kaggle
from medseg.utils.atomic import atomic_write_csv
from medseg.utils.cli import ArgumentParser, run_cli
from medseg.utils.logger import get_logger

logger = get_logger("outputs.ensemble")


def normalise_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """``n`` non-negative weights scaled to sum 1 (equal weights when ``None``)."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{len(w)} weight(s) given for {n} input(s)")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights {list(weights)} must be finite, non-negative and not all zero")
    return w / w.sum()


def ensemble(
    tables: Sequence[pd.DataFrame],
    weights: Sequence[float] | None = None,
    rule_k: int | None = None,
    rule_threshold: float | None = None,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Combine wide tables (``slice_id`` + six labels) into one, in the first table's slice order.

    All tables must cover the same slices. With ``rule_k`` and ``rule_threshold`` set, a cell
    becomes 1.0 where at least ``rule_k`` inputs are above ``rule_threshold``.
    """
    if not tables:
        raise ValueError("no inputs to ensemble")
    names = list(names) if names is not None else [f"input {i}" for i in range(len(tables))]
    w = normalise_weights(weights, len(tables))
    if (rule_k is None) != (rule_threshold is None):
        raise ValueError("the rule needs both rule_k and rule_threshold")
    if rule_k is not None and not 1 <= rule_k <= len(tables):
        raise ValueError(f"rule_k={rule_k} must be between 1 and the number of inputs ({len(tables)})")
    order = tables[0]["slice_id"].astype(str)
    reference = set(order)
    stacked = []
    for name, table in zip(names, tables):
        ids = table["slice_id"].astype(str)
        missing = sorted(reference - set(ids))
        extra = sorted(set(ids) - reference)
        if missing or extra:
            raise TableError(
                f"{name}: slices differ from {names[0]}: {len(missing)} missing (e.g. {format_examples(missing)}), "
                f"{len(extra)} extra (e.g. {format_examples(extra)})"
            )
        stacked.append(table.set_index(ids)[list(LABELS)].reindex(order).to_numpy(np.float64))
    probs = np.stack(stacked)  # [n_inputs, n_slices, 6]
    mean = np.tensordot(w, probs, axes=1)
    if rule_k is not None:
        votes = (probs > rule_threshold).sum(axis=0)
        mean = np.where(votes >= rule_k, 1.0, mean)
    out = pd.DataFrame({"slice_id": order.to_numpy()})
    if "series_id" in tables[0].columns:
        out["series_id"] = tables[0]["series_id"].to_numpy()
    for i, label in enumerate(LABELS):
        out[label] = mean[:, i]
    return out


def expand_inputs(inputs: Sequence[str], split: str = "test") -> list[str]:
    """Files as given; a folder → its ``predictions_<split>.csv``, else that file of each of its
    ``fold_k/`` folders (k ascending). A folder with neither is a :class:`TableError`."""
    name = f"predictions_{split}.csv"
    files: list[str] = []
    for path in inputs:
        if not os.path.isdir(path):
            files.append(path)
            continue
        if os.path.isfile(os.path.join(path, name)):
            files.append(os.path.join(path, name))
            continue
        folds = [(int(m.group(1)), f) for f in glob.glob(os.path.join(glob.escape(path), "fold_*", name))
                 if (m := re.fullmatch(r"fold_(\d+)", os.path.basename(os.path.dirname(f))))]
        if not folds:
            raise TableError(f"{path}: a folder without {name} or fold_*/{name}")
        files.extend(f for _, f in sorted(folds))
    return files


def ensemble_files(
    inputs: Sequence[str],
    out_path: str,
    weights: Sequence[float] | None = None,
    rule_k: int | None = None,
    rule_threshold: float | None = None,
    eps: float | None = None,
) -> pd.DataFrame:
    """Read, combine and atomically write; returns the written table (format of ``inputs[0]``).
    ``inputs``: files (folders are expanded by :func:`expand_inputs` first)."""
    if not inputs:
        raise TableError("no inputs to ensemble")
    tables, formats = zip(*(read_table(path) for path in inputs))
    combined = ensemble(tables, weights, rule_k, rule_threshold, names=inputs)
    if eps is not None:
        combined[list(LABELS)] = combined[list(LABELS)].clip(eps, 1.0 - eps)
    if formats[0] == "kaggle":
        # Keep the first file's row order so that the output diffs cleanly against it.
        first_ids = read_kaggle(inputs[0])["ID"]
        result = wide_to_kaggle(combined).set_index("ID").reindex(first_ids).reset_index()
    else:
        result = combined
    atomic_write_csv(out_path, result)
    logger.info(
        "wrote %s (%s format): %d slices from %d inputs, weights %s%s",
        out_path, formats[0], len(combined), len(inputs), np.round(normalise_weights(weights, len(inputs)), 4).tolist(),
        f", rule k={rule_k} threshold={rule_threshold}" if rule_k is not None else "",
    )
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m medseg.outputs.ensemble", description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", nargs="+", required=True,
                        help="submissions (ID,Label), predictions CSVs, and/or folders: a run's (its "
                             "predictions_<split>.csv) or a K-fold SAVE_ROOT (that file of every fold_k/)")
    parser.add_argument("--split", default="test",
                        help="which predictions_<split>.csv a folder stands for (default test)")
    parser.add_argument("--weights", nargs="+", type=float, default=None,
                        help="one weight per input file, folders expanded (normalised); default equal")
    parser.add_argument("--out", required=True, help="output CSV, in the format of the first input")
    parser.add_argument("--rule_k", type=int, default=None, help="rule: output 1 where at least K inputs exceed --rule_threshold")
    parser.add_argument("--rule_threshold", type=float, default=None, help="rule threshold (off unless --rule_k is given too)")
    parser.add_argument("--eps", type=float, default=None, help="clip the output to [eps, 1-eps] (default: no clipping)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        inputs = expand_inputs(args.inputs, args.split)
        if len(inputs) != len(args.inputs):
            logger.info("inputs: %s", ", ".join(inputs))
        ensemble_files(inputs, args.out, args.weights, args.rule_k, args.rule_threshold, args.eps)
        print(f"ensemble written to {args.out}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
