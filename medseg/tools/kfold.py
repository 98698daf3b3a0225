"""K-fold training of one config: a model per patient fold, out-of-fold (OOF) predictions, a
fold-averaged test prediction and a fold report.

    python -m medseg.tools.kfold run --config C --save_root R [--pretrain_config P] [--folds 0,2] [-o KEY=VALUE]

The folds are the prepared root's (``python -m medseg.data.prepare --folds K``): fold k's model
trains on the patients of the other folds (tables ``fold<k>of<K>_train``/``_val`` written into
the root) and is validated on fold k's. ``--pretrain_config`` first trains a stage 1 per fold on
the same patients (the demo's two-stage recipe), so no fold model has seen its own validation
patients in either stage. ``SAVE_ROOT`` then holds (docs/design.md, "K-fold training"):

- ``fold_k/``: the fold's run (``pretrain/``, ``iter_N/``, ``train.log``), its predictions of
  fold k (``predictions_val.csv``, the OOF part) and of the test split (``predictions_test.csv``),
  and ``done.json``, written last: a finished fold is never trained again;
- ``oof.csv``: every labelled slice of the folds run, once, predicted by the one model that did
  not train on its patient; ``test.csv``: the test split, the fold models' probabilities averaged;
- ``fold_report.json`` (also printed): each fold's validation weighted log loss, the OOF weighted
  log loss and per-class ROC AUC;
- ``kfold.json``: the fingerprint (resolved configs, fold assignment, seed, checkpoint rule): a
  rerun with anything else is refused instead of mixing two experiments' folds.

A rerun continues: finished folds are kept, an interrupted one resumes from its last
``iter_N/`` checkpoint (exact resume, :mod:`medseg.engine.trainer`). Subcommands: ``run`` (all in
this process), or ``plan`` (check, write the tables and the fingerprint, print the folds left) +
``fold --fold k`` (one fold; under ``paddle.distributed.launch``, see script/kfold.sh) + ``collect``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medseg.config import Config
from medseg.constants import LABELS
from medseg.data.split import fold_tags, labelled_folds, write_fold_tables
from medseg.utils.atomic import atomic_write_json, read_json_object
from medseg.utils.cli import ArgumentParser, run_cli
from medseg.utils.logger import get_logger, setup_logger

logger = get_logger("kfold")

FINGERPRINT = "kfold.json"
DONE = "done.json"
OOF_CSV = "oof.csv"
TEST_CSV = "test.csv"
REPORT = "fold_report.json"
PRETRAIN_DIR = "pretrain"
VAL_PREDICTIONS = "predictions_val.csv"   # fold k predicted by fold k's model: its part of oof.csv
TEST_PREDICTIONS = "predictions_test.csv"  # the name infer.py gives a test prediction
CHECKPOINTS = ("last", "best")


class KFoldError(ValueError):
    """A SAVE_ROOT or request that K-fold training cannot continue with; the message names the file."""


def fold_dir(save_root: str, fold: int) -> str:
    return os.path.join(save_root, f"fold_{fold}")


@dataclass
class Plan:
    """A K-fold run as asked: configs and overrides, the prepared root, the folds."""

    config: str
    save_root: str
    pretrain_config: str | None = None
    overrides: list[str] = field(default_factory=list)  # both stages
    iters: int | None = None
    pretrain_iters: int | None = None
    seed: int = 0
    checkpoint: str = "last"
    save_interval: int = 1000
    num_workers: int | None = None
    log_iters: int = 10
    folds: list[int] | None = None  # None: all

    def stage_config(self, stage: str, fold: int | None = None) -> Config:
        """The resolved config of ``stage`` (``train`` or ``pretrain``), for ``fold`` when given."""
        path, iters = (self.config, self.iters) if stage == "train" else (self.pretrain_config, self.pretrain_iters)
        overrides = list(self.overrides) + ([f"iters={iters}"] if iters is not None else [])
        if fold is not None:
            train_tag, val_tag = fold_tags(fold, self.n_folds)
            overrides += [f"train_dataset.split={train_tag}", f"val_dataset.split={val_tag}"]
            if "infer_dataset" in Config(path, self.overrides):
                overrides.append(f"infer_dataset.split={val_tag}")
        return Config(path, overrides)

    def stages(self) -> list[str]:
        return (["pretrain"] if self.pretrain_config else []) + ["train"]

    def dataset_root(self) -> str:
        """The one prepared root every dataset section of every stage reads."""
        roots = set()
        for stage in self.stages():
            cfg = self.stage_config(stage)
            for key in ("train_dataset", "val_dataset", "infer_dataset"):
                section = cfg.get(key)
                if section is None:
                    continue
                if not isinstance(section, dict):
                    raise KFoldError(f"{cfg.path}: {key} is a list; K-fold training needs one dataset per section")
                roots.add(os.path.abspath(str(section.get("dataset_root"))))
        if len(roots) != 1:
            raise KFoldError(f"{self.config}: the dataset sections read {len(roots)} roots ({', '.join(sorted(roots))}); "
                             "K-fold training needs one prepared root (-o train_dataset.dataset_root=... "
                             "-o val_dataset.dataset_root=...)")
        return roots.pop()

    def load(self) -> None:
        """Read the root's folds (checked) and resolve the folds asked for."""
        self.root = self.dataset_root()
        self.labelled, self.n_folds = labelled_folds(self.root)
        if self.folds is None:
            self.folds = list(range(self.n_folds))
        bad = [k for k in self.folds if not 0 <= k < self.n_folds]
        if bad:
            raise KFoldError(f"--folds {bad[0]}: {self.root} has folds 0..{self.n_folds - 1}")
        self._fingerprint = self._compute_fingerprint()

    def fingerprint(self) -> dict[str, object]:
        """What the fold models depend on: a SAVE_ROOT made with anything else is another experiment."""
        return self._fingerprint

    def _compute_fingerprint(self) -> dict[str, object]:
        ids = self.labelled[["series_id", "patient_id", "fold"]].drop_duplicates().sort_values("series_id")
        return {
            "config": _sha(self.stage_config("train").dump()),
            "pretrain_config": _sha(self.stage_config("pretrain").dump()) if self.pretrain_config else None,
            "folds": _sha(ids.to_csv(index=False)),
            "n_folds": self.n_folds,
            "seed": self.seed,
            "checkpoint": self.checkpoint,
            "save_interval": self.save_interval,
        }


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_json(path: str) -> dict | None:
    return read_json_object(path, KFoldError)


def check_fingerprint(plan: Plan, write: bool) -> None:
    """Refuse a SAVE_ROOT that holds another experiment's folds; record the fingerprint (``write``)."""

    path = os.path.join(plan.save_root, FINGERPRINT)
    wanted = plan.fingerprint()
    stored = _read_json(path)
    if stored is None:
        names = os.listdir(plan.save_root) if os.path.isdir(plan.save_root) else []
        leftovers = sorted(n for n in names if n.startswith("fold_"))
        if leftovers:
            raise KFoldError(f"{plan.save_root}: holds {', '.join(leftovers)} but no {FINGERPRINT}: "
                             "not a K-fold run of this tool; use another --save_root")
        if not write:
            raise KFoldError(f"{path}: not found (run `python -m medseg.tools.kfold plan` or `run` first)")
        atomic_write_json(path, {"fingerprint": wanted, "config": plan.config, "pretrain_config": plan.pretrain_config,
                                 "overrides": plan.overrides, "dataset_root": plan.root})
        return
    differs = [key for key in wanted if stored.get("fingerprint", {}).get(key) != wanted[key]]
    if differs:
        raise KFoldError(f"{path}: {plan.save_root} holds the folds of another experiment (different {', '.join(differs)}); "
                         "use another --save_root")


def done_record(plan: Plan, fold: int) -> dict | None:
    """The fold's ``done.json`` if the fold finished with this fingerprint, else None."""
    record = _read_json(os.path.join(fold_dir(plan.save_root, fold), DONE))
    if record is None or record.get("fingerprint") != plan.fingerprint():
        return None
    return record


def plan_folds(plan: Plan) -> list[int]:
    """Check the inputs, write the fold tables and the fingerprint; the folds still to train."""
    plan.load()
    os.makedirs(plan.save_root, exist_ok=True)
    check_fingerprint(plan, write=True)
    write_fold_tables(plan.root, plan.labelled, plan.n_folds)
    todo = [k for k in plan.folds if done_record(plan, k) is None]
    logger.info("%s: %d folds of %d series (%d patients) in %s; folds %s asked, %s left to train", plan.save_root,
                plan.n_folds, plan.labelled["series_id"].nunique(), plan.labelled["patient_id"].nunique(), plan.root,
                ",".join(map(str, plan.folds)), ",".join(map(str, todo)) or "none")
    return todo


# ------------------------------------------------------------------------------------ one fold


def _train_stage(plan: Plan, cfg: Config, save_dir: str, pretrained: str | None, do_eval: bool) -> str:
    """Train one stage into ``save_dir``, resuming from its last ``iter_N/`` (exact resume); return
    the final checkpoint. Rank 0 decides where to start and every rank takes its answer."""
    from medseg.engine import checkpoint as ckpt
    from medseg.engine import distributed as dist
    from medseg.engine.trainer import TrainOptions, train
    from medseg.models.weights import check_released_input_scale

    iters = int(cfg.section("iters"))
    found = ckpt.list_checkpoints(save_dir) if dist.is_main() else None
    found = dist.broadcast_object(found)
    latest = found[-1] if found else None
    if latest is not None and latest[0] >= iters:
        logger.info("%s: trained earlier (%s)", save_dir, latest[1])
        return latest[1]
    if latest is not None:
        logger.info("%s: resuming from %s", save_dir, latest[1])
    check_released_input_scale(cfg, pretrained, cfg.get("model.encoder.pretrained"))
    opts = TrainOptions(save_dir=save_dir, save_interval=plan.save_interval, num_workers=plan.num_workers,
                        log_iters=plan.log_iters, do_eval=do_eval, seed=plan.seed, pretrained=pretrained,
                        resume_model=latest[1] if latest else None, overwrite_save_dir=latest is None)
    result = train(cfg, opts)
    dist.barrier()  # rank 0 writes the checkpoints: the others wait before reading them
    return result.get("checkpoint") or os.path.join(save_dir, f"iter_{iters}")


def run_fold(plan: Plan, fold: int) -> dict:
    """Train fold ``fold`` (both stages), predict its validation patients and the test split,
    then write ``done.json`` (rank 0). Works alone or under ``paddle.distributed.launch``."""
    from medseg.data.meta import meta_path
    from medseg.engine import checkpoint as ckpt
    from medseg.engine import distributed as dist
    from medseg.engine.infer_split import infer_split
    from medseg.engine.loader import default_num_workers
    from medseg.engine.tta import resolve_tta

    record = done_record(plan, fold)
    if record is not None:
        logger.info("fold %d: finished earlier (%s)", fold, os.path.join(fold_dir(plan.save_root, fold), DONE))
        return record
    tic = time.time()
    dist.init_distributed()
    out = fold_dir(plan.save_root, fold)
    pretrained = None
    if plan.pretrain_config:
        pretrained = _train_stage(plan, plan.stage_config("pretrain", fold), os.path.join(out, PRETRAIN_DIR), None, False)
    cfg = plan.stage_config("train", fold)
    last = _train_stage(plan, cfg, out, pretrained, do_eval=plan.checkpoint == "best")
    model = os.path.join(out, ckpt.BEST_DIR) if plan.checkpoint == "best" else last
    workers = default_num_workers() if plan.num_workers is None else plan.num_workers
    tta = resolve_tta(cfg)  # the config's test-time views, as infer.py would use them
    _, metrics = infer_split(cfg, model, cfg.get("val_dataset.split"), os.path.join(out, VAL_PREDICTIONS), workers,
                             multigpu_infer=dist.is_distributed(), tta=tta)
    test = None
    if _has_rows(meta_path(plan.root, "test")):
        frame, _ = infer_split(cfg, model, "test", os.path.join(out, TEST_PREDICTIONS), workers,
                               multigpu_infer=dist.is_distributed(), tta=tta)
        test = len(frame)
    record = {"fold": fold, "fingerprint": plan.fingerprint(), "model": os.path.relpath(model, plan.save_root),
              "val_weighted_logloss": (metrics or {}).get("weighted_logloss"), "val_slices": (metrics or {}).get("n_images"),
              "test_slices": test, "seconds": round(time.time() - tic, 1)}
    if dist.is_main():
        atomic_write_json(os.path.join(out, DONE), record)
        logger.info("fold %d: done in %.0f s, validation weighted log loss %s (%s)", fold, record["seconds"],
                    record["val_weighted_logloss"], model)
    dist.barrier()
    setup_logger()  # the next fold's messages do not belong in this fold's train.log
    return record


def _has_rows(path: str) -> bool:
    """Whether the meta table at ``path`` exists and lists a slice."""
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as fh:
        return sum(1 for _ in zip(range(2), fh)) > 1


# ------------------------------------------------------------------------------------ collect


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def collect(plan: Plan) -> dict:
    """``oof.csv``, ``test.csv`` and ``fold_report.json`` from the finished folds of ``plan``."""
    from medseg.engine.metrics import evaluate_predictions, weighted_log_loss
    from medseg.outputs.ensemble import ensemble
    from medseg.outputs.predictions import format_examples, read_predictions, write_predictions

    plan.load()
    check_fingerprint(plan, write=False)
    missing = [k for k in plan.folds if done_record(plan, k) is None]
    if missing:
        raise KFoldError(f"{os.path.join(fold_dir(plan.save_root, missing[0]), DONE)}: fold {missing[0]} is not finished "
                         f"(folds not finished: {', '.join(map(str, missing))}); train them first")
    labelled = plan.labelled[plan.labelled["fold"].isin(plan.folds)].reset_index(drop=True)
    parts, per_fold = [], []
    for k in plan.folds:
        path = os.path.join(fold_dir(plan.save_root, k), VAL_PREDICTIONS)
        part = read_predictions(path)
        mine = labelled[labelled["fold"] == k]
        outside = sorted(set(part["slice_id"]) - set(mine["slice_id"]))
        absent = sorted(set(mine["slice_id"]) - set(part["slice_id"]))
        if outside or absent:
            raise KFoldError(f"{path}: does not cover fold {k} exactly ({len(absent)} of its slices missing, e.g. "
                             f"{format_examples(absent)}; {len(outside)} other slices, e.g. {format_examples(outside)})")
        truth = mine[list(LABELS)].to_numpy(np.float64)
        pred = part.set_index("slice_id").loc[mine["slice_id"], list(LABELS)].to_numpy(np.float64)
        scores = evaluate_predictions(truth, pred)
        per_fold.append({"fold": k, "slices": len(mine), "series": int(mine["series_id"].nunique()),
                         "patients": int(mine["patient_id"].nunique()), "weighted_logloss": scores["weighted_logloss"],
                         "mean_auc": scores["mean_auc"], "model": done_record(plan, k)["model"]})
        parts.append(part)
    oof = pd.concat(parts, ignore_index=True).set_index("slice_id").loc[labelled["slice_id"]].reset_index()
    oof["series_id"] = labelled["series_id"].to_numpy()
    write_predictions(os.path.join(plan.save_root, OOF_CSV), oof)
    truth = labelled[list(LABELS)].to_numpy(np.float64)
    overall = evaluate_predictions(truth, oof[list(LABELS)].to_numpy(np.float64))
    fold_scores = np.array([f["weighted_logloss"] for f in per_fold])
    complete = sorted(plan.folds) == list(range(plan.n_folds))
    report = {
        "n_folds": plan.n_folds, "folds": list(plan.folds), "complete": complete, "per_fold": per_fold,
        "fold_weighted_logloss_mean": float(fold_scores.mean()),
        "fold_weighted_logloss_sd": float(fold_scores.std(ddof=1)) if len(fold_scores) > 1 else float("nan"),
        "oof": {"file": OOF_CSV, "slices": len(oof), "labelled_slices": len(plan.labelled),
                "weighted_logloss": weighted_log_loss(truth, oof[list(LABELS)].to_numpy(np.float64)),
                "prior_logloss": overall["prior_logloss"], "mean_auc": overall["mean_auc"],
                "auc": {label: overall[f"auc_{label}"] for label in LABELS}},
        "test": None,
    }
    tests = [os.path.join(fold_dir(plan.save_root, k), TEST_PREDICTIONS) for k in plan.folds]
    if all(os.path.isfile(p) for p in tests):
        averaged = ensemble([read_predictions(p) for p in tests], names=tests)
        write_predictions(os.path.join(plan.save_root, TEST_CSV), averaged)
        report["test"] = {"file": TEST_CSV, "slices": len(averaged), "folds": list(plan.folds), "average": "probabilities"}
    elif os.path.isfile(os.path.join(plan.save_root, TEST_CSV)):
        os.remove(os.path.join(plan.save_root, TEST_CSV))  # an earlier collect's, of other folds
    report = _nan_to_none(report)
    atomic_write_json(os.path.join(plan.save_root, REPORT), report)
    return report


def format_report(report: dict) -> str:
    """The fold report as a table (what ``collect`` prints)."""
    def num(value, fmt=".5f"):
        return "nan" if value is None else format(value, fmt)

    lines = [f"{'fold':>4} {'slices':>7} {'series':>7} {'patients':>8} {'val weighted_logloss':>21} {'mean AUC':>9}"]
    for f in report["per_fold"]:
        lines.append(f"{f['fold']:>4} {f['slices']:>7} {f['series']:>7} {f['patients']:>8} "
                     f"{num(f['weighted_logloss']):>21} {num(f['mean_auc'], '.4f'):>9}")
    oof = report["oof"]
    lines.append(f"fold mean ± sd: weighted_logloss {num(report['fold_weighted_logloss_mean'])} ± "
                 f"{num(report['fold_weighted_logloss_sd'])}")
    scope = "every fold" if report["complete"] else f"folds {', '.join(map(str, report['folds']))} only"
    lines.append(f"OOF ({scope} of {report['n_folds']}: {oof['slices']} of {oof['labelled_slices']} labelled slices): "
                 f"weighted_logloss {num(oof['weighted_logloss'])} (prior {num(oof['prior_logloss'])}), "
                 f"mean AUC {num(oof['mean_auc'], '.4f')}")
    lines.append("OOF AUC: " + "  ".join(f"{label} {num(v, '.4f')}" for label, v in oof["auc"].items()))
    test = report["test"]
    lines.append(f"test: {test['file']}, {test['slices']} slices, probabilities of folds "
                 f"{', '.join(map(str, test['folds']))} averaged" if test else "test: no test split predicted")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ CLI


def parse_folds(text: str) -> list[int]:
    """``"0,2"`` → ``[0, 2]`` (argparse type)."""
    try:
        folds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of fold numbers, got {text!r}") from None
    if len(set(folds)) != len(folds) or any(k < 0 for k in folds):
        raise argparse.ArgumentTypeError(f"fold numbers must be distinct and >= 0, got {text!r}")
    return sorted(folds)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m medseg.tools.kfold", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("command", choices=("run", "plan", "fold", "collect"),
                   help="run: everything in this process; plan / fold / collect: the steps script/kfold.sh runs")
    p.add_argument("--config", required=True, help="experiment YAML (stage 2 with --pretrain_config)")
    p.add_argument("--save_root", required=True, help="output folder: fold_k/, oof.csv, test.csv, fold_report.json")
    p.add_argument("--pretrain_config", help="stage-1 YAML trained per fold first; stage 2 starts from its last checkpoint")
    p.add_argument("-o", "--opts", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of both configs, e.g. -o train_dataset.dataset_root=data/x (repeatable)")
    p.add_argument("--iters", type=int, help="stage-2 iterations (overrides the config)")
    p.add_argument("--pretrain_iters", type=int, help="stage-1 iterations (overrides the pretrain config)")
    p.add_argument("--folds", type=parse_folds, default=None, metavar="K,...",
                   help="train and collect only these folds (default: all); oof.csv then covers their slices only")
    p.add_argument("--fold", type=int, help="fold: the fold to train and predict")
    p.add_argument("--seed", type=int, default=0, help="training seed of every fold")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="last",
                   help="the fold model: last (the final iteration, default) or best (lowest validation loss, "
                        "evaluated at each save: chosen on the fold's own OOF slices, so the OOF score flatters it)")
    p.add_argument("--save_interval", type=int, default=1000, help="iterations between checkpoints (resume points)")
    p.add_argument("--num_workers", type=int, default=None, help="loader worker processes (default: train.py's)")
    p.add_argument("--log_iters", type=int, default=10)
    args = p.parse_args(None if argv is None else list(argv))
    if (args.command == "fold") != (args.fold is not None):
        p.error("--fold K goes with the fold command, and only with it")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(config=args.config, save_root=os.path.abspath(args.save_root), pretrain_config=args.pretrain_config,
                overrides=list(args.overrides), iters=args.iters, pretrain_iters=args.pretrain_iters, seed=args.seed,
                checkpoint=args.checkpoint, save_interval=args.save_interval, num_workers=args.num_workers,
                log_iters=args.log_iters, folds=args.folds)

    def job() -> None:
        if args.command == "plan":
            todo = plan_folds(plan)
            print("todo: " + " ".join(map(str, todo)))  # the last line, read by script/kfold.sh
        elif args.command == "fold":
            plan.load()
            check_fingerprint(plan, write=False)
            if args.fold not in plan.folds:
                raise KFoldError(f"--fold {args.fold}: not among the folds asked ({','.join(map(str, plan.folds))})")
            run_fold(plan, args.fold)
        else:
            if args.command == "run":
                for fold in plan_folds(plan):
                    run_fold(plan, fold)
            report = collect(plan)
            print(format_report(report))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
