"""``python -m medseg.semi.pseudo_label``: a teacher's predictions on unlabelled series → a meta table.

The teacher (``--model`` checkpoint + ``--config``, run through the engine's ``predict_dataset``, or
existing tables via ``--predictions``: an ensemble's predictions CSVs or Kaggle submissions, one or
several files, or the true labels, as ``bench/semi.sh``'s oracle uses it) predicts every slice of the
given tags (``test``, or any prepared tag such as a hidden part of the training set). A
checkpoint's ``calibration.json`` (:mod:`medseg.outputs.calibrate`, fitted on validation) is
applied first, as ``infer.py`` applies it: an over- or under-confident teacher otherwise teaches
its miscalibration (``--no_calibration`` to skip). ``--tta`` (or the config's
``test_time_augmentation``) averages the teacher's test-time views first. The probabilities become soft labels under
:mod:`medseg.semi.rules` (confidence filter, temperature, hard labels) and are written,
atomically, as ``DATASET_ROOT/<tag>_meta.csv`` in the docs/design.md format, pointing at the same
cache: a training config reads it as a ``PseudoSeriesDataset`` tag. Slices dropped by a
``slice`` filter keep their row with empty labels; series dropped by a ``series`` filter are left out.

Validation is never pseudo-labelled, and the table is refused if it shares a series or a patient
with the labelled tags (``--exclude``, default ``train val``). Several rounds: train the student,
then run this again with the student as ``--model``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from medseg.constants import LABELS
from medseg.data.meta import META_COLUMNS, PREPARED_TAGS, SEMI_COLUMNS, meta_path, meta_tag, read_meta, sort_meta, write_meta
from medseg.semi.leakage import DEFAULT_EXCLUDE, VALIDATION_TAG, LeakageError, check_no_leakage
from medseg.semi.rules import PseudoLabelRules, pseudo_labels
from medseg.utils.cli import ArgumentParser, run_cli
from medseg.utils.logger import get_logger


logger = get_logger("semi.pseudo_label")

def output_tag(out: str, dataset_root: str) -> str:
    """The tag of ``out`` (``DATASET_ROOT/<tag>_meta.csv``); the table must live in the dataset
    root because its ``cache`` paths are relative to it."""
    tag = meta_tag(out)
    if os.path.realpath(os.path.dirname(os.path.abspath(out))) != os.path.realpath(dataset_root):
        raise ValueError(f"{out}: must be written into the dataset root {dataset_root} (its cache paths are relative to it)")
    return tag


def check_tags(splits: Sequence[str], out_tag: str, exclude: Sequence[str]) -> None:
    """Refuse to label validation or an excluded tag, and to overwrite an input or a prepared table."""
    for split in splits:
        if split == VALIDATION_TAG:
            raise LeakageError("validation is never pseudo-labelled (--split val refused)")
        if split in exclude:
            raise LeakageError(f"--split {split} is also in --exclude: its series are labelled, not pseudo-labelled")
    if out_tag in (*PREPARED_TAGS, *splits, *exclude):
        raise ValueError(f"refusing to overwrite the {out_tag!r} table (a prepared, input or labelled table); choose another --out")


def teacher_predictions(config: str, overrides: Sequence[str], model_path: str, dataset_root: str,
                        splits: Sequence[str], batch_size: int = 1, num_workers: int = 0,
                        calibrate: bool = True, tta: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """``{split: predictions frame (docs/design.md)}`` by the checkpoint at ``model_path``, through
    the engine's ``predict_dataset`` with the config's ``infer_dataset`` (else ``val_dataset``)
    transforms; calibrated by the checkpoint's ``calibration.json`` when there is one and ``calibrate``.
    ``tta``: test-time views (``--tta``) over the config's ``test_time_augmentation``."""
    from medseg.config import Config
    from medseg.engine import checkpoint as ckpt
    from medseg.data.build import build_eval_dataset
    from medseg.engine.evaluator import predict_dataset
    from medseg.engine.tta import resolve_tta
    from medseg.outputs.calibrate import apply_calibration, load_calibration

    cfg = Config(config, overrides)
    test_time = resolve_tta(cfg, tta)
    model = cfg.build("model")
    ckpt.load_params(model_path, model, strict=True)
    calibration = load_calibration(model_path, test_time) if calibrate else None
    frames = {}
    for split in splits:
        dataset = build_eval_dataset(cfg, split, dataset_root=dataset_root)
        logger.info("teacher %s predicts %s: %d series%s%s", model_path, dataset.meta_file, len(dataset),
                    ", calibrated" if calibration is not None else "",
                    f", test-time views {test_time.describe()}" if test_time is not None and test_time.active else "")
        frame, _labels = predict_dataset(model, dataset, batch_size=batch_size, num_workers=num_workers, sharded=False,
                                         tta=test_time)
        frame[list(LABELS)] = apply_calibration(frame[list(LABELS)].to_numpy(), calibration)
        frames[split] = frame
    return frames


def attach_probabilities(meta: pd.DataFrame, predictions: pd.DataFrame, source: str) -> np.ndarray:
    """``[N, 6]`` teacher probabilities in the row order of ``meta``; every slice must be predicted."""
    probs = predictions.set_index("slice_id")[list(LABELS)]
    missing = ~meta["slice_id"].isin(probs.index)
    if missing.any():
        examples = ", ".join(meta.loc[missing, "slice_id"].head(3))
        raise ValueError(f"{source}: {int(missing.sum())} slice(s) of the split have no teacher prediction (e.g. {examples})")
    return probs.loc[meta["slice_id"]].to_numpy(dtype=np.float64)


def build_pseudo_table(meta: pd.DataFrame, probs: np.ndarray, rules: PseudoLabelRules) -> pd.DataFrame:
    """``meta`` with pseudo-labels in the label columns; series with no slice kept are removed."""
    labels, keep = pseudo_labels(probs, meta["series_id"].to_numpy(), rules)
    table = meta.copy()
    table[list(LABELS)] = labels
    kept_series = set(table.loc[keep, "series_id"])
    return table[table["series_id"].isin(kept_series)].reset_index(drop=True)


def pseudo_label(dataset_root: str, splits: Sequence[str], out: str, rules: PseudoLabelRules,
                 predictions: dict[str, pd.DataFrame], exclude: Sequence[str] = DEFAULT_EXCLUDE) -> pd.DataFrame:
    """Build, check and atomically write the pseudo table of ``splits``; returns it.

    ``predictions`` maps each split to its teacher predictions frame.
    """
    check_tags(splits, output_tag(out, dataset_root), exclude)
    tables = []
    for split in splits:
        meta = read_meta(dataset_root, split, required=SEMI_COLUMNS)
        source = meta_path(dataset_root, split)
        check_no_leakage(meta, dataset_root, exclude, source=source)
        probs = attach_probabilities(meta, predictions[split], source)
        tables.append(build_pseudo_table(meta, probs, rules))
    table = pd.concat(tables, ignore_index=True)
    if table.empty:
        raise ValueError(f"{out}: the confidence filter dropped every series; widen --max_uncertain_fraction or narrow --uncertain_band")
    duplicated = table["slice_id"].duplicated()
    if duplicated.any():
        raise ValueError(f"{out}: slice {table.loc[duplicated, 'slice_id'].iloc[0]} appears in two of {', '.join(splits)}")
    check_no_leakage(table, dataset_root, exclude, source=out)
    table = sort_meta(table)[list(META_COLUMNS)]
    write_meta(out, table)
    return table


def summary(table: pd.DataFrame, sources: dict[str, int], slices_in: int) -> str:
    kept = np.isfinite(table[list(LABELS)].to_numpy()).all(axis=1)
    mean = table.loc[kept, list(LABELS)].mean()
    lines = [f"series: {table['series_id'].nunique()} kept of {sum(sources.values())} "
             f"({', '.join(f'{k}: {v}' for k, v in sources.items())})",
             f"slices: {int(kept.sum())} labelled, {int((~kept).sum())} dropped in kept series, "
             f"{slices_in - len(table)} in dropped series",
             "mean pseudo-label: " + "  ".join(f"{name} {mean[name]:.3f}" for name in LABELS)]
    return "\n".join(lines)


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m medseg.semi.pseudo_label", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the teacher's experiment YAML (model + val/infer transforms)")
    p.add_argument("-o", "--opts", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    teacher = p.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--model", help="teacher checkpoint (iter_N/, best_model/ or model.pdparams)")
    teacher.add_argument("--predictions", nargs="+", metavar="TABLE",
                         help="instead of --model: predictions CSV(s) or Kaggle ID,Label table(s) (e.g. an ensemble's, "
                              "one per split), combined; every slice of --split in exactly one of them")
    p.add_argument("--split", nargs="+", default=["test"], help="unlabelled tag(s) to pseudo-label")
    p.add_argument("--out", required=True, help="DATASET_ROOT/<tag>_meta.csv to write")
    p.add_argument("--dataset_root", help="default: the config's infer/val dataset_root")
    p.add_argument("--no_calibration", action="store_true",
                   help="ignore the teacher checkpoint's calibration.json (python -m medseg.outputs.calibrate)")
    p.add_argument("--temperature", type=float, default=1.0, help="< 1 sharpens, > 1 softens (after the calibration)")
    p.add_argument("--uncertain_band", type=float, nargs=2, metavar=("LO", "HI"),
                   help="a slice is uncertain if a probability lies strictly between LO and HI")
    p.add_argument("--drop", choices=["slice", "series"], default="series", help="what an uncertain slice removes")
    p.add_argument("--max_uncertain_fraction", type=float, default=0.0,
                   help="--drop series: keep a series while at most this share of its slices is uncertain")
    p.add_argument("--hard_threshold", type=float, nargs=2, metavar=("HI", "LO"),
                   help="labels >= HI become 1, <= LO become 0")
    p.add_argument("--exclude", nargs="+", default=list(DEFAULT_EXCLUDE),
                   help="labelled tags the table must not overlap (val is always checked)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--num_workers", type=int, default=0)
    from medseg.engine.tta import add_tta_argument

    add_tta_argument(p)
    args = p.parse_args(None if argv is None else list(argv))
    if args.tta is not None and args.predictions:
        p.error("--tta needs a teacher --model (--predictions are already predicted)")
    return args


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    from medseg.config import Config
    from medseg.data.build import eval_section
    from medseg.outputs.predictions import read_tables

    def job() -> None:
        cfg = Config(args.config, args.overrides)
        root = args.dataset_root or cfg.get(f"{eval_section(cfg)}.dataset_root")
        if not root:
            raise ValueError(f"{args.config}: no dataset_root in {eval_section(cfg)}; pass --dataset_root")
        rules = PseudoLabelRules(args.temperature, tuple(args.uncertain_band) if args.uncertain_band else None,
                                 args.drop, args.max_uncertain_fraction,
                                 tuple(args.hard_threshold) if args.hard_threshold else None)
        check_tags(args.split, output_tag(args.out, root), args.exclude)
        metas = {split: read_meta(root, split, required=SEMI_COLUMNS) for split in args.split}
        for split, meta in metas.items():  # before the (long) inference, not only after it
            check_no_leakage(meta, root, args.exclude, source=meta_path(root, split))
        if args.predictions:
            table = read_tables(args.predictions)
            predictions = {split: table for split in args.split}
        else:
            predictions = teacher_predictions(args.config, args.overrides, args.model, root, args.split,
                                              args.batch_size, args.num_workers, calibrate=not args.no_calibration,
                                              tta=args.tta)
        written = pseudo_label(root, args.split, args.out, rules, predictions, args.exclude)
        sources = {split: int(meta["series_id"].nunique()) for split, meta in metas.items()}
        print(f"wrote {args.out}\n" + summary(written, sources, sum(len(m) for m in metas.values())))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
