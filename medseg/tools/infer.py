"""Predict one split with a trained model: ``python infer.py --config x.yml --resume_model dir``.

Writes the predictions CSV (one row per real slice); on a labelled split also prints the
metrics and saves them as ``<output stem>_metrics.json``. With ``--multigpu_infer`` under
``paddle.distributed.launch`` the split is sharded across processes. ``--tta hflip,identity``
(or the config's ``test_time_augmentation``) averages test-time views (medseg.engine.tta).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from medseg.utils.cli import ArgumentParser, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python infer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("-o", "--opts", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume_model", required=True, help="checkpoint directory (iter_N/ or best_model/) or model.pdparams")
    p.add_argument("--infer_splition", "--split", dest="split", default="test",
                   help="split (or any <tag>_meta.csv tag) to predict: train, val, test, ...")
    p.add_argument("--num_workers", type=int, default=None,
                   help="loader worker processes per process (default: the cores each process gets - 1, at most 8)")
    p.add_argument("--batch_size", type=int, default=1, help="series per process and step")
    p.add_argument("--multigpu_infer", action="store_true", help="shard across the processes of a launch")
    p.add_argument("--output", help="predictions CSV (default: <checkpoint dir>/predictions_<split>.csv)")
    p.add_argument("--no_calibration", action="store_true",
                   help="ignore the checkpoint's calibration.json (python -m medseg.outputs.calibrate)")
    from medseg.engine.tta import add_tta_argument

    add_tta_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from medseg.config import Config
    from medseg.engine import distributed as dist
    from medseg.engine.infer_split import infer_split
    from medseg.engine.tta import resolve_tta
    from medseg.models.weights import check_released_input_scale
    from medseg.utils.logger import setup_logger

    def job() -> None:
        setup_logger()  # console only (rank 0): inference writes no log file of its own
        cfg = Config(args.config, args.overrides)
        check_released_input_scale(cfg, args.resume_model)
        model_dir = args.resume_model if os.path.isdir(args.resume_model) else os.path.dirname(args.resume_model)
        output = args.output or os.path.join(model_dir, f"predictions_{args.split}.csv")
        from medseg.engine.loader import default_num_workers

        workers = default_num_workers() if args.num_workers is None else args.num_workers
        _, metrics = infer_split(cfg, args.resume_model, args.split, output, workers,
                                 args.multigpu_infer, args.batch_size, calibrate=not args.no_calibration,
                                 tta=resolve_tta(cfg, args.tta))
        if metrics is not None and dist.is_main():
            print(json.dumps(metrics, indent=2, sort_keys=True))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
