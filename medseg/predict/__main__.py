"""``python -m medseg.predict --config C --model M --dicom_dir DIR --out OUT [--threshold 0.5]``

M is a training checkpoint (``iter_N/``, ``best_model/`` or ``model.pdparams``) or a folder
written by ``export.py`` (then ``--config`` defaults to the export's ``config.yml``); several
(``--model A B C``, e.g. the fold models of ``medseg.tools.kfold``) average their probabilities. Writes
``OUT/predictions.csv``, ``OUT/predictions.json``, ``OUT/skipped.csv``, ``OUT/report.html`` and
one PNG per series; with ``--dicom_out DIR`` also a DICOM Structured Report and a Secondary
Capture series per predicted series, in its study (``DIR/<series UID>/<instance UID>.dcm``). ``--tta identity,hflip`` (or the config's ``test_time_augmentation``)
averages test-time views of each series (medseg.engine.tta). Exit 0 on success; 2 with a one-line ``error: …`` when nothing readable was
found or an input is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys

from medseg.utils.cli import ArgumentParser, run_cli

# Read before paddle is imported: paddle sets OMP_NUM_THREADS=1 when it is unset.
_ENV_THREADS = os.environ.get("OMP_NUM_THREADS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m medseg.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="experiment config (default for an exported model: its config.yml)")
    p.add_argument("-o", "--opts", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", required=True, nargs="+",
                   help="training checkpoint or exported model folder; several (e.g. the fold models of "
                        "medseg.tools.kfold): their probabilities are averaged")
    p.add_argument("--dicom_dir", required=True, help="folder searched recursively for DICOM files (any names)")
    p.add_argument("--out", required=True, help="output folder (nothing is written elsewhere)")
    p.add_argument("--dicom_out", default=None,
                   help="also write DICOM results here: per predicted series a Structured Report (TID 1500) and a "
                        "Secondary Capture series of the flagged slices, in the source study (not read as input)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability that flags a slice in the report")
    p.add_argument("--batch_size", "--batch", dest="batch_size", type=int, default=1, help="series per model call")
    p.add_argument("--chunk_size", "--chunk", dest="chunk_size", type=int, default=None,
                   help="slices per encoder pass (memory bound; default: the model's)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of an exported model (default: OMP_NUM_THREADS or all cores)")
    p.add_argument("--windows", default=None, help="CENTRE/WIDTH,... as given to prepare (default: prepare's)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--slab_mm", type=float, default=None,
                   help="average thin series into slabs of about this many mm before the model (e.g. 5, the RSNA "
                        "slice thickness; off by default): one output row per slab, naming its source files")
    p.add_argument("--min_slices", type=int, default=1,
                   help="leave out series with fewer slices (default 1: a single head slice is predicted, with a note)")
    p.add_argument("--no_saliency", action="store_true",
                   help="no Grad-CAM maps on the report's large slices (they cost a forward and a backward pass per series)")
    from medseg.engine.tta import add_tta_argument

    add_tta_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from medseg.config import Config
    from medseg.export.meta import is_export_dir
    from medseg.predict.run import run_predict

    def job() -> None:
        config = args.config
        if config is None:
            if not all(is_export_dir(m) for m in args.model):
                raise ValueError("--config is required with a training checkpoint")
            config = os.path.join(args.model[0], "config.yml")
        threads = args.threads or int(_ENV_THREADS or os.cpu_count() or 1)
        summary = run_predict(Config(config, args.overrides), args.model, args.dicom_dir, args.out, args.threshold,
                              args.batch_size, args.chunk_size, threads, args.windows, progress=not args.no_progress,
                              saliency=not args.no_saliency, slab_mm=args.slab_mm, min_slices=args.min_slices,
                              tta=args.tta, dicom_out=args.dicom_out)
        print(summary.format())

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
