"""Save a split's slice embeddings, or join a head trained on them with its encoder.

``python -m medseg.tools.embed --config C --model M --split S [--tta VIEWS] --out DIR``: for every
series of split S (read as infer.py reads it: C's eval dataset section), the encoder of
checkpoint M writes its per-slice features (float16; ``--dtype float32``) and logits, with the
slice ids in order and the labels, into DIR (layout: :mod:`medseg.data.embeddings`; one compact folder per split, a
``manifest.json`` per DIR). Resumable: a rerun skips finished series and finished splits. A run
whose encoder, eval transforms, crop or views differ from DIR's manifest is refused. Under
``python -m paddle.distributed.launch --nproc_per_node N -m medseg.tools.embed …`` the N processes
share the series out (DIR on a file system they all see).

``python -m medseg.tools.embed join --head H --out J [--config HC] [--encoder M]``: H is a
checkpoint trained by train.py on those embeddings (config HC, default the config.yml beside or
above H); J gets one ordinary checkpoint + ``config.yml`` of the image model (the frozen encoder
with that head) for infer.py, medseg.predict, export.py and pseudo-labelling.
"""

from __future__ import annotations

import argparse
import sys

from medseg.utils.cli import ArgumentParser, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m medseg.tools.embed", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the image config (its eval dataset section and model)")
    p.add_argument("-o", "--opts", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", required=True, help="checkpoint whose encoder embeds the slices (iter_N/, best_model/ or model.pdparams)")
    p.add_argument("--split", required=True, action="append",
                   help="split (any <tag>_meta.csv tag) to embed; repeat for several")
    p.add_argument("--out", required=True, help="embeddings folder")
    p.add_argument("--num_workers", type=int, default=None,
                   help="loader worker processes (default: the cores this process gets - 1, at most 8)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="saved features: float16 (half the size) or float32 (the encoder's values exactly)")
    from medseg.engine.tta import add_tta_argument

    add_tta_argument(p)
    return p.parse_args(argv)


def parse_join_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m medseg.tools.embed join",
                       description="Join a head trained on saved embeddings with its encoder into one checkpoint + config.")
    p.add_argument("--head", required=True, help="checkpoint trained on the embeddings (best_model/, iter_N/, bagged/)")
    p.add_argument("--out", required=True, help="folder of the joined model (model.pdparams, config.yml, join.json)")
    p.add_argument("--config", help="the head's training config (default: config.yml beside or above --head)")
    p.add_argument("-o", "--opts", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--encoder", help="encoder checkpoint (default: the one the embeddings' manifest names; it must hash alike)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["join"]:
        args = parse_join_args(argv[1:])

        def join() -> None:
            from medseg.data.embeddings_join import join_head

            print(join_head(args.head, args.out, args.config, args.overrides, args.encoder))

        return run_cli(join)
    args = parse_args(argv)

    def job() -> None:
        from medseg.config import Config
        from medseg.data.embeddings_extract import extract_split
        from medseg.engine import distributed as dist
        from medseg.engine.loader import default_num_workers
        from medseg.engine.tta import resolve_tta
        from medseg.utils.logger import setup_logger

        setup_logger()
        cfg = Config(args.config, args.overrides)
        tta = resolve_tta(cfg, args.tta)
        workers = default_num_workers() if args.num_workers is None else args.num_workers
        for split in args.split:
            record = extract_split(cfg, args.model, split, args.out, tta, workers, progress=not args.no_progress,
                                   dtype=args.dtype)
            if dist.is_main():
                print(f"embed {split}: {record['series']} series, {record['slices']} slices "
                      f"({record['done_before']} series done before) in {record['seconds']:.1f} s -> {args.out}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
